"""Crash safety and multi-process training of a speech recipe, end to end (subprocesses).

- A TEDLIUM run in the trajectory mode wrapped in hybrid (guidance state: the
  concurrently trained teacher, its optimizer and update count, and the hybrid switch,
  which falls after the kill) is SIGKILLed mid-epoch right after an intra-epoch
  checkpoint was written, restarted with the same command, and must end with the
  same student weights, train log and test metrics as an uninterrupted run with the
  same seed.
- The slow variant also truncates a file of the newest checkpoint before the
  restart: the run falls back to the previous checkpoint with a warning and still
  ends identically (it replays the epoch from its start).
- `torchrun --nproc_per_node=2` (gloo, CPU) runs 4 steps of a CALD mode: both
  ranks end with identical student weights, and only rank 0 writes checkpoints and
  logs.
"""

import glob
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from recipe_runner import ROOT, make_fixtures, read_table, run_train, train_command

ROW = next(r for r in read_table("recipes.csv") if r["Recipe"] == "TEDLIUM/ASR")
# the row's tiny model and batches, long enough to be killed in its second epoch, an
# LR that moves the weights from step 1, and an intra-epoch checkpoint every batch
RUN = re.sub(r"--(max_steps|eval_every_steps) \d+ ", "", ROW["test_flags"]) + (
    " --mode trajectory --hybrid_switch_step 7 --max_steps 8 --eval_every_steps 4"
    " --ckpt_interval_steps 1 --lr 0.002 --warmup_steps 2 --decay_steps 8"
)
# The resumed run repeats the same float operations in the same order (one thread),
# so its weights match to rounding; a wrong data order, RNG, LR or teacher state
# moves them by orders of magnitude more (the LR is 2e-3).
ATOL = 1e-6
RUN_FOLDER = os.path.join("trajectory", "1986")


@pytest.fixture(scope="module")
def tedlium(tmp_path_factory):
    """The tiny TEDLIUM fixture corpus (procedural voices)."""
    out = make_fixtures(tmp_path_factory.mktemp("fixtures"), "tedlium")
    return os.path.join(out, ROW["Fixture_root"])


def args(data, extra=""):
    return ["--data_folder", data, *shlex.split(RUN + " " + extra)]


def checkpoints(output_root):
    """[(folder, meta)] of the complete checkpoints of the run, oldest first."""
    found = []
    pattern = os.path.join(output_root, RUN_FOLDER, "save", "CKPT+*", "CKPT.yaml")
    for meta_file in glob.glob(pattern):
        try:
            with open(meta_file, encoding="utf-8") as f:
                found.append((os.path.dirname(meta_file), yaml.safe_load(f)))
        except FileNotFoundError:  # deleted by the running training (keep-only rules)
            continue
    return sorted(found, key=lambda c: c[1]["unixtime"])


def read(output_root, name):
    with open(os.path.join(output_root, RUN_FOLDER, name), encoding="utf-8") as f:
        return f.read()


def kill_mid_second_epoch(data, output_root, timeout=240):
    """Start the run; SIGKILL it as soon as an intra-epoch checkpoint newer than the
    first end-of-epoch one exists (so mid-epoch 2). Returns that checkpoint's folder."""
    cmd, cwd, env = train_command(ROW, output_root, args(data))
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    start, target = time.time(), None
    try:
        while target is None and proc.poll() is None and time.time() - start < timeout:
            ckpts = checkpoints(output_root)
            first_end = next((c[1]["unixtime"] for c in ckpts if c[1]["end-of-epoch"]), None)
            intra = [c for c in ckpts if not c[1]["end-of-epoch"]]
            if first_end is not None and intra and intra[-1][1]["unixtime"] > first_end:
                target = intra[-1][0]
            time.sleep(0.01)
    finally:
        proc.kill()
        _, err = proc.communicate()
    assert target is not None, f"no intra-epoch checkpoint in epoch 2: {err.decode()[-3000:]}"
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not os.path.exists(os.path.join(output_root, RUN_FOLDER, "test_metrics.json"))
    return target


def final_student(output_root):
    """Student state dict of the newest checkpoint: the end of training."""
    folder, meta = checkpoints(output_root)[-1]
    assert meta["end-of-epoch"] and meta["step"] == 8, meta
    return torch.load(os.path.join(folder, "student.ckpt"), map_location="cpu", weights_only=True)


