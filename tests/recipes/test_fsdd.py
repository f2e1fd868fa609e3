"""FSDD recipe: the prepare step's splits on synthetic layouts, and the demo workflow
(recipes/Demo/run_demo.py --tiny: every stage at minimum size on the shipped subset)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from recipe_runner import ROOT, shipped_fsdd_part, tiny_whisper_folder

from speechbrain_cald.dataprep import DataPrepError, read_csv_manifest

sys.path.insert(0, os.path.join(ROOT, "recipes", "FSDD"))
import fsdd_prepare  # noqa: E402

sys.path.pop(0)


def make_layout(root, indices, digits=(0, 1), speakers=("ann", "bob")):
    """`root/recordings/{digit}_{speaker}_{index}.wav` (0.1 s of noise at 8 kHz each)."""
    folder = root / "recordings"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for d in digits:
        for s in speakers:
            for i in indices:
                sf.write(folder / f"{d}_{s}_{i}.wav", 0.1 * rng.standard_normal(800), 8000)
    return root


def split_indices(manifests):
    """{split: sorted set of recording indices} of written manifests."""
    return {
        split: sorted({int(r["index"]) for r in read_csv_manifest(path)})
        for split, path in manifests.items()
    }


def test_official_test_split_used_when_present(tmp_path):
    """Indices 0-4 present: they are the test split; dev = the next heldout indices."""
    data = make_layout(tmp_path / "fsdd", range(0, 9))
    manifests = fsdd_prepare.prepare_fsdd(data, tmp_path / "m", heldout_indices=2)
    assert split_indices(manifests) == {"test": [0, 1, 2, 3, 4], "dev": [5, 6], "train": [7, 8]}
    row = read_csv_manifest(manifests["train"])[0]
    assert list(row) == ["ID", "duration", "wav", "digit", "speaker", "index"]
    assert float(row["duration"]) == pytest.approx(0.1)
    assert len(read_csv_manifest(manifests["test"])) == 5 * 2 * 2


def test_carved_splits_when_official_test_absent(tmp_path):
    """Only 5-11 (the shared copy's situation): test and dev are carved from them, and
    the training limit keeps the first recordings per speaker, index-major."""
    data = make_layout(tmp_path / "fsdd", range(5, 12))
    manifests = fsdd_prepare.prepare_fsdd(
        data, tmp_path / "m", heldout_indices=2, max_train_per_class=3, limit_column="speaker"
    )
    assert split_indices(manifests) == {"test": [5, 6], "dev": [7, 8], "train": [9, 10]}
    train = read_csv_manifest(manifests["train"])
    # per speaker: index 9 of digits 0 and 1, then index 10 of digit 0
    for speaker in ("ann", "bob"):
        ids = [r["ID"] for r in train if r["speaker"] == speaker]
        assert ids == [f"0_{speaker}_9", f"1_{speaker}_9", f"0_{speaker}_10"]


@pytest.mark.parametrize("indices", [range(0, 12), range(5, 14)])
def test_digit_strings_keep_the_splits_apart_and_are_the_same_everywhere(tmp_path, indices):
    """Each digit string is made of recordings of its own split only (test: the
    official 0-4 when present), and two preparations (other folders, same files) give
    the same transcripts, sources and audio."""
    data = make_layout(tmp_path / "fsdd", indices)
    prepared = []
    for name in ("a", "b"):
        manifests = fsdd_prepare.prepare_fsdd_digit_strings(
            data, tmp_path / name, heldout_indices=2, utterances=(6, 4, 4), digits=(2, 3)
        )
        prepared.append({split: read_csv_manifest(path) for split, path in manifests.items()})
    official = indices.start == 0
    expected = {
        "test": {0, 1, 2, 3, 4} if official else {5, 6},
        "dev": {5, 6} if official else {7, 8},
    }
    expected["train"] = set(indices) - expected["test"] - expected["dev"]
    for split, rows in prepared[0].items():
        used = {int(rec.rsplit("_", 1)[1]) for row in rows for rec in row["recordings"].split()}
        assert used <= expected[split], split
    for split in expected:
        for a, b in zip(prepared[0][split], prepared[1][split]):
            assert (a["ID"], a["wrd"], a["recordings"]) == (b["ID"], b["wrd"], b["recordings"])
            assert np.array_equal(sf.read(a["wav"])[0], sf.read(b["wav"])[0])


def test_split_errors(tmp_path):
    """Too few indices for test + dev + train, and a badly named file, are errors."""
    with pytest.raises(ValueError, match="no training index"):
        fsdd_prepare.split_indices([5, 6, 7, 8], heldout_indices=2)
    data = make_layout(tmp_path / "fsdd", range(5, 10))
    sf.write(data / "recordings" / "noise.wav", np.zeros(80), 8000)
    with pytest.raises(DataPrepError, match="noise.wav"):
        fsdd_prepare.prepare_fsdd(data, tmp_path / "m", heldout_indices=1)


@pytest.mark.parametrize(
    "task, source", [("asr", "whisper"), ("sid", "digits"), ("sid", "whisper")]
)
def test_demo_workflow_tiny(tmp_path, task, source):
    """The demo at minimum size on part of the shipped corpus: digit-string ASR from a
    (tiny random) Whisper, speaker ID from the digit-trained Wav2Vec2 or from Whisper.
    Every run is tested, the models reload through the inference interface and predict
    what the training code predicts, the table, its findings and the two PNGs are
    written."""
    data = shipped_fsdd_part(tmp_path / "data")  # 3 speakers, indices 5-8
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": ROOT}
    cmd = [sys.executable, os.path.join(ROOT, "recipes", "Demo", "run_demo.py"), "--tiny"]
    cmd += ["--threads", "1", "--long_seconds", "5", "--output_root", str(tmp_path)]
    cmd += ["--data_folder", str(data), "--task", task, "--source", source]
    if source == "whisper":
        cmd += ["--whisper", str(tiny_whisper_folder(tmp_path / "whisper"))]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "demo_summary.json").read_text())
    students = ["target", "unguided"] if task == "asr" else ["target", "hybrid", "unguided"]
    models = ["std (teacher)", *students]
    metric = "WER" if task == "asr" else "acc"
    assert [row["model"] for row in summary["table"]] == models
    for row in summary["table"]:
        assert row[metric] >= 0 and (task == "asr" or row[metric] <= 1)  # WER: insertions
        assert row["parameters"] > 0 and row["encoder_seconds"] > 0
        shown = f"{row[metric]:.2f}" if task == "asr" else f"{row[metric]:.3f}"
        assert f"| {row['model']} | {shown} |" in result.stdout
    for name, prediction in summary["predictions"].items():
        assert prediction["inference"] == prediction["training"], name
    # The findings are computed from the table: target against unguided, in its numbers.
    table = {row["model"]: row[metric] for row in summary["table"]}
    first = summary["findings"][0]
    assert first.startswith("- target vs unguided") and first in result.stdout
    shown = (lambda v: f"{v:.1f}") if task == "asr" else (lambda v: f"{v:.3f}")
    assert f"{shown(table['target'])} vs {shown(table['unguided'])}" in first
    shifts = summary["feature_shift"]
    assert set(shifts) == {"pretrained -> std teacher", *[f"teacher -> {m}" for m in students]}
    layers = 2 if source == "digits" else 3  # embeddings + the tiny models' 1 or 2 layers
    assert all(len(v) == layers for v in shifts.values())
    assert shifts["teacher -> unguided"][-1] > 0  # a converted layer differs from attention
    for png in ("training_curves.png", "feature_shift.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    root = tmp_path if task == "asr" else tmp_path / "speaker"
    for run in ("std", *students):
        folder = root / run / "1986"
        assert (folder / "test_metrics.json").is_file()
        assert (folder / "inference" / "hyperparams.yaml").is_file()


def test_demo_refuses_asr_from_the_digit_stand_in(tmp_path):
    """`--task asr --source digits` is a one-line usage error, before any work."""
    cmd = [sys.executable, os.path.join(ROOT, "recipes", "Demo", "run_demo.py")]
    cmd += ["--task", "asr", "--source", "digits", "--output_root", str(tmp_path / "out")]
    result = subprocess.run(
        cmd, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True
    )
    assert result.returncode == 2 and "--source digits is for --task sid" in result.stderr
    assert not (tmp_path / "out").exists()


def test_changed_input_files_are_prepared_again(tmp_path, caplog):
    """The preparation record covers the input files: the same files reuse the
    manifests; a removed or edited recording prepares them again (before: the old
    manifests were reused as complete)."""
    data = make_layout(tmp_path / "fsdd", range(5, 12))
    save = tmp_path / "m"
    first = read_csv_manifest(fsdd_prepare.prepare_fsdd(data, save, heldout_indices=2)["train"])
    with caplog.at_level("INFO"):
        fsdd_prepare.prepare_fsdd(data, save, heldout_indices=2)
    assert "are complete, skipping preparation" in caplog.text
    (data / "recordings" / "0_ann_11.wav").unlink()
    caplog.clear()
    with caplog.at_level("INFO"):
        again = read_csv_manifest(fsdd_prepare.prepare_fsdd(data, save, heldout_indices=2)["train"])
    assert "prepared from other options or input files" in caplog.text
    assert len(again) == len(first) - 1
    longer = np.random.default_rng(1).standard_normal(1600) * 0.1  # an edited recording
    sf.write(data / "recordings" / "1_bob_10.wav", longer, 8000)
    edited = read_csv_manifest(fsdd_prepare.prepare_fsdd(data, save, heldout_indices=2)["train"])
    row = next(r for r in edited if r["ID"] == "1_bob_10")
    assert float(row["duration"]) == pytest.approx(0.2)
