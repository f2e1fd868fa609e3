"""The experiment runner of every recipe, speech and text (recipes/<Corpus>/<Task>/train.py).

    python train.py hparams/<file>.yaml [--key value ...]

A recipe's `train.py` names its corpus: a prepare function and a datasets function,
and calls `main(prepare, make_datasets)`, which runs, in order:

1. `hparams_yaml.load_experiment`: the YAML (merged into its `base_hparams`, if any)
   with the overrides; then, holding the output folder's lock (`run_lock`),
   `hparams_yaml.write_experiment`: the experiment folder;
2. `prepare(data_folder=..., save_folder=<manifest_folder>, skip_prep=...,
   **prepare_options)`: the corpus manifests (SpeechBrain's prepare convention; the
   YAML's `prepare_options` hold the corpus extras, e.g. `sample_rate`, a tokenizer);
3. `pretrained.prepare_pretrained`: the transformer every mode starts from, written once
   (`source_hub`: a hub id or local folder; or a random model from `source_config`);
4. `make_datasets(hparams) -> {split: DynamicItemDataset}` (`speech_data`,
   `text_data`);
5. `run`: the CALDBrain fitted, its `inference_mixer_options` set (if any), the best
   checkpoint tested, `test_metrics.json` written and the best model exported (HF
   folder + inference folder).

Training length is counted in optimizer steps: one SpeechBrain "epoch" is
`eval_every_steps` batches drawn by `samplers.StepBatchSampler`, so dev evaluation and
checkpoints come every `eval_every_steps` steps.
"""

import json
import logging
import os
import sys

import speechbrain as sb
import torch
from speechbrain.dataio.encoder import CategoricalEncoder

from speechbrain_cald import conversion, inference, layer_selection, schedulers
from speechbrain_cald.brain import CALDBrain
from speechbrain_cald.checkpoints import CheckpointIntegrityError
from speechbrain_cald.hparams_yaml import load_experiment, write_experiment
from speechbrain_cald.pretrained import check_run_checkpoints, prepare_pretrained
from speechbrain_cald.resumable import unwrapped
from speechbrain_cald.run_lock import RunLockedError, output_folder_lock
from speechbrain_cald.samplers import train_batch_sampler
from speechbrain_cald.speech_data import label_encoder_file

logger = logging.getLogger(__name__)

METRICS_FILE = "test_metrics.json"


