"""Fuzz: seeded random bad rows and bad files (cut-short audio included), many kinds
at once, mixed into the tiny TED-LIUM fixture's manifests (some saved with a byte-order
mark and CRLF line endings, as spreadsheets write them) together with good rows in
other sample rates, channel counts and formats (FLAC, OGG), which must be kept.
Preparation and a short training run end either with counted skips that add up to
exactly the bad rows injected (every checkpoint verifying, the exported folder loading
through the checked default path, also after an export interrupted in place), or,
under `bad_data: error`, with a one-line error naming the file, line and row."""

import csv
import glob
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from recipe_runner import ROOT, make_fixtures, read_table, train_command

from speechbrain_cald import inference, speech_data
from speechbrain_cald.checkpoints import verify_integrity
from speechbrain_cald.dataprep import SPLITS, read_csv_manifest
from speechbrain_cald.exports import atomic_folder, read_safe_config

ROW = next(r for r in read_table("recipes.csv") if r["Recipe"] == "TEDLIUM/ASR")
KINDS = (
    "garbage_file",  # not audio at all
    "missing_file",
    "empty_file",
    "nan_samples",
    "silent",
    "duration_lie",  # a long file listed as short
    "too_short",
    "blank_transcript",
    "oov_characters",
    "missing_value",
    "extra_field",
    "duplicate_id",
    "bad_duration",
    "cut_short",  # a WAV whose header announces more samples than it holds
)
# Good rows in other encodings: read, resampled and kept, never skipped.
VARIANTS = ("rate_8k", "rate_44k1", "stereo", "flac", "ogg")


