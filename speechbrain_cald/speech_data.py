"""Speech data pipelines of the recipes: manifests (SpeechBrain CSV, screened row by
row) -> `DynamicItemDataset`s of waveforms and labels / characters.

A recipe's `train.py` builds its datasets from these (`classification_datasets`, or
`load_datasets` with its own items) and hands them to `experiment.main`.
"""

import logging
import os

import speechbrain as sb
import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.utils.data_pipeline import DynamicItem

from speechbrain_cald import dataprep
from speechbrain_cald.audio import read_audio
from speechbrain_cald.dataprep import SPLITS, manifest_paths

logger = logging.getLogger(__name__)


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
        encoder.ignore_len()  # its size is checked against the head's right below
        if len(encoder) > num_classes[head]:
            raise ValueError(
                f"{len(encoder)} {head} labels in {train_csv}, but the head has "
                f"{num_classes[head]} outputs"
            )
        item = DynamicItem([f"{head}_label"], encoder.encode_label, [head])
        item.row_check = dataprep.label_row_check(column, list(encoder.lab2ind))
        items.append(item)
    return items


def label_encoder_file(folder, head):
    """Where `label_pipelines` keeps the label encoder of `head`."""
    return os.path.join(folder, f"{head}_encoder.txt")


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


def load_manifests(
    manifests,
    items,
    output_keys,
    label_columns=None,
    max_duration=None,
    bad_data="skip",
    min_duration=0.0,
    read_samples=True,
    skipped=None,
):
    """`{split: DynamicItemDataset}` from the prepare step's `{split: csv}`.

    items: dynamic items (functions or `add_dynamic_item` dicts). Label columns are
    renamed `<head>_label` so the encoded label can take the head's name. Training
    utterances longer than `max_duration` seconds are dropped (counted in the log);
    dev and test are sorted by duration (evaluation batches of similar lengths).
    Before that, every row is screened (`dataprep.load_manifest`): missing fields,
    unreadable / empty / shorter than `min_duration` / silent or damaged
    (`read_samples`) audio, a duration that disagrees with the file, and the items'
    `row_check`s (characters outside the vocabulary or an empty transcript, labels
    unseen in training); `bad_data` = "skip" drops such rows with counted warnings
    (added to `skipped` {problem: count} when given), "error" stops naming the file,
    line and ID.
    """
    checks = [dataprep.audio_row_check(min_duration, read_samples=read_samples)]
    checks += [item.row_check for item in items if hasattr(item, "row_check")]
    datasets = {}
    for split in SPLITS:
        data = dataprep.load_manifest(manifests[split], checks, bad_data, skipped)
        for row in data.values():
            for head, column in (label_columns or {}).items():
                row[f"{head}_label"] = row.pop(column)
        dataset = DynamicItemDataset(data, items, output_keys)
        if split == "train" and max_duration:
            dataset = dataset.filtered_sorted(key_max_value={"duration": max_duration})
            if not len(dataset):
                raise ValueError(
                    f"{manifests[split]}: all {len(data)} usable training utterances are longer "
                    f"than max_duration {max_duration} s; raise max_duration"
                )
            if len(dataset) < len(data):
                logger.info(
                    "%s: %d of %d training utterances are over max_duration %g s: not used",
                    manifests[split],
                    len(data) - len(dataset),
                    len(data),
                    max_duration,
                )
        elif split != "train":  # evaluation batches of similar lengths: little padding
            dataset = dataset.filtered_sorted(sort_key="duration")
        datasets[split] = dataset
    return datasets


def load_datasets(hparams, items, output_keys):
    """`load_manifests` of the prepared CSVs with the YAML's settings (`label_columns`,
    `max_duration`, `bad_data`, `min_duration`)."""
    return load_manifests(
        manifest_paths(hparams),
        items,
        output_keys,
        hparams.get("label_columns"),
        hparams.get("max_duration"),
        hparams.get("bad_data", "skip"),
        hparams.get("min_duration", 0.0),
        hparams.get("screen_samples", True),
    )


def classification_datasets(hparams):
    """The datasets of an utterance-classification recipe: waveforms and one label per
    head (`label_columns`, `num_classes` from the YAML; encoders built from train)."""
    labels = label_pipelines(
        hparams["label_columns"],
        manifest_paths(hparams)["train"],
        hparams["save_folder"],
        hparams["num_classes"],
    )
    items = [audio_pipeline(hparams["sample_rate"]), *labels]
    return load_datasets(hparams, items, ["id", "sig", *hparams["label_columns"]])


def ctc_datasets(hparams, column="wrd"):
    """The datasets of a CTC recipe: waveforms and the characters of the transcript
    `column` in the task's vocabulary (`unk_token` for the rest, screened out first)."""
    task = hparams["task"]
    text = char_pipeline(task.vocab, column, task.word_delimiter, hparams["unk_token"])
    items = [audio_pipeline(hparams["sample_rate"]), text]
    return load_datasets(hparams, items, ["id", "sig", "words", "tokens"])
