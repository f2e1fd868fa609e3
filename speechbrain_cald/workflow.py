"""Run a recipe's whole CALD workflow in order, from the recipe's folder:

    python -m speechbrain_cald.workflow hparams/wav2vec2_cald.yaml --hybrid_switch_step 40000 \\
        -- --data_folder /data/TEDLIUM_release-3 [other train.py overrides]

1. std: fine-tune the transformer (the target / src_init teacher and the waypoints);
2. every CALD mode (`guidance.RUN_MODES` after std; hybrid = target with L_LD off
   from the switch step, skipped without `--hybrid_switch_step`);
each `train.py` run tests its best dev checkpoint (test_metrics.json) and exports
`<output_root>/<run>/<seed>/inference`. A finished run is not repeated on a rerun
(SpeechBrain resumes it from its last checkpoint and ends at once).
"""

import argparse
import shlex
import subprocess
import sys
import time

from speechbrain_cald.guidance import HYBRID, RUN_MODES, mode_overrides


def commands(
    hparams, overrides, hybrid_switch_step=None, modes=RUN_MODES, launcher=None, script="train.py"
):
    """The `script` command of every run, in order (hybrid only with a switch step)."""
    launcher = launcher or [sys.executable]
    runs = [m for m in modes if m != HYBRID or hybrid_switch_step is not None]
    return [
        [*launcher, script, hparams, *mode_overrides(mode, hybrid_switch_step), *overrides]
        for mode in runs
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Arguments after -- go to every train.py run.",
    )
    parser.add_argument("hparams", help="the recipe's YAML, e.g. hparams/wav2vec2_cald.yaml")
    parser.add_argument(
        "--hybrid_switch_step", type=int, help="step at which the hybrid run drops L_LD"
    )
    parser.add_argument("--modes", nargs="+", default=list(RUN_MODES), choices=RUN_MODES)
    parser.add_argument(
        "--launcher", default=None, help='e.g. "torchrun --nproc_per_node=4" (default: python)'
    )
    parser.add_argument("--script", default="train.py", help="the recipe's training script")
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args, overrides = parser.parse_args(argv[:split]), argv[split + 1 :]
    launcher = shlex.split(args.launcher) if args.launcher else None
    runs = commands(
        args.hparams, overrides, args.hybrid_switch_step, args.modes, launcher, args.script
    )
    for cmd in runs:
        print(f"[workflow] {time.strftime('%H:%M:%S')} {shlex.join(cmd)}", flush=True)
        subprocess.run(cmd, check=True)
    print("[workflow] done: test_metrics.json of every run under the YAML's output_root")


if __name__ == "__main__":
    main()
