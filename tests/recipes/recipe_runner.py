"""What the recipe smoke tests share: the recipe tables, one `train.py` run as a
subprocess (the README command), and the metric files a finished run must leave."""

import csv
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def read_table(name):
    """Rows of a recipe table (a CSV beside this file) as dicts."""
    with open(os.path.join(os.path.dirname(__file__), name), newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def make_fixtures(out, corpus="all", size="tiny"):
    """Fixture corpora in their official layouts under `out` (tools/make_fixtures.py,
    procedural voices: no espeak-ng needed); returns `out`."""
    script = os.path.join(ROOT, "tools", "make_fixtures.py")
    args = ["--out", str(out), "--corpus", corpus, "--size", size, "--synth", "tones"]
    subprocess.run([sys.executable, script, *args], check=True, capture_output=True)
    return out


def train_command(row, output_root, args, launcher=(sys.executable,)):
    """(command, cwd, env) of `python train.py <row's yaml> <args> --output_root ...`
    in the row's recipe folder, offline on CPU with one thread; `launcher` replaces
    `python` (e.g. a torchrun command line)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": ROOT}
    cmd = [*launcher, "train.py", row["Hparam_file"], *args]
    cmd += ["--output_root", str(output_root), "--device", "cpu", "--noprogressbar"]
    return cmd, os.path.join(ROOT, "recipes", row["Recipe"]), env


def run_train(row, output_root, args, launcher=(sys.executable,)):
    """Run `train_command`; fails with its stderr; returns seconds."""
    cmd, cwd, env = train_command(row, output_root, args, launcher)
    start = time.time()
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    return time.time() - start


def run_metrics(output_root, run_name, seed="1986"):
    """test_metrics.json of one run (loaded), after checking its log and export exist."""
    folder = os.path.join(output_root, run_name, seed)
    assert os.path.isfile(os.path.join(folder, "train_log.txt"))
    assert os.path.isfile(os.path.join(folder, "best_model", "config.json"))
    with open(os.path.join(folder, "test_metrics.json"), encoding="utf-8") as f:
        return json.load(f)
