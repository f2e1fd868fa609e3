"""Benchmark (not a test): the paper's claims on a real pretrained speech transformer.

Whisper tiny.en's encoder is the pretrained source of two FSDD recipes (real
recordings, split by recording index): CTC speech recognition of digit strings
(`recipes/FSDD/train_asr.py hparams/whisper_asr.yaml`, WER / CER) and speaker
identification from 5 recordings per speaker (`train.py hparams/whisper_sid.yaml`,
accuracy). For each task and seed the whole workflow runs as a user would run it
(`speechbrain_cald.workflow`: std, then every CALD mode, then hybrid with the
switch at 40% of the steps), each run as its own `train.py` process. Prints per
task a table (mean and sample standard deviation over seeds, per-seed values, wall
time per run), the paper's qualitative claims checked row by row, and the per-layer
feature shift (1 - cosine) between the pretrained encoder and the std teacher.

    OMP_NUM_THREADS=2 python benchmarks/bench_fsdd_whisper.py --fsdd ../shared/data/fsdd \\
        --whisper ../shared/data/whisper_tiny_en [--tasks asr sid] [--seeds 1986 1987 1988] \\
        [--out results/bench_fsdd_whisper] [--write docs/BENCHMARKS.md] [-- <train.py overrides>]

A finished run is not repeated (its folder is reused), so an interrupted benchmark
continues where it stopped; `--fresh` deletes the output folder first.
"""

import argparse
import os
import shutil
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "recipes", "FSDD")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import machine  # noqa: E402  (sibling module: the machine line)
import seeded_modes  # noqa: E402  (sibling module: runs, table and claims over seeds)

from speechbrain_cald import analysis, dataprep  # noqa: E402
from speechbrain_cald.guidance import RUN_MODES  # noqa: E402

# task -> (script, YAML, metrics (first: the headline), lower is better, the YAML's max_steps)
TASKS = {
    "asr": ("train_asr.py", "hparams/whisper_asr.yaml", ("WER", "CER"), True, 400),
    "sid": ("train.py", "hparams/whisper_sid.yaml", ("acc",), False, 120),
}
HYBRID_AT = 0.4  # the hybrid switch, as a fraction of the steps (ref: ~40%)


def run_task(task, args, overrides):
    """Every mode of `task` for every seed; {mode: {seed: {metric: value, "seconds": s}}}."""
    script, hparams, metrics, _, max_steps = TASKS[task]
    if "--max_steps" in overrides:
        max_steps = int(overrides[overrides.index("--max_steps") + 1])
    switch = max(1, int(HYBRID_AT * max_steps))
    root = os.path.abspath(os.path.join(args.out, task))
    common = ["--data_folder", os.path.abspath(args.fsdd), "--source_hub"]
    common += [os.path.abspath(args.whisper), "--output_root", root]
    common += ["--noprogressbar", *overrides]
    return seeded_modes.run_modes(
        RECIPE, script, hparams, root, common, args.seeds, args.modes, switch, metrics, task
    )


def feature_shift(task, args):
    """Per-layer mean (1 - cos) between the pretrained encoder and the std teacher
    (first seed) on the test audio."""
    root = os.path.join(args.out, task)
    manifest = os.path.join(root, "manifests", "test.csv")
    wavs = [row["wav"] for row in dataprep.read_csv_manifest(manifest)][:60]
    batches = analysis.audio_batches(wavs, batch_size=8)
    pretrained = analysis.load_model(os.path.join(root, "pretrained"))
    std = analysis.load_model(os.path.join(root, "std", str(args.seeds[0]), "best_model"))
    with torch.no_grad():
        shift = analysis.feature_shift(pretrained.eval(), std.eval(), batches)
    return " | ".join(f"{v:.3f}" for v in shift.tolist())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fsdd", required=True, help="FSDD root (recordings/)")
    parser.add_argument("--whisper", required=True, help="Whisper checkpoint folder or hub id")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1986, 1987, 1988])
    parser.add_argument("--modes", nargs="+", default=list(RUN_MODES), choices=RUN_MODES)
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "bench_fsdd_whisper"))
    parser.add_argument("--write", help="append the tables to this markdown file")
    parser.add_argument("--fresh", action="store_true", help="delete --out first")
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args, overrides = parser.parse_args(argv[:split]), argv[split + 1 :]
    if args.modes[0] != "std":
        parser.error("--modes must start with std (it makes the teacher and the waypoints)")
    if args.fresh:
        shutil.rmtree(args.out, ignore_errors=True)
    start = time.time()
    print(machine.describe(), flush=True)
    sections = []
    for task in args.tasks:
        results = run_task(task, args, overrides)
        metrics, lower = TASKS[task][2], TASKS[task][3]
        points = 1 if lower else 100  # WER / CER already in %; accuracy in [0, 1]
        body = [seeded_modes.table(results, metrics, args.seeds), ""]
        body += [seeded_modes.claims(results, metrics[0], lower, points)]
        if "std" in results:
            layers = feature_shift(task, args)
            body += ["", f"Feature shift pretrained -> std teacher, layers 0..L: {layers}"]
        sections.append((task, "\n".join(body)))
        print(f"\n## {task}\n" + sections[-1][1], flush=True)
    minutes = (time.time() - start) / 60
    print(f"\ntotal {minutes:.1f} min", flush=True)
    if args.write:
        body = "\n\n".join(f"**{task}**\n\n{text}" for task, text in sections)
        machine.append_section(
            args.write,
            f"FSDD with Whisper tiny.en: every mode, {len(args.seeds)} seeds",
            body + f"\n\nTotal wall time {minutes:.1f} min.",
            argv,
        )


if __name__ == "__main__":
    main()
