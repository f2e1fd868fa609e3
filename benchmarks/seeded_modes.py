"""What the real-model accuracy benchmarks share: every guidance mode of one recipe for
several seeds, each run as its own `train.py` process (as a user runs it, through
`speechbrain_cald.workflow.commands`), then a table of mean ± sample sd over seeds and
the paper's qualitative claims checked row by row.

A finished run (its `test_metrics.json` exists) is not repeated, so an interrupted
benchmark continues where it stopped.
"""

import json
import os
import statistics
import subprocess
import sys
import time

from speechbrain_cald.guidance import GUIDED_MODES, HYBRID, RUN_MODES
from speechbrain_cald.workflow import commands


def run_modes(recipe, script, hparams, root, common, seeds, modes, switch, metrics, label):
    """Every mode in `modes` for every seed, mode by mode (std first: the teachers and
    the waypoints).

    recipe: the recipe folder (working directory of each run); root: its --output_root;
    common: overrides for every run (data, source, --output_root ...); switch: the hybrid
    run's switch step; metrics: keys of `test_metrics.json` to keep.
    Returns {mode: {seed: {metric: value, "seconds": wall seconds of the run}}}.
    """
    results = {}
    for mode in modes:  # mode-major: an interrupted benchmark has every seed of the first modes
        for seed in seeds:
            overrides = [*common, "--seed", str(seed)]
            (cmd,) = commands(hparams, overrides, switch, [mode], script=script)
            folder = os.path.join(root, mode, str(seed))
            metrics_file = os.path.join(folder, "test_metrics.json")
            timing_file = os.path.join(folder, "bench_seconds.json")
            if not os.path.isfile(metrics_file):
                start = time.time()
                log = os.path.join(root, f"{mode}_{seed}.log")
                os.makedirs(root, exist_ok=True)
                with open(log, "w") as f:
                    done = subprocess.run(cmd, cwd=recipe, stdout=f, stderr=subprocess.STDOUT)
                if done.returncode:
                    sys.exit(f"{label} {mode} seed {seed} failed; see {log}")
                with open(timing_file, "w") as f:
                    json.dump({"seconds": time.time() - start}, f)
            with open(metrics_file) as f:
                stats = json.load(f)
            with open(timing_file) as f:
                seconds = json.load(f)["seconds"]
            results.setdefault(mode, {})[seed] = {
                **{m: stats[m] for m in metrics},
                "seconds": seconds,
            }
            shown = ", ".join(f"{m} {stats[m]:.3f}" for m in metrics)
            print(f"  {label} {mode:10s} seed {seed}: {shown} ({seconds:.0f} s)", flush=True)
    return results


def summary(results, metric):
    """{mode: (mean, sample sd, per-seed values)} of `metric`."""
    rows = {}
    for mode, per_seed in results.items():
        values = [per_seed[s][metric] for s in sorted(per_seed)]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        rows[mode] = (statistics.mean(values), spread, values)
    return rows


def table(results, metrics, seeds):
    """The Markdown table: per mode the mean ± sd of each metric, the first metric per
    seed and the mean wall seconds per run."""
    head = "| mode | " + " | ".join(f"{m} mean ± sd" for m in metrics)
    head += " | " + " | ".join(f"{metrics[0]} seed {s}" for s in seeds) + " | s/run |"
    lines = [head, "|---" * (len(metrics) + len(seeds) + 2) + "|"]
    rows = {m: summary(results, m) for m in metrics}
    for mode in RUN_MODES:
        if mode not in results:
            continue
        cells = [f"{rows[m][mode][0]:.3f} ± {rows[m][mode][1]:.3f}" for m in metrics]
        cells += [f"{v:.3f}" for v in rows[metrics[0]][mode][2]]
        seconds = statistics.mean(r["seconds"] for r in results[mode].values())
        lines.append(f"| {mode} | " + " | ".join(cells) + f" | {seconds:.0f} |")
    return "\n".join(lines)


def claims(results, metric, lower_is_better, points):
    """The paper's qualitative claims, each with the measured numbers and a verdict.
    `points`: the factor from `metric` to points (100 for an accuracy in [0, 1], 1 for a
    WER already in %)."""
    rows = summary(results, metric)
    sign = -1 if lower_is_better else 1  # > 0: better
    lines = []

    def better(a, b):
        return sign * (rows[a][0] - rows[b][0])

    guided = [m for m in (*GUIDED_MODES, HYBRID) if m in rows]
    if "unguided" in rows:
        for mode in guided:
            margin = max(rows[mode][1], rows["unguided"][1])
            gain = better(mode, "unguided")
            verdict = "yes" if gain > margin else "NO"
            lines.append(
                f"- {mode} beats unguided by more than the seed sd: {verdict} "
                f"({metric} {rows[mode][0]:.3f} vs {rows['unguided'][0]:.3f}; gain {gain:.3f}, "
                f"sd {margin:.3f})"
            )
    if "std" in rows and guided:
        best = max(guided, key=lambda m: sign * rows[m][0])
        gap = better("std", best)
        verdict = "yes" if gap * points <= 2 else "NO"
        lines.append(
            f"- best guided ({best}) within 2 points of std: {verdict} ({metric} "
            f"{rows[best][0]:.3f} vs std {rows['std'][0]:.3f})"
        )
    if "trajectory" in rows and "target" in rows:
        verdict = "yes" if better("trajectory", "target") > 0 else "no"
        lines.append(
            f"- trajectory better than target (the paper: on text, not on speech): {verdict} "
            f"({rows['trajectory'][0]:.3f} vs {rows['target'][0]:.3f})"
        )
    return "\n".join(lines)
