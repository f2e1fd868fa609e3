"""Benchmark (not a test): every guidance mode on the real FSDD recordings.

Runs recipes/FSDD/workflow.py: a small random Wav2Vec2 is trained on digit
recognition (the stand-in "pretrained" transformer), then fine-tuned (std) or
converted to bidirectional Mamba2 under unguided, target, src_init, waypoint,
trajectory and hybrid on speaker identification with few training recordings per
speaker (so that std is not saturated), for each seed. Prints one table: test
accuracy of each mode (best dev checkpoint), mean and spread over the seeds.

    OMP_NUM_THREADS=1 python benchmarks/bench_fsdd.py ../shared/data/fsdd \\
        [--seeds 1986 1987] [--train_per_speaker 20] [--steps 100] [--pretrain_steps 400] \\
        [--write docs/BENCHMARKS.md]

`--write` appends the table with the command, date and machine to a markdown file.
The data folder must hold `recordings/{digit}_{speaker}_{index}.wav`; the official
test split (indices 0-4) is used when present, else dev/test are carved out of the
other indices (fsdd_prepare.py).
"""

import argparse
import json
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "recipes", "FSDD"))  # the recipe's workflow module
import machine  # noqa: E402  (sibling module: the machine line)
import workflow  # noqa: E402


def summarize(runs):
    """{mode: (mean, spread, per-seed accuracies, mean seconds)}: spread is the
    sample standard deviation over seeds (0 with one seed)."""
    rows = {}
    for mode, per_seed in runs.items():
        accs = [per_seed[s]["acc"] for s in sorted(per_seed)]
        spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
        seconds = statistics.mean(per_seed[s]["seconds"] for s in per_seed)
        rows[mode] = (statistics.mean(accs), spread, accs, seconds)
    return rows


def format_table(rows, seeds):
    """The markdown table of `summarize` rows, modes in the workflow's order."""
    head = "| mode | test acc mean ± sd | " + " | ".join(f"seed {s}" for s in seeds)
    lines = [head + " | seconds/run |", "|---" * (len(seeds) + 3) + "|"]
    for mode in workflow.RUN_MODES:
        if mode in rows:
            mean, spread, accs, seconds = rows[mode]
            per_seed = " | ".join(f"{a:.3f}" for a in accs)
            lines.append(f"| {mode} | {mean:.3f} ± {spread:.3f} | {per_seed} | {seconds:.0f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "data_folder", nargs="?", default=os.path.join(ROOT, "..", "shared", "data", "fsdd")
    )
    parser.add_argument("--output_root", default=os.path.join(ROOT, "results", "bench_fsdd"))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1986, 1987])
    parser.add_argument("--train_per_speaker", type=int, default=20)
    parser.add_argument("--steps", type=int, default=100, help="speaker runs' optimizer steps")
    parser.add_argument("--pretrain_steps", type=int, default=400, help="digit run's steps")
    parser.add_argument("--eval_every", type=int, default=50)
    parser.add_argument("--write", help="append the results to this markdown file")
    args = parser.parse_args(argv)
    recordings = os.path.join(args.data_folder, "recordings")
    if not os.path.isdir(recordings):
        sys.exit(
            f"FSDD not found: {recordings} does not exist. Pass the FSDD root (holding "
            "recordings/{digit}_{speaker}_{index}.wav) as the first argument."
        )
    steps = ["--eval_every_steps", str(args.eval_every), "--waypoint_every", str(args.eval_every)]
    result = workflow.run_workflow(
        args.data_folder,
        args.output_root,
        modes=workflow.RUN_MODES,
        seeds=args.seeds,
        pretrain_args=["--max_steps", str(args.pretrain_steps)],
        task_args=["--max_steps", str(args.steps)],
        common_args=[*steps, "--noprogressbar"],
        train_per_speaker=args.train_per_speaker,
    )
    table = format_table(summarize(result["runs"]), args.seeds)
    with open(os.path.join(args.output_root, "bench_fsdd.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2, default=str)
    header = (
        f"Digit recognition (task A, the stand-in pretraining): test acc "
        f"{result['pretrain']['acc']:.3f} after {args.pretrain_steps} steps. Speaker "
        f"identification (task B): {args.train_per_speaker} training recordings per "
        f"speaker, {args.steps} steps per run, test = best dev checkpoint."
    )
    print(header)
    print(table)
    if args.write:
        title = "FSDD: every guidance mode (bench_fsdd.py)"
        machine.append_section(args.write, title, f"{header}\n\n{table}", argv or sys.argv[1:])


if __name__ == "__main__":
    main()
