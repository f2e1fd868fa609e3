"""The experiment runner of every recipe, speech and text (recipes/<Corpus>/<Task>/train.py).

    python train.py hparams/<file>.yaml [--key value ...]

A recipe's `train.py` names its corpus: a prepare function and a datasets function,
and calls `main(prepare, make_datasets)`, which runs, in order:

1. `load_experiment`: the YAML (merged into its `base_hparams`, if any) with the
   overrides; then, holding the output folder's lock, `write_experiment`: the
   experiment folder;
2. `prepare(data_folder=..., save_folder=<manifest_folder>, skip_prep=...,
   **prepare_options)`: the corpus manifests (SpeechBrain's prepare convention; the
   YAML's `prepare_options` hold the corpus extras, e.g. `sample_rate`, a tokenizer);
3. `prepare_pretrained`: the transformer every mode starts from, written once
   (`source_hub`: a hub id or local folder; or a random model from `source_config`);
4. `make_datasets(hparams) -> {split: DynamicItemDataset}` (`speech_data`,
   `text_data`);
5. `run`: the CALDBrain fitted, the best checkpoint tested, `test_metrics.json`
   written and the best model exported (HF folder + inference folder).

Training length is counted in optimizer steps: one SpeechBrain "epoch" is
`eval_every_steps` batches drawn by `StepBatchSampler`, so dev evaluation and
checkpoints come every `eval_every_steps` steps.
"""

import ast
import contextlib
import difflib
import fcntl
import io
import json
import logging
import os
import re
import socket
import sys
import time

import ruamel.yaml
import speechbrain as sb
import torch
import transformers
from hyperpyyaml import load_hyperpyyaml
from ruamel.yaml.constructor import DuplicateKeyError
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.dataio.sampler import DynamicBatchSampler, ReproducibleRandomSampler

from speechbrain_cald import inference, schedulers, speech_input
from speechbrain_cald.brain import CALDBrain
from speechbrain_cald.checkpoints import CheckpointIntegrityError
from speechbrain_cald.models import load_source
from speechbrain_cald.resumable import unwrapped
from speechbrain_cald.speech_data import label_encoder_file
from speechbrain_cald.tasks import SpeechTask

logger = logging.getLogger(__name__)
METRICS_FILE = "test_metrics.json"
BASE_KEY = "base_hparams"  # a corpus YAML's base recipe YAML
MERGED_HPARAMS_FILE = "hparams_merged.yaml"  # a based YAML merged, before overrides


def prepare_pretrained(
    task,
    folder,
    hub=None,
    config=None,
    overrides=None,
    seed=0,
    feature_extractor=None,
    sample_rate=None,
):
    """Write the starting transformer (and initial heads) to `folder` unless there.

    hub: HF hub id or local folder; None builds a random model from `config` (a dict
    of HF config fields with its `model_type`, default "wav2vec2": the tiny models of
    the tests). overrides: config fields set either way (dropouts, time masking). A
    CTC task's vocabulary size and blank (pad) index are set from the task. Speech
    tasks record the model's input normalisation (`speech_input`): the checkpoint's
    own feature extractor, or for a model built from a config the
    Wav2Vec2FeatureExtractor options `feature_extractor` (default: normalised input);
    `sample_rate` (the recipe's) must be the feature extractor's. Every mode of a
    recipe starts from this one folder, so their initial weights are identical.
    """
    made_from = {
        **source_identity(hub, config, overrides),
        "feature_extractor": feature_extractor,
        "task": task_identity(task, exclude=("freeze_feature_encoder",)),  # a training choice
    }
    record = os.path.join(folder, MADE_FROM_FILE)
    if os.path.isfile(os.path.join(folder, "config.json")):
        check_made_from(record, made_from, f"the starting model in {folder}")
        return folder
    overrides = dict(overrides or {})
    if hasattr(task, "vocab"):
        overrides.update(vocab_size=len(task.vocab), pad_token_id=task.blank_index)
    torch.manual_seed(seed)
    if hub is None:
        fields = {"model_type": "wav2vec2", **(config or {}), **overrides}
        hf_config = transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)
        model = task.auto_class.from_config(hf_config)
    else:
        model = load_source(task.auto_class, hub, **overrides)
    if isinstance(task, SpeechTask):
        extractor = speech_input.feature_extractor_for(
            hub if feature_extractor is None else None, feature_extractor
        )
        if sample_rate is not None and extractor.sampling_rate != sample_rate:
            raise ValueError(
                f"sample_rate {sample_rate} differs from the {hub or 'configured'} model's "
                f"feature extractor ({extractor.sampling_rate} Hz); set sample_rate to it"
            )
        speech_input.attach_feature_extractor(model, extractor)
    task.save(folder, model, task.make_heads(model.config))
    write_made_from(record, made_from)
    logger.info("Starting transformer written to %s", folder)
    return folder


MADE_FROM_FILE = "cald_made_from.json"  # what made a starting model or a run's checkpoints