def bad_row(kind, good, folder, rng, n):
    """(CSV fields ID,duration,wav,spk_id,wrd, or one more) of one bad row of `kind`;
    `good` is a good row to derive it from; bad files are written into `folder`; `n`
    makes the row ID and file name unique across splits."""
    uid, sr = f"fuzz{n}_{kind}", 16000
    wav, duration, words = os.path.join(folder, f"{uid}.wav"), good["duration"], good["wrd"]
    signal = rng.uniform(-0.3, 0.3, int(float(duration) * sr)).astype(np.float32)
    if kind == "garbage_file":
        with open(wav, "wb") as f:
            f.write(rng.bytes(200))
    elif kind == "missing_file":
        wav = os.path.join(folder, "does_not_exist.wav")
    elif kind == "empty_file":
        sf.write(wav, np.zeros(0, np.float32), sr)
    elif kind == "nan_samples":
        signal[rng.integers(len(signal))] = np.nan
        sf.write(wav, signal, sr, subtype="FLOAT")
    elif kind == "silent":
        sf.write(wav, np.zeros_like(signal), sr)
    elif kind == "duration_lie":
        sf.write(wav, rng.uniform(-0.3, 0.3, 30 * sr).astype(np.float32), sr)
        duration = "0.5"
    elif kind == "too_short":
        sf.write(wav, signal[: sr // 50], sr)
        duration = str(1 / 50)
    elif kind == "cut_short":
        sf.write(wav, signal, sr, subtype="PCM_16")
        with open(wav, "rb") as f:
            data = f.read()
        with open(wav, "wb") as f:
            f.write(data[: len(data) // 2])
    elif kind in ("rate_8k", "rate_44k1"):
        rate = 8000 if kind == "rate_8k" else 44100
        sf.write(wav, rng.uniform(-0.3, 0.3, int(float(duration) * rate)), rate)
    elif kind == "stereo":
        sf.write(wav, np.stack([signal, signal[::-1]], axis=1), sr)
    elif kind in ("flac", "ogg"):
        wav = wav[: -len(".wav")] + f".{kind}"
        sf.write(wav, signal, sr, format=kind.upper())
    else:
        sf.write(wav, signal, sr)
    fields = [uid, duration, wav, good["spk_id"], words]
    if kind == "blank_transcript":
        fields[4] = "   "
    elif kind == "oov_characters":
        fields[4] = words + " née 42"
    elif kind == "missing_value":
        fields[3:5] = [good["spk_id"], ""]
    elif kind == "extra_field":
        fields.append("surplus")
    elif kind == "duplicate_id":
        fields[0] = good["ID"]
    elif kind == "bad_duration":
        fields[1] = "long"
    return fields


def inject(manifest_folder, seed, per_split=8):
    """Append `per_split` seeded random rows to each manifest, bad ones (`KINDS`) and
    good ones in other encodings (`VARIANTS`); returns {split: number of bad rows}."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(manifest_folder, "fuzz_audio")
    os.makedirs(folder, exist_ok=True)
    injected = {}
    for split in SPLITS:
        path = os.path.join(manifest_folder, f"{split}.csv")
        good = read_csv_manifest(path)
        kinds = rng.choice(KINDS + VARIANTS, size=per_split)
        rows = [
            bad_row(k, good[rng.integers(len(good))], folder, rng, f"{split}{i}")
            for i, k in enumerate(kinds)
        ]
        lines = good + rows
        order = rng.permutation(len(lines))  # bad rows mixed among the good ones
        # some manifests as a spreadsheet writes them: byte-order mark, CRLF
        spreadsheet = bool(rng.integers(2))
        encoding, ending = ("utf-8-sig", "\r\n") if spreadsheet else ("utf-8", "\n")
        with open(path, "w", encoding=encoding, newline="") as f:
            writer = csv.writer(f, lineterminator=ending)
            writer.writerow(list(good[0]))
            for i in order:
                writer.writerow(list(lines[i].values()) if isinstance(lines[i], dict) else lines[i])
        injected[split] = sum(k in KINDS for k in kinds)
    return injected


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The tiny TED-LIUM fixture, prepared once into a manifest folder."""
    out = make_fixtures(tmp_path_factory.mktemp("fuzz"), "tedlium")
    sys.path.insert(0, os.path.join(ROOT, "recipes", "TEDLIUM", "ASR"))
    from tedlium_prepare import prepare_tedlium

    data = os.path.join(out, ROW["Fixture_root"])
    return data, prepare_tedlium


@pytest.mark.parametrize("seed", [0, 1])
def test_fuzzed_manifests_give_counted_skips_or_a_named_error(corpus, tmp_path, seed):
    data, prepare = corpus
    manifest_folder = os.path.join(tmp_path, "manifests")
    prepare(data, manifest_folder)
    injected = inject(manifest_folder, seed)
    vocab = ["<blank>", *"abcdefghijklmnopqrstuvwxyz", "'", "|", "<unk>"]
    items = [speech_data.audio_pipeline(16000), speech_data.char_pipeline(vocab, "wrd")]
    paths = {s: os.path.join(manifest_folder, f"{s}.csv") for s in SPLITS}
    skipped = {}
    datasets = speech_data.load_manifests(
        paths,
        items,
        ["id", "sig"],
        min_duration=0.1,
        skipped=skipped,  # the YAML's
    )
    assert sum(skipped.values()) == sum(injected.values()), skipped
    for split, dataset in datasets.items():
        assert len(dataset) == len(read_csv_manifest(paths[split])) - injected[split]

    flags = shlex.split(ROW["test_flags"]) + ["--data_folder", data, "--skip_prep", "True"]
    cmd, cwd, env = train_command(ROW, tmp_path, flags)
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    folders = glob.glob(os.path.join(tmp_path, "std", "1986", "save", "CKPT+*"))
    assert folders
    for folder in folders:
        verify_integrity(folder)
    assert os.path.isfile(os.path.join(tmp_path, "std", "1986", "test_metrics.json"))
    # An export interrupted in place (Ctrl-C half-way) leaves the run's export whole: it
    # still verifies (every file's SHA-256) and loads through the checked default path.
    folder = os.path.join(tmp_path, "std", "1986", "inference")
    with pytest.raises(KeyboardInterrupt), atomic_folder(folder) as partial:
        with open(os.path.join(partial, "encoder.ckpt"), "wb") as f:
            f.write(b"half-written")
        raise KeyboardInterrupt
    read_safe_config(folder)
    exported = inference.load_inference_folder(folder)
    for row in read_csv_manifest(paths["test"]):
        if row["ID"].endswith(VARIANTS):
            assert isinstance(exported.transcribe_file(row["wav"]), str)

    strict = [*flags, "--bad_data", "error", "--run_name", "strict"]
    cmd, cwd, env = train_command(ROW, tmp_path, strict)  # the same manifests
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and lines[-1].startswith("error: "), done.stderr[-2000:]
    assert "train.csv:" in lines[-1] and "row ID '" in lines[-1], lines[-1]
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--mode", "target", "--hybrid_switch_step", "100"], "hybrid_switch_step 100 is outside"),
        (["--mode", "target", "--hybrid_switch_step", "-1"], "hybrid_switch_step -1 is outside"),
        (["--mode", "target"], "run --mode std first"),
    ],
)
def test_cli_misuse_is_one_line_with_status_2(corpus, tmp_path, flags, message):
    data, _ = corpus
    args = shlex.split(ROW["test_flags"]) + ["--data_folder", data, *flags]
    cmd, cwd, env = train_command(ROW, tmp_path, args)
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2 and last.startswith("error: ") and message in last, last
    assert "Traceback" not in done.stderr
