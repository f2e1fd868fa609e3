"""Corpus-agnostic pieces of the speech recipes (recipes/<Corpus>/<Task>/train.py).

A recipe's train.py keeps what is specific to its corpus (the prepare function and
its dynamic items) and calls `main`, which runs the steps below:

- `prepare_pretrained`: the transformer every mode starts from, written once as an
  HF folder (a hub id / local folder, or a random model from a config for tests);
- `load_datasets` with `audio_pipeline` plus `label_pipelines` (classification,
  encoders built from the train manifest and saved) or `char_pipeline` (CTC);
- `run`: build the CALDBrain, fit, evaluate on test with the best checkpoint,
  write `test_metrics.json` (+ one stats file per metric) and export the best model.

Training length is counted in optimizer steps: one SpeechBrain "epoch" is
`eval_every_steps` batches drawn by `StepBatchSampler`, so dev evaluation and
checkpoints come every `eval_every_steps` steps.
"""

import json
import logging
import os
import sys

import speechbrain as sb
import torch
import transformers
from hyperpyyaml import load_hyperpyyaml
from speechbrain.dataio import audio_io
from speechbrain.dataio.dataio import load_data_csv
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.dataio.sampler import DynamicBatchSampler, ReproducibleRandomSampler

from speechbrain_cald.brain import CALDBrain
from speechbrain_cald.dataprep import resample

logger = logging.getLogger(__name__)
SPLITS = ("train", "dev", "test")
METRICS_FILE = "test_metrics.json"


def prepare_pretrained(task, folder, hub=None, config=None, overrides=None, seed=0):
    """Write the starting transformer (and initial heads) to `folder` unless there.

    hub: HF hub id or local folder; None builds a random Wav2Vec2 from `config` (a
    dict of Wav2Vec2Config fields: the tiny models of the tests). overrides: config
    fields set either way (dropouts, time masking). A CTC task's vocabulary size and
    blank (pad) index are set from the task. Every mode of a recipe starts from this
    one folder, so their initial weights are identical.
    """
    if os.path.isfile(os.path.join(folder, "config.json")):
        return folder
    overrides = dict(overrides or {})
    if hasattr(task, "vocab"):
        overrides.update(vocab_size=len(task.vocab), pad_token_id=task.blank_index)
    torch.manual_seed(seed)
    if hub is None:
        hf_config = transformers.Wav2Vec2Config(**{**(config or {}), **overrides})
        model = task.auto_class.from_config(hf_config)
    else:
        model = task.auto_class.from_pretrained(hub, **overrides)
    task.save(folder, model, task.make_heads(model.config))
    logger.info("Starting transformer written to %s", folder)
    return folder


def audio_pipeline(sample_rate=16000):
    """Dynamic item `wav` -> `sig`: mono float32 at `sample_rate` (soundfile I/O)."""

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def read(wav):
        signal, sr = audio_io.load(wav, channels_first=False, dtype=torch.float32)
        signal = signal.mean(1)
        if sr != sample_rate:
            signal = torch.from_numpy(resample(signal.numpy(), sr, sample_rate))
        return signal

    return read


def label_pipelines(label_columns, train_csv, encoder_folder, num_classes):
    """One dynamic item per head: manifest column -> class index (batch key = head).

    label_columns: {head: manifest column}. Each encoder is built from the train
    manifest and saved as `<encoder_folder>/<head>_encoder.txt` (reloaded when
    present, so dev/test and later inference use the same indices); it must fit in
    the head's `num_classes[head]` outputs. The raw column is read as `<head>_label`
    (see `load_datasets`).
    """
    rows = load_data_csv(train_csv).values()
    items = []
    for head, column in label_columns.items():
        encoder = CategoricalEncoder()
        encoder.load_or_create(
            os.path.join(encoder_folder, f"{head}_encoder.txt"),
            from_iterables=[[row[column] for row in rows]],
        )
        if len(encoder) > num_classes[head]:
            raise ValueError(
                f"{len(encoder)} {head} labels in {train_csv}, but the head has "
                f"{num_classes[head]} outputs"
            )
        items.append(
            {
                "func": encoder.encode_label,
                "takes": [f"{head}_label"],
                "provides": head,
            }
        )
    return items


def char_pipeline(vocab, column, word_delimiter="|", unk="<unk>"):
    """Dynamic item transcript column -> `words` (str) and `tokens` (char indices).

    Spaces become `word_delimiter`; characters outside `vocab` become `unk`.
    """
    index = {token: i for i, token in enumerate(vocab)}

    @sb.utils.data_pipeline.takes(column)
    @sb.utils.data_pipeline.provides("words", "tokens")
    def encode(text):
        words = " ".join(text.split())
        yield words
        chars = words.replace(" ", word_delimiter)
        yield torch.LongTensor([index.get(c, index[unk]) for c in chars])

    return encode


