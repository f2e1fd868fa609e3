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

import io
import json
import logging
import os
import sys

import ruamel.yaml
import speechbrain as sb
import torch
import transformers
from hyperpyyaml import load_hyperpyyaml
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.dataio.sampler import DynamicBatchSampler, ReproducibleRandomSampler
from speechbrain.utils.data_pipeline import DynamicItem

from speechbrain_cald import dataprep, inference, speech_input
from speechbrain_cald.audio import read_audio
from speechbrain_cald.brain import CALDBrain
from speechbrain_cald.resumable import unwrapped
from speechbrain_cald.tasks import SpeechTask

logger = logging.getLogger(__name__)
SPLITS = ("train", "dev", "test")
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
    if os.path.isfile(os.path.join(folder, "config.json")):
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
        model = task.auto_class.from_pretrained(hub, **overrides)
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
    logger.info("Starting transformer written to %s", folder)
    return folder


def audio_pipeline(sample_rate=16000):
    """Dynamic item `wav` -> `sig`: mono float32 at `sample_rate`, read by
    `speechbrain_cald.audio.read_audio` (as the inference interfaces read files)."""

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def read(wav):
        return torch.from_numpy(read_audio(wav, sample_rate))

    return read


def label_pipelines(label_columns, train_csv, encoder_folder, num_classes):
    """One dynamic item per head: manifest column -> class index (batch key = head).

    label_columns: {head: manifest column}. Each encoder is built from the train
    manifest and saved as `<encoder_folder>/<head>_encoder.txt` (reloaded when
    present, so dev/test and later inference use the same indices); it must fit in
    the head's `num_classes[head]` outputs. The raw column is read as `<head>_label`
    (see `load_datasets`). Each item's `row_check` screens dev/test rows for labels
    the encoder has not seen.
    """
    rows = dataprep.read_csv_manifest(train_csv)  # rows with a missing label are screened
    items = []
    for head, column in label_columns.items():
        encoder = CategoricalEncoder()
        encoder.load_or_create(
            label_encoder_file(encoder_folder, head),
            from_iterables=[[row[column] for row in rows if row.get(column)]],
        )
        if len(encoder) > num_classes[head]:
            raise ValueError(
                f"{len(encoder)} {head} labels in {train_csv}, but the head has "
                f"{num_classes[head]} outputs"
            )
        item = DynamicItem([f"{head}_label"], encoder.encode_label, [head])
        item.row_check = dataprep.label_row_check(column, list(encoder.lab2ind))
        items.append(item)
    return items


def char_pipeline(vocab, column, word_delimiter="|", unk="<unk>"):
    """Dynamic item transcript column -> `words` (str) and `tokens` (char indices).

    Spaces become `word_delimiter`; characters outside `vocab` become `unk` (rows
    holding any are screened out first by the item's `row_check`, see `load_datasets`).
    """
    index = {token: i for i, token in enumerate(vocab)}

    @sb.utils.data_pipeline.takes(column)
    @sb.utils.data_pipeline.provides("words", "tokens")
    def encode(text):
        words = " ".join(text.split())
        yield words
        chars = words.replace(" ", word_delimiter)
        yield torch.LongTensor([index.get(c, index[unk]) for c in chars])

    encode.row_check = dataprep.vocab_row_check(column, vocab, word_delimiter)
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


def load_datasets(
    manifests,
    items,
    output_keys,
    label_columns=None,
    max_duration=None,
    bad_data="skip",
    min_duration=0.0,
):
    """`{split: DynamicItemDataset}` from the prepare step's `{split: csv}`.

    items: dynamic items (functions or `add_dynamic_item` dicts). Label columns are
    renamed `<head>_label` so the encoded label can take the head's name. Training
    utterances longer than `max_duration` seconds are dropped; dev and test are
    sorted by duration (evaluation batches of similar lengths). Before that, every
    row is screened (`dataprep.load_manifest`): missing fields, unreadable / empty /
    shorter than `min_duration` audio, and the items' `row_check`s (characters
    outside the vocabulary, labels unseen in training); `bad_data` = "skip" drops
    such rows with counted warnings, "error" stops naming the file, line and ID.
    """
    checks = [dataprep.audio_row_check(min_duration)]
    checks += [item.row_check for item in items if hasattr(item, "row_check")]
    datasets = {}
    for split in SPLITS:
        data = dataprep.load_manifest(manifests[split], checks, bad_data)
        for row in data.values():
            for head, column in (label_columns or {}).items():
                row[f"{head}_label"] = row.pop(column)
        dataset = DynamicItemDataset(data, items, output_keys)
        if split == "train" and max_duration:
            dataset = dataset.filtered_sorted(key_max_value={"duration": max_duration})
        elif split != "train":  # evaluation batches of similar lengths: little padding
            dataset = dataset.filtered_sorted(sort_key="duration")
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


def run(hparams, run_opts, datasets, tokenizer=None):
    """Build the CALDBrain, fit, test the best checkpoint, write metrics, export.

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
    best = {name[:-1]: keys[0] for name, keys in brain.ckpt_keys().items()}  # max_key=...
    brain.evaluate(datasets["test"], test_loader_kwargs=eval_kwargs, **best)
    stats = {**brain.last_stage_stats, "step": brain.optimizer_step}
    write_test_files(brain, hparams["output_folder"], stats)
    brain.export(hparams["export_folder"])
    export_inference(brain, hparams, tokenizer)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()  # torchrun: every process done, then leave cleanly
        torch.distributed.destroy_process_group()
    return stats


@sb.utils.distributed.main_process_only
def write_test_files(brain, folder, stats):
    """`test_metrics.json` and one `test_<metric>.txt` per metric of the test stage."""
    with open(os.path.join(folder, METRICS_FILE), "w", encoding="utf-8") as f:
        json.dump(stats, f, indent=2)
    for name, metric in brain.metrics.items():
        with open(os.path.join(folder, f"test_{name}.txt"), "w", encoding="utf-8") as f:
            metric.write_stats(f)


def label_encoder_file(folder, head):
    """Where `label_pipelines` keeps the label encoder of `head`."""
    return os.path.join(folder, f"{head}_encoder.txt")


@sb.utils.distributed.main_process_only
def export_inference(brain, hparams, tokenizer=None):
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
        tokenizer=tokenizer,
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


def setup_experiment(argv=None):
    """Parse `train.py hparams.yaml [--key value ...]`, load the YAML (merged into its
    base, see `merge_base_hparams`) with the overrides and create the experiment
    folder; returns (hparams, run_opts)."""
    hparams_file, run_opts, overrides = sb.parse_arguments(argv or sys.argv[1:])
    sb.utils.distributed.ddp_init_group(run_opts)  # torchrun: one process per device
    merged = merge_base_hparams(hparams_file)
    with open(hparams_file, encoding="utf-8") as f:
        hparams = load_hyperpyyaml(f if merged is None else merged, overrides)
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
    )
    return hparams, run_opts


def main(prepare, dataset_items, argv=None):
    """`python train.py hparams/<file>.yaml [--key value ...]` for one speech recipe.

    prepare: the corpus prepare function (data_folder, save_folder, skip_prep,
    sample_rate, plus the YAML's `prepare_options` if any) writing
    `<manifest_folder>/{train,dev,test}.csv`.
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
            **(hparams.get("prepare_options") or {}),  # corpus-specific prepare options
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
            "feature_extractor": hparams.get("feature_extractor"),
            "sample_rate": hparams["sample_rate"],
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
        hparams.get("bad_data", "skip"),
        hparams.get("min_duration", 0.0),
    )
    return run(hparams, run_opts, datasets)