def assert_same_run(resumed_root, reference_root):
    """Same final student weights (within ATOL), train log and test metrics."""
    resumed, reference = final_student(resumed_root), final_student(reference_root)
    assert resumed.keys() == reference.keys()
    for name, value in reference.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=ATOL, msg=name)
    for name in ("train_log.txt", "test_metrics.json"):
        assert read(resumed_root, name) == read(reference_root, name), name
    # the reference did learn: its train loss changed between the two epochs
    task = re.findall(r"train task: ([\d.e+-]+)", read(reference_root, "train_log.txt"))
    assert len(task) == 2 and task[0] != task[1], task


@pytest.fixture(scope="module")
def reference(tedlium, tmp_path_factory):
    """The uninterrupted run."""
    root = tmp_path_factory.mktemp("reference")
    run_train(ROW, root, args(tedlium))
    return root


def test_sigkill_mid_epoch_resumes_exactly(tedlium, reference, tmp_path):
    """Kill after an intra-epoch checkpoint of epoch 2, restart: the same end as no kill."""
    kill_mid_second_epoch(tedlium, tmp_path)
    run_train(ROW, tmp_path, args(tedlium))
    assert "Loading a checkpoint from" in read(tmp_path, "log.txt")
    assert_same_run(tmp_path, reference)


@pytest.mark.slow
def test_truncated_checkpoint_falls_back(tedlium, reference, tmp_path):
    """Kill, truncate the newest checkpoint's student file, restart: a warning, the
    previous (end-of-epoch 1) checkpoint is used, and the run still ends identically."""
    newest = kill_mid_second_epoch(tedlium, tmp_path)
    student = os.path.join(newest, "student.ckpt")
    with open(student, "r+b") as f:
        f.truncate(os.path.getsize(student) // 2)
    run_train(ROW, tmp_path, args(tedlium))
    log = read(tmp_path, "log.txt")
    assert f"Checkpoint {newest} cannot be loaded" in log and "truncated" in log
    assert_same_run(tmp_path, reference)


def test_ddp_two_cpu_processes(tedlium, tmp_path):
    """torchrun, 2 processes, gloo: the run above for 4 steps (2 epochs of 4 batches
    shared by the 2 processes; the hybrid switch at step 7 is not reached). Both end
    with identical student and trajectory-teacher weights (DDP averages the student's
    gradients, the guidance the teacher's: exactly the same float values on both);
    only rank 0 writes (checkpoints, logs, exports), audited by ddp_worker.py."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    launcher += ["--nproc_per_node=2", os.path.join(ROOT, "tests", "recipes", "ddp_worker.py")]
    extra = "--distributed_backend gloo"
    # Once in about twenty runs beside another test (pytest-xdist), a rank has ended in
    # C++'s "terminate called without an active exception" (SIGABRT) after training,
    # while rank 0 exported; not reproduced alone or under load, cause not found. That
    # one signature gets one fresh second run; any other failure, or a second one, fails.
    for attempt in (1, 2):
        audit = tmp_path / f"audit{attempt}"
        audit.mkdir()
        os.environ["CALD_DDP_AUDIT"] = str(audit)  # read by the workers (inherited env)
        try:
            run_train(ROW, tmp_path / f"out{attempt}", args(tedlium, extra), launcher=launcher)
            break
        except AssertionError as err:
            if attempt == 2 or "terminate called without an active exception" not in str(err):
                raise
        finally:
            del os.environ["CALD_DDP_AUDIT"]
    weights = [torch.load(audit / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert any(k.startswith("teacher.") for k in weights[0])
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name
    with open(audit / "rank1.json", encoding="utf-8") as f:
        rank1 = json.load(f)
    # rank 1 only builds the YAML's Checkpointer, which makes its folder (makedirs)
    save = os.path.join(RUN_FOLDER, "save")
    assert all(event == "os.mkdir" and save.startswith(path) for event, path in rank1), rank1
    with open(audit / "rank0.json", encoding="utf-8") as f:
        rank0 = {path for _, path in json.load(f)}
    assert {os.path.join(RUN_FOLDER, n) for n in ("train_log.txt", "log.txt")} <= rank0
    assert any(p.startswith(os.path.join(RUN_FOLDER, "save", "partial-CKPT+")) for p in rank0)
    log = read(tmp_path / f"out{attempt}", "train_log.txt")
    assert log.count("epoch: 1, step: 2 ") == 1 and log.count("epoch: 2, step: 4 ") == 1, log
