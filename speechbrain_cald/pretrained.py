"""The starting transformer of every mode (`prepare_pretrained`) and the records of what
made it and a run's checkpoints (`cald_made_from.json`): a resumed run or a reused
starting model made from other settings is one error naming them."""

import json
import logging
import os

import speechbrain as sb
import torch
import transformers

from speechbrain_cald import speech_input
from speechbrain_cald.models import load_source
from speechbrain_cald.tasks import SpeechTask

logger = logging.getLogger(__name__)


MADE_FROM_FILE = "cald_made_from.json"  # what made a starting model or a run's checkpoints


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