def classification_items(hparams, manifests):
    """Dynamic items and output keys of an utterance-classification recipe
    (`label_columns`, `num_classes` from the YAML)."""
    labels = label_pipelines(
        hparams["label_columns"],
        manifests["train"],
        hparams["save_folder"],
        hparams["num_classes"],
    )
    items = [audio_pipeline(hparams["sample_rate"]), *labels]
    return items, ["id", "sig", *hparams["label_columns"]]


def load_datasets(manifests, items, output_keys, label_columns=None, max_duration=None):
    """`{split: DynamicItemDataset}` from the prepare step's `{split: csv}`.

    items: dynamic items (functions or `add_dynamic_item` dicts). Label columns are
    renamed `<head>_label` so the encoded label can take the head's name. Training
    utterances longer than `max_duration` seconds are dropped.
    """
    datasets = {}
    for split in SPLITS:
        data = load_data_csv(manifests[split])
        for row in data.values():
            for head, column in (label_columns or {}).items():
                row[f"{head}_label"] = row.pop(column)
        dataset = DynamicItemDataset(data, items, output_keys)
        if split == "train" and max_duration:
            dataset = dataset.filtered_sorted(key_max_value={"duration": max_duration})
        datasets[split] = dataset
    return datasets


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
    """Build the CALDBrain, fit, test the best checkpoint, write metrics, export.

    Writes `<output_folder>/test_metrics.json` (test stats and the step reached),
    `<output_folder>/test_<metric>.txt` (per-utterance details, e.g. the WER file)
    and the best model as an HF folder in `export_folder` (a std run's export is the
    teacher of target / src_init). Returns the test stats.
    """
    brain = CALDBrain(
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
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
        },
        valid_loader_kwargs=eval_kwargs,
    )
    best = {name[:-1]: keys[0] for name, keys in brain.ckpt_keys().items()}  # max_key=...
    brain.evaluate(datasets["test"], test_loader_kwargs=eval_kwargs, **best)
    stats = {**brain.last_stage_stats, "step": brain.optimizer_step}
    write_test_files(brain, hparams["output_folder"], stats)
    brain.export(hparams["export_folder"])
    return stats


@sb.utils.distributed.main_process_only
def write_test_files(brain, folder, stats):
    """`test_metrics.json` and one `test_<metric>.txt` per metric of the test stage."""
    with open(os.path.join(folder, METRICS_FILE), "w", encoding="utf-8") as f:
        json.dump(stats, f, indent=2)
    for name, metric in brain.metrics.items():
        with open(os.path.join(folder, f"test_{name}.txt"), "w", encoding="utf-8") as f:
            metric.write_stats(f)


def setup_experiment(argv=None):
    """Parse `train.py hparams.yaml [--key value ...]`, load the YAML with the
    overrides and create the experiment folder; returns (hparams, run_opts)."""
    hparams_file, run_opts, overrides = sb.parse_arguments(argv or sys.argv[1:])
    with open(hparams_file, encoding="utf-8") as f:
        hparams = load_hyperpyyaml(f, overrides)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    return hparams, run_opts


def main(prepare, dataset_items, argv=None):
    """`python train.py hparams/<file>.yaml [--key value ...]` for one speech recipe.

    prepare: the corpus prepare function (data_folder, save_folder, skip_prep,
    sample_rate) writing `<manifest_folder>/{train,dev,test}.csv`.
    dataset_items: (hparams, {split: csv}) -> (dynamic items, output keys).
    """
    hparams, run_opts = setup_experiment(argv)
    sb.utils.distributed.run_on_main(
        prepare,
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["manifest_folder"],
            "skip_prep": hparams["skip_prep"],
            "sample_rate": hparams["sample_rate"],
        },
    )
    sb.utils.distributed.run_on_main(
        prepare_pretrained,
        args=[hparams["task"], hparams["pretrained_folder"]],
        kwargs={
            "hub": hparams["wav2vec2_hub"],
            "config": hparams["wav2vec2_config"],
            "overrides": hparams["wav2vec2_overrides"],
            "seed": hparams["seed"],
        },
    )
    manifests = {s: os.path.join(hparams["manifest_folder"], f"{s}.csv") for s in SPLITS}
    items, output_keys = dataset_items(hparams, manifests)
    datasets = load_datasets(
        manifests,
        items,
        output_keys,
        hparams.get("label_columns"),
        hparams.get("max_duration"),
    )
    return run(hparams, run_opts, datasets)
