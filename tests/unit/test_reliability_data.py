"""Bad data in the speech recipes' manifests: screened before training, never a
crash in a collate function or a silent NaN.

Each case (unreadable, empty, too-short or missing audio; a transcript character
outside the vocabulary; a dev label unseen in training; a row with a missing
column) is skipped with a counted warning under `bad_data: skip`, and stops the
run with a message naming the file, the line and the row ID under `bad_data: error`.
"""

import csv
import logging
import re

import numpy as np
import pytest
import soundfile as sf
import speechbrain as sb
import torch

from speechbrain_cald import speech_data
from speechbrain_cald.dataprep import (
    DataPrepError,
    audio_row_check,
    load_manifest,
    vocab_row_check,
)

SR = 16000
VOCAB = ["<blank>", *"abcdefghijklmnopqrstuvwxyz", "'", "|", "<unk>"]
HEADER = ["ID", "duration", "wav", "wrd", "intent"]


def wav(folder, name, seconds):
    path = folder / f"{name}.wav"
    signal = np.random.default_rng(0).uniform(-0.5, 0.5, int(seconds * SR)).astype("float32")
    sf.write(path, signal, SR)
    return str(path)


@pytest.fixture
def audio(tmp_path):
    """Good, empty, too-short, unreadable and missing audio files."""
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF not really a wave file")
    return {
        "good": wav(tmp_path, "good", 0.5),
        "good2": wav(tmp_path, "good2", 0.4),
        "empty": wav(tmp_path, "empty", 0.0),
        "short": wav(tmp_path, "short", 0.02),
        "unreadable": str(garbage),
        "missing": str(tmp_path / "missing.wav"),
    }


def bad_rows(audio):
    """{case: csv row after the ID}: one row per bad-data case."""
    return {
        "unreadable": [audio["unreadable"], "hello", "a"],
        "empty": [audio["empty"], "hello", "a"],
        "too_short": [audio["short"], "hello", "a"],
        "missing_file": [audio["missing"], "hello", "a"],
        "out_of_vocab": [audio["good2"], "héllo 42", "a"],
        "missing_column": [audio["good2"]],  # the row stops after wav
    }


CASES = ["unreadable", "empty", "too_short", "missing_file", "out_of_vocab", "missing_column"]


