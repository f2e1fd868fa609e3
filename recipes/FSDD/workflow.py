#!/usr/bin/env python3
"""The whole CALD workflow on FSDD, run by the demo and by the benchmark.

    python workflow.py --data_folder /path/to/fsdd --output_root results/fsdd_workflow \\
        [--modes std target hybrid unguided] [--seeds 1986 1987] [--train_per_speaker 20] \\
        [-- <train.py overrides for every run, e.g. --max_steps 200>]

1. "Pretraining": a random Wav2Vec2 built from the YAML's config learns digit
   recognition (task A, `--mode std`, CNN trained too). Its export stands in for a
   pretrained transformer: no download.
2. Target task, speaker identification (task B), from that model, per seed: std
   fine-tuning first (its export is the target / src_init teacher, its waypoints the
   waypoint teacher), then each CALD mode (conversion to bidirectional Mamba2 and
   training under its guidance), each tested with its best dev checkpoint.

Every run is `train.py` (speechbrain_cald.experiment.main) called in-process with the
overrides a user would type, so the runs are exactly the recipe's and their folders
(`<output_root>/{digits,speaker}/<run>/<seed>/`) are the recipe's too.
"""

import argparse
import json
import os
import re
import sys
import time

from fsdd_prepare import prepare_fsdd

from speechbrain_cald import experiment, speech_data
from speechbrain_cald.guidance import RUN_MODES, mode_overrides

HERE = os.path.dirname(os.path.abspath(__file__))
HPARAMS = os.path.join(HERE, "hparams", "wav2vec2_cald.yaml")
TASK_A = ["--label", "digit", "--n_classes", "10"]
SPEAKERS = 6
TASK_B = ["--label", "speaker", "--n_classes", str(SPEAKERS)]


def prepare_override(**options):
    """`--prepare_options` override (fsdd_prepare.prepare_fsdd keyword arguments)."""
    fields = ", ".join(f"{k}: {'null' if v is None else v}" for k, v in options.items())
    return ["--prepare_options", f"{{{fields}}}"]


def train(data_folder, output_root, args, hparams=HPARAMS):
    """One `train.py` run of `hparams` in-process (the same overrides as on the command
    line); returns its test stats (`test_metrics.json`)."""
    argv = [hparams, "--data_folder", data_folder, "--output_root", output_root]
    return experiment.main(
        prepare_fsdd, speech_data.classification_datasets, argv=argv + list(args)
    )


def run_folder(output_root, run, seed):
    """The folder of one run: train_log.txt, test_metrics.json, best_model/ (HF
    folder), inference/ (speechbrain_cald.inference folder), save/."""
    return os.path.join(output_root, run, str(seed))


def read_train_log(path):
    """Rows of a SpeechBrain FileTrainLogger log as dicts of floats, e.g.
    `{"step": 50, "train task": 2.1, "valid acc": 0.5, ...}` (one per line)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = {}
            for key, value in re.findall(r"([A-Za-z_ ]+): ([-+0-9.e]+)", line):
                row[key.strip()] = float(value)
            if row:
                rows.append(row)
    return rows


def run_workflow(
    data_folder,
    output_root,
    modes=RUN_MODES,
    seeds=(1986,),
    pretrain_args=(),
    task_args=(),
    common_args=(),
    hybrid_switch_step=None,
    train_per_speaker=None,
    heldout_indices=5,
    log=print,
    source_hub=None,
    task_hparams=HPARAMS,
):
    """Task-A pretraining, then std and `modes` on task B for every seed.

    With `source_hub` (a pretrained checkpoint: hub id or folder, e.g. Whisper
    tiny.en) there is no task A: task B starts from it, with `task_hparams` (e.g.
    hparams/whisper_sid.yaml, whose heads are already the speakers').

    pretrain_args / task_args: train.py overrides of the digit run / the speaker
    runs; common_args go to both (e.g. a smaller model). hybrid_switch_step defaults
    to half the speaker runs' steps. The digit run uses the first seed and every
    training recording; the speaker runs at most `train_per_speaker` per speaker
    (None: all); `heldout_indices` recording indices go to dev (and test, see
    fsdd_prepare.py). Returns
    `{"pretrain": stats, "runs": {mode: {seed: stats}}, "folders": {...}}` where
    folders names the task-B `output_root` and the pretrained export.
    """
    data_folder = os.path.abspath(data_folder)
    digits_root = os.path.join(os.path.abspath(output_root), "digits")
    speaker_root = os.path.join(os.path.abspath(output_root), "speaker")
    task_b = TASK_B if task_hparams == HPARAMS else []
    task_args = [*task_b, *common_args, *task_args]  # limited data regime of task B:
    task_args += prepare_override(
        heldout_indices=heldout_indices, max_train_per_class=train_per_speaker
    )
    pretrain_stats, hub = None, source_hub
    if source_hub is None:
        pretrain = [*TASK_A, "--mode", "std", "--freeze_feature_encoder", "False"]
        pretrain += prepare_override(heldout_indices=heldout_indices, limit_column="digit")
        pretrain += ["--seed", str(seeds[0])]
        log("== task A (digit recognition): std training of the random Wav2Vec2 ==")
        pretrain_stats = train(data_folder, digits_root, [*pretrain, *common_args, *pretrain_args])
        log(f"   digits: test acc {pretrain_stats['acc']:.3f}")
        hub = os.path.join(run_folder(digits_root, "std", seeds[0]), "best_model")
    runs = {}
    for seed in seeds:
        for mode in ["std", *[m for m in modes if m != "std"]]:
            log(f"== task B (speaker identification), seed {seed}: {mode} ==")
            switch = hybrid_switch_step
            if mode == "hybrid" and switch is None:  # half the std run's steps
                log_rows = read_train_log(
                    os.path.join(run_folder(speaker_root, "std", seed), "train_log.txt")
                )
                switch = int(max(row.get("step", 0) for row in log_rows)) // 2
            args = ["--source_hub", hub, "--seed", str(seed), *mode_overrides(mode, switch)]
            start = time.time()
            stats = train(data_folder, speaker_root, [*args, *task_args], task_hparams)
            stats["seconds"] = time.time() - start
            runs.setdefault(mode, {})[seed] = stats
            log(f"   {mode}: test acc {stats['acc']:.3f} ({stats['seconds']:.0f} s)")
    return {
        "pretrain": pretrain_stats,
        "runs": runs,
        # the starting model as the runs saved it (a Whisper checkpoint: its encoder)
        "folders": {
            "speaker_root": speaker_root,
            "pretrained": os.path.join(speaker_root, "pretrained"),
        },
    }


def parse_args(argv=None):
    """Command line of the workflow (train.py overrides after `--` go to every run)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_folder", required=True, help="FSDD root (recordings/)")
    parser.add_argument("--output_root", default="results/fsdd_workflow")
    parser.add_argument("--modes", nargs="+", default=list(RUN_MODES), choices=RUN_MODES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1986])
    parser.add_argument("--train_per_speaker", type=int, help="task B training recordings")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="-- train.py overrides")
    args = parser.parse_args(argv)
    args.overrides = [a for a in args.overrides if a != "--"]
    return args


if __name__ == "__main__":
    opts = parse_args(sys.argv[1:])
    result = run_workflow(
        opts.data_folder,
        opts.output_root,
        opts.modes,
        opts.seeds,
        common_args=opts.overrides,
        train_per_speaker=opts.train_per_speaker,
    )
    print(json.dumps({m: {s: r["acc"] for s, r in v.items()} for m, v in result["runs"].items()}))