def source_identity(hub, config, overrides):
    """The source a starting model is made from: hub id or folder (absolute), the
    config of a model built from one (no hub), the config overrides."""
    return {
        "source_hub": os.path.abspath(hub) if hub and os.path.isdir(hub) else hub,
        "source_config": config if hub is None else None,
        "source_overrides": overrides,
    }


def task_identity(task, exclude=()):
    """The task's class and plain settings (vocabulary, head sizes, ...; not those in
    `exclude`): a changed one would not fit the saved heads."""
    plain = (str, int, float, bool, list, tuple, dict, type(None))
    settings = {
        k: v for k, v in sorted(vars(task).items()) if isinstance(v, plain) and k not in exclude
    }
    return {"class": type(task).__name__, **settings}


def _as_json(value):
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def write_made_from(path, made_from):
    """Record what made the folder of `path` (JSON)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(_as_json(made_from), f, indent=2, sort_keys=True)


def check_made_from(path, made_from, what):
    """ValueError naming each setting that differs from the record at `path` (none
    there: an older folder, accepted as it is)."""
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        recorded = json.load(f)
    wanted = _as_json(made_from)
    changed = sorted(k for k in set(recorded) | set(wanted) if recorded.get(k) != wanted.get(k))
    if changed:
        detail = "; ".join(f"{k}: was {recorded.get(k)!r}, now {wanted.get(k)!r}" for k in changed)
        raise ValueError(
            f"{what} was made with other settings ({detail}); give this run another "
            "output_root (or run_name / seed), or delete that folder to start again"
        )


def check_run_checkpoints(hparams):
    """The run's checkpoints were made by this model: the same source, task, mode,
    hybrid switch and student (a resumed run with a changed model would load the old
    one or fail as if the checkpoints were damaged). Records it for the next run."""
    mode = hparams.get("mode")
    student = hparams.get("student_config") if mode != "std" else None
    made_from = {
        "mode": mode,
        "hybrid_switch_step": hparams.get("hybrid_switch_step"),
        "student": student.to_dict() if hasattr(student, "to_dict") else student,
        "source": source_identity(
            hparams.get("source_hub"), hparams.get("source_config"), hparams.get("source_overrides")
        ),
        "task": task_identity(hparams["task"]),
    }
    path, save = os.path.join(hparams["output_folder"], MADE_FROM_FILE), hparams["save_folder"]
    if os.path.isdir(save) and any(name.startswith("CKPT") for name in os.listdir(save)):
        check_made_from(path, made_from, f"the checkpoints in {save}")
    if sb.utils.distributed.if_main_process():
        write_made_from(path, made_from)


class StepBatchSampler(torch.utils.data.Sampler):
    """Batches of `batch_sampler` cycled so that one epoch is exactly `steps` batches.

    Each pass over the data reshuffles (the inner sampler's `set_epoch`, seeded by
    the epoch and the pass), so a run is reproducible and a resumed one continues
    with the batches of its epoch.
    """

    def __init__(self, batch_sampler, steps):
        self.batch_sampler = batch_sampler
        self.steps = steps
        self.epoch = 0

    def set_epoch(self, epoch):
        """Called by the Brain at each epoch start."""
        self.epoch = epoch

    def __len__(self):
        return self.steps

    def __iter__(self):
        count, passes = 0, 0
        while True:
            for sampler in (self.batch_sampler, getattr(self.batch_sampler, "sampler", None)):
                if hasattr(sampler, "set_epoch"):
                    sampler.set_epoch(self.epoch * 1000 + passes)
            passes += 1
            for batch in self.batch_sampler:
                yield batch
                count += 1
                if count == self.steps:
                    return


def train_batch_sampler(train_set, hparams):
    """The train batch sampler: length-bucketed dynamic batches
    (`dynamic_batch_sampler` options, lengths in seconds) when `dynamic_batching`,
    else shuffled batches of `batch_size`; cycled per `eval_every_steps` when set."""
    seed = hparams["seed"]
    if hparams.get("dynamic_batching", False):
        sampler = DynamicBatchSampler(
            train_set,
            length_func=lambda x: float(x["duration"]),
            seed=seed,
            **hparams["dynamic_batch_sampler"],
        )
    else:
        sampler = torch.utils.data.BatchSampler(
            ReproducibleRandomSampler(train_set, seed=seed), hparams["batch_size"], False
        )
    steps = hparams.get("eval_every_steps")
    return StepBatchSampler(sampler, steps) if steps else sampler


def run(hparams, run_opts, datasets):
    """Build the CALDBrain, fit, test the best checkpoint (or the last,
    `test_checkpoint`), write metrics, export.

    Writes `<output_folder>/test_metrics.json` (test stats and the step reached),
    `<output_folder>/test_<metric>.txt` (per-utterance details, e.g. the WER file),
    the best model as an HF folder in `export_folder` (a std run's export is the
    teacher of target / src_init) and as an inference folder (`export_inference`;
    text recipes pass their `tokenizer`). Returns the test stats.
    """
    brain = CALDBrain(
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    test_keys = tested_checkpoint(brain, hparams)  # a bad setting fails before training
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


def merge_base_hparams(hparams_file):
    """YAML text of `hparams_file` merged into the base YAML it names; None if none.

    A new corpus reuses a recipe's YAML instead of copying it: its YAML names that
    file under `base_hparams` (a path relative to itself) and lists only what differs
    (`data_folder` comment, `output_root`, `num_classes`, `label_columns`, ...). Each
    of its top-level keys replaces the base's value whole, so a mapping such as
    `num_classes: {intent: 10}` drops the base's heads (command-line overrides, by
    contrast, merge mappings key by key); keys the base lacks are added. The base may
    itself name a base. Tags (`!ref`, `!new:` ...) are kept, so the base's references
    see the corpus values when the merged text is loaded.
    """
    yaml = ruamel.yaml.YAML()
    with open(hparams_file, encoding="utf-8") as f:
        tree = yaml.load(f)
    if not isinstance(tree, dict) or BASE_KEY not in tree:
        return None
    base_file = os.path.join(os.path.dirname(os.path.abspath(hparams_file)), tree.pop(BASE_KEY))
    base_text = merge_base_hparams(base_file)
    if base_text is None:
        with open(base_file, encoding="utf-8") as f:
            base_text = f.read()
    merged = yaml.load(base_text)
    merged.update(tree)
    stream = io.StringIO()
    yaml.dump(merged, stream)
    return stream.getvalue()


def load_experiment(argv=None):
    """Parse `train.py hparams.yaml [--key value ...]` and load the YAML (merged into its
    base, see `merge_base_hparams`) with the overrides; nothing is written. Returns
    (hparams, run_opts, what `write_experiment` needs)."""
    hparams_file, run_opts, overrides = sb.parse_arguments(argv or sys.argv[1:])
    sb.utils.distributed.ddp_init_group(run_opts)  # torchrun: one process per device
    merged = merge_base_hparams(hparams_file)
    with open(hparams_file, encoding="utf-8") as f:
        try:
            hparams = load_hyperpyyaml(f if merged is None else merged, overrides)
        except (KeyError, DuplicateKeyError) as err:
            raise override_error(err, hparams_file) from None
    return hparams, run_opts, (hparams_file, merged, overrides)


def override_error(err, hparams_file):
    """A one-line ValueError for an unknown (misspelled) or repeated `--key` override;
    any other error as it is."""
    if isinstance(err, DuplicateKeyError):
        key = re.search(r'duplicate key "([^"]+)"', str(err))
        return ValueError(f"--{key.group(1) if key else '?'} is given more than once")
    unknown = re.match(r"Override '([^']+)' not found in: (\[.*\])", str(err.args[0]))
    if unknown is None:
        return err
    key, keys = unknown.group(1), ast.literal_eval(unknown.group(2))
    close = difflib.get_close_matches(key, keys, n=3)
    hint = f"; did you mean {', '.join('--' + k for k in close)}?" if close else ""
    return ValueError(f"--{key}: no such key in {hparams_file}{hint}")


def write_experiment(hparams, run_opts, record):
    """The experiment folder: the resolved YAML (`hyperparams.yaml`, and the merged text
    of a based YAML), the overrides and the log (SpeechBrain's experiment directory).
    Call it holding the folder's lock (`output_folder_lock`): a refused second run must
    not overwrite the first run's records."""
    hparams_file, merged, overrides = record
    if merged is not None:  # hyperparams.yaml is resolved from the merged text
        hparams_file = os.path.join(hparams["output_folder"], MERGED_HPARAMS_FILE)
        if sb.utils.distributed.if_main_process():
            os.makedirs(hparams["output_folder"], exist_ok=True)
            with open(hparams_file, "w", encoding="utf-8") as f:
                f.write(merged)
        sb.utils.distributed.ddp_barrier()
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
        log_config=run_opts.get("log_config")
        or hparams.get("log_config")
        or sb.core.DEFAULT_LOG_CONFIG,
    )


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


class RunLockedError(RuntimeError):
    """Another process is running in the same output folder."""


LOCK_FILE = "run.lock"


@contextlib.contextmanager
def output_folder_lock(folder):
    """Hold an exclusive lock on `<folder>/run.lock` (fcntl.flock: released when the
    block or the process ends, a crash included). A second run in the same folder
    gets `RunLockedError` naming the process that holds it; two runs writing the same
    checkpoints would break each other's. Main process only under DDP."""
    if not sb.utils.distributed.if_main_process():
        yield
        return
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_FILE)
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunLockedError(
                f"{folder} is in use by {holder}: wait for that run to end, or give this "
                "one another --output_folder (or --seed / --run_name)"
            ) from None
        handle.seek(0)
        handle.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {started}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
                "seed": hparams["seed"],
                "feature_extractor": hparams.get("feature_extractor"),
                "sample_rate": hparams.get("sample_rate"),
            },
        )
        datasets = make_datasets(hparams)
        schedulers.size_schedule(hparams, len(datasets["train"]))
        return run(hparams, run_opts, datasets)
