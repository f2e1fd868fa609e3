"""The FSDD recipes on a Whisper encoder (hparams/whisper_sid.yaml, whisper_asr.yaml)
run as their README says, on part of the shipped FSDD subset with a tiny random
Whisper folder in place of tiny.en: speaker ID through the whole workflow (every
mode), digit-string CTC ASR std then target; each run tested and exported."""

import hashlib
import json
import os
import subprocess
import sys

import pytest
from recipe_runner import ROOT, run_metrics, shipped_fsdd_part, tiny_whisper_folder

from speechbrain_cald.guidance import RUN_MODES

RECIPE = os.path.join(ROOT, "recipes", "FSDD")
TINY_RUN = [
    "--max_steps", "4", "--eval_every_steps", "2", "--waypoint_every", "2",
    "--warmup_steps", "1", "--batch_size", "2", "--eval_batch_size", "4",
    "--student_mixer_config", "{d_state: 8, headdim: 8, chunk_size: 16}",
    "--device", "cpu", "--noprogressbar",
]  # fmt: skip


@pytest.fixture(scope="module")
def whisper_and_data(tmp_path_factory):
    """(tiny random Whisper folder, FSDD folder: 3 speakers x 10 digits x indices 5-8)."""
    root = tmp_path_factory.mktemp("fsdd_whisper")
    return tiny_whisper_folder(root / "whisper"), shipped_fsdd_part(root / "data")


def run(args, tmp_path, status=0):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": ROOT}
    result = subprocess.run(
        [sys.executable, *args], cwd=RECIPE, env=env, capture_output=True, text=True
    )
    assert result.returncode == status, result.stderr[-3000:]
    return result


def file_hashes(folder):
    """{relative path: sha256} of every file under `folder`."""
    hashes = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                hashes[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return hashes


def evaluate_again(tmp_path, mode, metric_names):
    """`speechbrain_cald.evaluate` of a finished run on its own test manifest under a new
    name: the run's test metrics again, every file of the run unchanged, the same name
    refused a second time (one line, status 2)."""
    run_folder = tmp_path / mode / "1986"
    before = file_hashes(tmp_path)
    command = ["-m", "speechbrain_cald.evaluate", str(run_folder)]
    command += [str(tmp_path / "manifests" / "test.csv"), "--name", "again"]
    run(command, tmp_path)
    results = run_folder / "evaluations" / "again"
    after = {
        k: v
        for k, v in file_hashes(tmp_path).items()
        if not k.startswith(f"{mode}/1986/evaluations/")
    }
    assert after == before
    with open(results / "metrics.json", encoding="utf-8") as f:
        metrics = json.load(f)
    expected = run_metrics(tmp_path, mode)
    for name in metric_names:
        assert metrics[name] == pytest.approx(expected[name], abs=1e-6), name
    refused = run(command, tmp_path, status=2)
    assert refused.stderr.count("\n") == 1 and "exists" in refused.stderr
    assert {
        k: v
        for k, v in file_hashes(tmp_path).items()
        if not k.startswith(f"{mode}/1986/evaluations/")
    } == before


def test_speaker_id_workflow(whisper_and_data, tmp_path):
    whisper, data = whisper_and_data
    prepare = (
        "{sample_rate: 16000, heldout_indices: 1, max_train_per_class: 4, limit_column: speaker}"
    )
    overrides = ["--data_folder", str(data), "--source_hub", str(whisper)]
    overrides += ["--prepare_options", prepare, "--num_classes", "{speaker: 3}"]
    overrides += ["--output_root", str(tmp_path), *TINY_RUN]
    workflow = ["-m", "speechbrain_cald.workflow", "hparams/whisper_sid.yaml"]
    run([*workflow, "--hybrid_switch_step", "2", "--", *overrides], tmp_path)
    for mode in RUN_MODES:
        metrics = run_metrics(tmp_path, mode)
        assert 0 <= metrics["acc"] <= 1, (mode, metrics)
        assert os.path.isfile(tmp_path / mode / "1986" / "inference" / "hyperparams.yaml")
    evaluate_again(tmp_path, "target", ["acc", "speaker_acc"])


def test_digit_string_asr(whisper_and_data, tmp_path):
    whisper, data = whisper_and_data
    prepare = "{sample_rate: 16000, heldout_indices: 1, utterances: [8, 4, 4], digits: [2, 3]}"
    overrides = ["--data_folder", str(data), "--source_hub", str(whisper)]
    overrides += ["--prepare_options", prepare, "--output_root", str(tmp_path), *TINY_RUN]
    asr = ["train_asr.py", "hparams/whisper_asr.yaml"]
    for mode in ("std", "target"):
        run([*asr, "--mode", mode, *overrides], tmp_path)
        metrics = run_metrics(tmp_path, mode)
        assert metrics["WER"] >= 0 and metrics["CER"] >= 0, (mode, metrics)
        assert metrics["step"] == 4  # test_checkpoint: last (the YAML's), not the best on dev
    assert (tmp_path / "std" / "1986" / "inference" / "hyperparams.yaml").is_file()
    # The student is tested and exported with the YAML's inference_mixer_options, and
    # its export gives the test stage's figures (evaluate_again).
    with open(tmp_path / "target" / "1986" / "inference" / "cald_inference.json") as f:
        mixer_config = json.load(f)["model"]["config"]["cald_student"]["mixer_config"]
    assert mixer_config["max_timescale"] == 50
    evaluate_again(tmp_path, "target", ["WER", "CER"])
    # An option that would change the trained parameters fails before training.
    bad = ["--mode", "target", "--seed", "1987", "--inference_mixer_options", "{d_state: 4}"]
    bad += ["--teacher_folder", str(tmp_path / "std" / "1986" / "best_model")]
    refused = run([*asr, *bad, *overrides], tmp_path, status=2)
    last = refused.stderr.strip().splitlines()[-1]  # (after transformers' loading bars)
    assert last.startswith("error: mixer options ['d_state']: not settable"), last
    save = tmp_path / "target" / "1987" / "save"
    assert not save.exists() or not os.listdir(save)


def test_starting_model_does_not_depend_on_the_first_runs_seed(whisper_and_data, tmp_path):
    """The shared starting model (`<output_root>/pretrained`: Whisper's encoder and a new
    CTC head) is the same whichever seed's run writes it (before: the first run's seed
    drew the head, so a run's result depended on which seed ran first in its folder)."""
    whisper, data = whisper_and_data
    prepare = "{sample_rate: 16000, heldout_indices: 1, utterances: [4, 2, 2], digits: [2, 2]}"
    heads = []
    for seed in ("1987", "1986"):
        root = tmp_path / seed
        args = ["train_asr.py", "hparams/whisper_asr.yaml", "--data_folder", str(data)]
        args += ["--source_hub", str(whisper), "--prepare_options", prepare, "--seed", seed]
        args += ["--output_root", str(root), *TINY_RUN]
        run(args, tmp_path)
        heads.append(file_hashes(root / "pretrained")["model.safetensors"])
    assert heads[0] == heads[1]
