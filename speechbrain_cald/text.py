"""Corpus-agnostic pieces of the text recipes (recipes/GLUE, recipes/Pile).

The flow is the speech recipes' (speechbrain_cald.recipe): write the starting
transformer once (`recipe.prepare_pretrained` from `teacher_hub`), build the
datasets, then `recipe.run` (fit, test the best checkpoint, write
`test_metrics.json`, export). What differs for text: the manifests are JSON (text
may hold any character, which SpeechBrain's CSV reader would substitute), the
tokenizer is the teacher's (`AutoTokenizer` on `teacher_hub`), and the dev set
doubles as test where the corpus has no labelled test set (GLUE).
"""

import json
import logging
import math
import os

import speechbrain as sb
import torch
import transformers
from speechbrain.dataio.dataset import DynamicItemDataset

from speechbrain_cald import recipe

logger = logging.getLogger(__name__)


def write_manifest(path, rows):
    """`{id: row}` as JSON (one manifest per split)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(rows, f, ensure_ascii=False)


def load_datasets(manifest_folder, items, output_keys):
    """`{split: DynamicItemDataset}` from `<manifest_folder>/<split>.json`."""
    datasets = {}
    for split in recipe.SPLITS:
        with open(os.path.join(manifest_folder, f"{split}.json"), encoding="utf-8") as f:
            datasets[split] = DynamicItemDataset(json.load(f), items, output_keys)
    return datasets


def token_pipeline(tokenizer, columns, max_len):
    """Dynamic item text column(s) -> `tokens` (ids with the tokenizer's special
    tokens; a second column makes a sentence pair), cut to `max_len` tokens."""

    @sb.utils.data_pipeline.takes(*columns)
    @sb.utils.data_pipeline.provides("tokens")
    def encode(*texts):
        ids = tokenizer(*texts, truncation=True, max_length=max_len)["input_ids"]
        return torch.LongTensor(ids)

    return encode


def size_schedule(hparams, n_train):
    """Size the `warmup_ratio` LR schedules (speechbrain's LinearWarmupScheduler: the
    student's `lr_scheduler` and the trajectory teacher's `trajectory_lr_scheduler`)
    from the run length: training steps = epochs * batches per epoch
    (`eval_every_steps`, else the train set in `batch_size` batches), warm-up that
    fraction of them (reference: linear schedule, 6% warm-up, 10 epochs)."""
    ratio = hparams.get("warmup_ratio")
    if ratio is None:
        return
    per_epoch = hparams.get("eval_every_steps") or math.ceil(n_train / hparams["batch_size"])
    for name in ("lr_scheduler", "trajectory_lr_scheduler"):
        scheduler = hparams.get(name)
        if scheduler is None:
            continue
        scheduler.num_training_steps = hparams["number_of_epochs"] * per_epoch
        scheduler.num_warmup_steps = int(ratio * scheduler.num_training_steps)
        logger.info(
            "%s: %d steps, %d warm-up",
            name,
            scheduler.num_training_steps,
            scheduler.num_warmup_steps,
        )


def main(prepare, dataset_items, argv=None):
    """`python train.py hparams/<file>.yaml [--key value ...]` for one text recipe.

    prepare: hparams -> None, writes `<manifest_folder>/{train,dev,test}.json`.
    dataset_items: (hparams, tokenizer) -> (dynamic items, output keys).
    The YAML names `teacher_hub` (hub id or local folder: model and tokenizer) and
    `teacher_overrides` (config fields, e.g. num_labels and dropouts).
    """
    hparams, run_opts = recipe.setup_experiment(argv)
    tokenizer = transformers.AutoTokenizer.from_pretrained(hparams["teacher_hub"])
    sb.utils.distributed.run_on_main(prepare, args=[hparams, tokenizer])
    sb.utils.distributed.run_on_main(
        recipe.prepare_pretrained,
        args=[hparams["task"], hparams["pretrained_folder"]],
        kwargs={
            "hub": hparams["teacher_hub"],
            "overrides": hparams["teacher_overrides"],
            "seed": hparams["seed"],
        },
    )
    items, output_keys = dataset_items(hparams, tokenizer)
    datasets = load_datasets(hparams["manifest_folder"], items, output_keys)
    size_schedule(hparams, len(datasets["train"]))
    return recipe.run(hparams, run_opts, datasets, tokenizer=tokenizer)