def write_manifest(path, rows):
    """rows: [(ID, [wav, wrd, intent...])]; a short list leaves columns missing."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HEADER)
        for utt_id, (wav_path, *rest) in rows:
            writer.writerow([utt_id, "0.5", wav_path, *rest])
    return str(path)


CHECKS = [audio_row_check(min_duration=0.1), vocab_row_check("wrd", VOCAB)]


def test_skip_drops_each_bad_row_with_counted_warnings(audio, tmp_path, caplog):
    bad = bad_rows(audio)
    rows = [("ok", [audio["good"], "hello world", "a"])]
    rows += list(bad.items())
    path = write_manifest(tmp_path / "train.csv", rows)
    with caplog.at_level(logging.WARNING):
        data = load_manifest(path, CHECKS, "skip")
    assert list(data) == ["ok"] and data["ok"]["duration"] == 0.5
    for line, case in enumerate(bad, start=3):  # line 1: header, line 2: the good row
        assert f"{path}:{line}: skipping row ID '{case}'" in caplog.text
    assert "skipped 6 of 7 rows (audio: 4, columns: 1, vocabulary: 1)" in caplog.text


@pytest.mark.parametrize("case", CASES)
def test_error_names_the_file_line_and_row(audio, tmp_path, case):
    row = bad_rows(audio)[case]
    path = write_manifest(tmp_path / "dev.csv", [("ok", [audio["good"], "hi", "a"]), (case, row)])
    with pytest.raises(DataPrepError, match=rf"^{re.escape(path)}:3: row ID '{case}': "):
        load_manifest(path, CHECKS, "error")


def test_a_header_without_a_needed_column_is_always_an_error(audio, tmp_path):
    path = tmp_path / "test.csv"
    path.write_text(f"ID,duration,wav\nu1,0.5,{audio['good']}\n", encoding="utf-8")
    with pytest.raises(DataPrepError, match=r"test.csv:1: manifest header lacks column\(s\) wrd"):
        load_manifest(str(path), CHECKS, "skip")


def recipe_datasets(audio, tmp_path, bad_data):
    """speech_data.load_manifests as a recipe calls it: audio + characters + one label head;
    the dev set holds a label unseen in training and a transcript outside the
    vocabulary, the test set an empty audio file."""
    manifests = {
        "train": [("t1", [audio["good"], "hello", "a"]), ("t2", [audio["good2"], "it's", "b"])],
        "dev": [("d1", [audio["good"], "hello", "a"]), ("d2", [audio["good2"], "hi", "zz"])],
        "test": [("e1", [audio["good"], "hello", "b"]), ("e2", [audio["empty"], "hi", "a"])],
    }
    paths = {s: write_manifest(tmp_path / f"{s}.csv", rows) for s, rows in manifests.items()}
    items = [speech_data.audio_pipeline(SR), speech_data.char_pipeline(VOCAB, "wrd")]
    items += speech_data.label_pipelines(
        {"intent": "intent"}, paths["train"], tmp_path, {"intent": 3}
    )
    keys = ["id", "sig", "tokens", "intent"]
    datasets = speech_data.load_manifests(
        paths, items, keys, {"intent": "intent"}, bad_data=bad_data, min_duration=0.1
    )
    return datasets, paths


def test_recipe_datasets_skip_bad_rows_and_batch_cleanly(audio, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        datasets, paths = recipe_datasets(audio, tmp_path, "skip")
    assert {s: len(d) for s, d in datasets.items()} == {"train": 2, "dev": 1, "test": 1}
    assert "label 'zz' in 'intent' was not seen in the training set" in caplog.text
    assert f"{paths['dev']}: skipped 1 of 2 rows (label: 1)" in caplog.text
    assert f"{paths['test']}: skipped 1 of 2 rows (audio: 1)" in caplog.text
    for split, dataset in datasets.items():
        loader = sb.dataio.dataloader.make_dataloader(dataset, batch_size=2)
        for batch in loader:
            assert torch.isfinite(batch.sig.data).all(), split
            assert (batch.tokens.data < VOCAB.index("<unk>")).all(), split  # no <unk> needed


def test_recipe_datasets_error_on_an_unseen_label(audio, tmp_path):
    with pytest.raises(DataPrepError, match=r"dev.csv:3: row ID 'd2': label 'zz' in 'intent'"):
        recipe_datasets(audio, tmp_path, "error")


def test_every_training_row_over_max_duration_is_a_named_error(audio, tmp_path):
    """Before: an empty train split after the max_duration filter made dynamic batching
    loop forever."""
    rows = [("t1", [audio["good"], "hello", "a"]), ("t2", [audio["good2"], "hi", "b"])]
    paths = {s: write_manifest(tmp_path / f"{s}.csv", rows) for s in ("train", "dev", "test")}
    items = [speech_data.audio_pipeline(SR), speech_data.char_pipeline(VOCAB, "wrd")]
    with pytest.raises(ValueError, match=re.escape(f"{paths['train']}: all 2 usable training")):
        speech_data.load_manifests(paths, items, ["id", "sig"], max_duration=0.3)


def test_a_manifest_saved_by_a_spreadsheet_reads_as_written(audio, tmp_path):
    """Byte-order mark and CRLF line endings (a spreadsheet's CSV export) are read;
    another encoding is one error naming the file and line."""
    path = tmp_path / "train.csv"
    text = f"ID,duration,wav,wrd,intent\r\nt1,0.5,{audio['good']},hello,a\r\n"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    rows = load_manifest(str(path), CHECKS, "error")
    assert list(rows) == ["t1"] and rows["t1"]["wrd"] == "hello"
    path.write_bytes((text + f"t2,0.5,{audio['good2']},caf\u00e9,a\r\n").encode("cp1252"))
    with pytest.raises(DataPrepError, match=re.escape(f"{path}:3: not UTF-8 text (byte 0xe9)")):
        load_manifest(str(path), CHECKS, "error")


@pytest.mark.parametrize("fmt", ["WAV", "FLAC"])
def test_audio_cut_short_is_bad_data_not_a_shorter_utterance(tmp_path, fmt):
    """A file whose header announces more samples than it holds (an interrupted copy):
    before, WAV was read as if whole (libsndfile trims its length silently)."""
    path = tmp_path / f"cut.{fmt.lower()}"
    signal = np.random.default_rng(1).uniform(-0.5, 0.5, SR).astype("float32")
    sf.write(path, signal, SR, format=fmt, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    manifest = write_manifest(tmp_path / "train.csv", [("c1", [str(path), "hello", "a"])])
    with pytest.raises(DataPrepError, match=re.escape(str(path))):
        load_manifest(manifest, CHECKS, "error")
    with pytest.raises(DataPrepError, match="cut short|unreadable|damaged"):
        speech_data.audio_pipeline(SR)(str(path))