def run(hparams, run_opts, datasets):
    """Build the CALDBrain, fit, test the best checkpoint (or the last,
    `test_checkpoint`), write metrics, export.

    Writes `<output_folder>/test_metrics.json` (test stats and the step reached),
    `<output_folder>/test_<metric>.txt` (per-utterance details, e.g. the WER file),
    the best model as an HF folder in `export_folder` (a std run's export is the
    teacher of target / src_init) and as an inference folder (`export_inference`;
    text recipes pass their `tokenizer`). Returns the test stats.
    """
    layer_selection.resolve_keep_attention(hparams, datasets["train"])  # before the student
    brain = CALDBrain(
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    test_keys = tested_checkpoint(brain, hparams)  # a bad setting fails before training
    inference_mixer_options(brain, hparams, check_only=True)
    batch_sampler = train_batch_sampler(datasets["train"], hparams)
    brain.train_sampler = batch_sampler  # receives set_epoch from Brain.fit
    eval_kwargs = {"batch_size": hparams["eval_batch_size"], "num_workers": 0}
    brain.fit(
        hparams["epoch_counter"],
        datasets["train"],
        datasets["dev"],
        train_loader_kwargs={
            "batch_sampler": batch_sampler,
            "num_workers": hparams.get("num_workers", 0),
            # its own generator: starting an epoch's iterator draws no global random
            # number, so a resumed run's dropout / masking RNG stays in step
            "generator": torch.Generator().manual_seed(hparams["seed"]),
        },
        valid_loader_kwargs=eval_kwargs,
    )
    inference_mixer_options(brain, hparams)  # the test stage and the exports run with them
    brain.evaluate(datasets["test"], test_loader_kwargs=eval_kwargs, **test_keys)
    stats = {**brain.last_stage_stats, "step": brain.optimizer_step}
    write_test_files(brain, hparams["output_folder"], stats)
    brain.export(hparams["export_folder"])
    export_inference(brain, hparams)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()  # torchrun: every process done, then leave cleanly
        torch.distributed.destroy_process_group()
    return stats


TEST_CHECKPOINTS = ("best", "last")


def tested_checkpoint(brain, hparams):
    """`Brain.evaluate`'s keyword for the checkpoint to test and export
    (`test_checkpoint`): "best" (default): the best on dev by the recipe's key;
    "last": the newest, the end of an annealed schedule (no key)."""
    which = hparams.get("test_checkpoint", "best")
    if which not in TEST_CHECKPOINTS:
        raise ValueError(f"test_checkpoint: {which!r}, not one of {TEST_CHECKPOINTS}")
    if which == "last":
        return {}
    return {name[:-1]: keys[0] for name, keys in brain.ckpt_keys().items()}  # max_key=...


def inference_mixer_options(brain, hparams, check_only=False):
    """The YAML's `inference_mixer_options` set on the student's mixers after training
    (`conversion.set_mixer_options`: settings that change no parameter, e.g. a cap on
    a Mamba2 head's memory); a transformer (a std run) has no mixers to take them."""
    options = hparams.get("inference_mixer_options") or {}
    student = unwrapped(brain.modules.student)
    if options and conversion.student_slots(student):
        conversion.set_mixer_options(student, check_only=check_only, **options)


@sb.utils.distributed.main_process_only
def write_test_files(brain, folder, stats):
    """`test_metrics.json` and one `test_<metric>.txt` per metric of the test stage."""
    with open(os.path.join(folder, METRICS_FILE), "w", encoding="utf-8") as f:
        json.dump(stats, f, indent=2)
    for name, metric in brain.metrics.items():
        with open(os.path.join(folder, f"test_{name}.txt"), "w", encoding="utf-8") as f:
            metric.write_stats(f)


@sb.utils.distributed.main_process_only
def export_inference(brain, hparams):
    """The best model (loaded by the test stage) as a `speechbrain_cald.inference`
    folder in `<output_folder>/inference` (or the YAML's `inference_folder`): the heads
    with the label encoders of `label_pipelines`, the CTC vocabulary of the task, or
    the text recipe's `tokenizer`. Returns the folder."""
    folder = hparams.get("inference_folder") or os.path.join(hparams["output_folder"], "inference")
    label_encoders = None
    if hparams.get("label_columns"):
        label_encoders = {}
        for head in hparams["label_columns"]:
            label_encoders[head] = CategoricalEncoder()
            label_encoders[head].load(label_encoder_file(hparams["save_folder"], head))
    inference.export_inference_folder(
        folder,
        brain.task,
        unwrapped(brain.modules.student),  # the bare modules under DDP
        unwrapped(brain.heads),
        label_encoders=label_encoders,
        tokenizer=hparams.get("tokenizer"),
        sample_rate=hparams.get("sample_rate", 16000),
    )
    logger.info("Inference folder written to %s", folder)
    return folder


def tensorboard_logger(enabled, folder):
    """SpeechBrain's TensorboardLogger writing to `folder` when `enabled` (the YAML's
    `tensorboard` switch), else None; needs the `tensorboard` package."""
    if not enabled:
        return None
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it)
    except ImportError as err:
        raise ValueError(
            "tensorboard: True needs the tensorboard package: pip install tensorboard"
        ) from err
    from speechbrain.utils.train_logger import TensorboardLogger

    return TensorboardLogger(folder)


# What a user can fix (a setting, a file, the data): one line on the command line.
USER_ERRORS = (ValueError, FileNotFoundError, RunLockedError, CheckpointIntegrityError)


def main(prepare, make_datasets, argv=None):
    """`python train.py hparams/<file>.yaml [--key value ...]` for one recipe.

    prepare: the corpus prepare function, called as `prepare(data_folder=...,
    save_folder=<manifest_folder>, skip_prep=..., **prepare_options)`.
    make_datasets: hparams -> `{split: DynamicItemDataset}` (train, dev, test).
    Returns the test stats. From the command line (`argv` None), an error the user
    can fix (a setting, a file, the data, a busy output folder) is one line on
    stderr and exit status 2; `CALD_DEBUG=1` shows the traceback; programmatic calls
    (`argv` given) raise.
    """
    try:
        return _run_recipe(prepare, make_datasets, argv)
    except USER_ERRORS as err:
        if argv is not None or os.environ.get("CALD_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def _run_recipe(prepare, make_datasets, argv):
    hparams, run_opts, record = load_experiment(argv)
    with output_folder_lock(hparams["output_folder"]):
        check_run_checkpoints(hparams)
        write_experiment(hparams, run_opts, record)
        sb.utils.distributed.run_on_main(
            prepare,
            kwargs={
                "data_folder": hparams["data_folder"],
                "save_folder": hparams["manifest_folder"],
                "skip_prep": hparams["skip_prep"],
                **(hparams.get("prepare_options") or {}),
            },
        )
        sb.utils.distributed.run_on_main(
            prepare_pretrained,
            args=[hparams["task"], hparams["pretrained_folder"]],
            kwargs={
                "hub": hparams["source_hub"],
                "config": hparams.get("source_config"),
                "overrides": hparams.get("source_overrides"),
                "seed": hparams["pretrained_seed"],
                "feature_extractor": hparams.get("feature_extractor"),
                "sample_rate": hparams.get("sample_rate"),
            },
        )
        datasets = make_datasets(hparams)
        schedulers.size_schedule(hparams, len(datasets["train"]))
        return run(hparams, run_opts, datasets)
