"""Text data pipelines of the recipes: JSON manifests (text may hold any character,
which SpeechBrain's CSV reader would substitute) -> `DynamicItemDataset`s of token
ids. The tokenizer is the source model's (the YAML's `tokenizer`); where a corpus
has no labelled test set (GLUE), its prepare step writes dev as test.
`TextTokenizer` is the tokenizer of exported inference folders.
"""

import json
import os

import speechbrain as sb
import tokenizers
import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks

from speechbrain_cald.dataprep import Screening, file_error, manifest_paths


def write_manifest(path, rows):
    """`{id: row}` as JSON (one manifest per split)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(rows, f, ensure_ascii=False)


def _row_problem(row, required):
    """What is wrong with one JSON manifest row, or None: it must be an object whose
    `required` keys hold a non-blank string, a non-empty list, or a number."""
    if not isinstance(row, dict):
        return f"a {type(row).__name__}, not an object"
    for key in required:
        value = row.get(key)
        if value is None or (isinstance(value, (str, list)) and not str(value).strip()):
            return f"{key!r} is missing or empty"
        if isinstance(value, list) and not value:
            return f"{key!r} is an empty list"
    return None


def load_datasets(hparams, items, output_keys, required=()):
    """`{split: DynamicItemDataset}` from `<manifest_folder>/<split>.json`, every row
    screened first: the `required` keys present and not empty. Bad rows are handled
    as in the speech manifests (`dataprep.Screening` under the YAML's `bad_data`:
    "skip" drops and counts them, "error" stops at the first, naming file and row)."""
    datasets = {}
    for split, path in manifest_paths(hparams, "json").items():
        with open(path, encoding="utf-8") as f:
            rows = json.load(f)
        if not isinstance(rows, dict):
            raise file_error(path, "a manifest is one JSON object {id: row}")
        screening = Screening(path, hparams.get("bad_data", "skip"))
        kept = {}
        for number, (row_id, row) in enumerate(rows.items(), start=1):
            problem = _row_problem(row, required)
            if problem:
                screening.bad(f"row {number}", row_id, "fields", problem)
            else:
                kept[row_id] = row
        screening.finish(len(kept))
        datasets[split] = DynamicItemDataset(kept, items, output_keys)
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


@register_checkpoint_hooks
class TextTokenizer:
    """A `tokenizers.Tokenizer` (tokenizer.json) that the Pretrainer can load.

    encode(texts) -> (ids (batch, tokens) right-padded with `pad_id`, relative lengths);
    encode_prompts(texts) -> (ids left-padded, 0/1 mask): prompts for generation.
    """

    def __init__(self, pad_id=0, tokenizer=None):
        self.pad_id = pad_id
        self.tokenizer = tokenizer

    def _ids(self, texts):
        return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

    def encode(self, texts):
        seqs = self._ids(texts)
        longest = max(len(seq) for seq in seqs)
        ids = torch.tensor([seq + [self.pad_id] * (longest - len(seq)) for seq in seqs])
        return ids, torch.tensor([len(seq) / longest for seq in seqs])

    def encode_prompts(self, texts):
        seqs = self._ids(texts)
        longest = max(len(seq) for seq in seqs)
        ids = torch.tensor([[self.pad_id] * (longest - len(seq)) + seq for seq in seqs])
        mask = torch.tensor([[0] * (longest - len(seq)) + [1] * len(seq) for seq in seqs])
        return ids, mask

    def decode(self, ids):
        return self.tokenizer.decode(list(ids))

    @mark_as_saver
    def save(self, path):
        self.tokenizer.save(str(path))

    @mark_as_loader
    def load(self, path, end_of_epoch=False):
        self.tokenizer = tokenizers.Tokenizer.from_file(str(path))
