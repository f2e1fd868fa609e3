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

from speechbrain_cald.dataprep import manifest_paths


def write_manifest(path, rows):
    """`{id: row}` as JSON (one manifest per split)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(rows, f, ensure_ascii=False)


def load_datasets(hparams, items, output_keys):
    """`{split: DynamicItemDataset}` from `<manifest_folder>/<split>.json`."""
    datasets = {}
    for split, path in manifest_paths(hparams, "json").items():
        with open(path, encoding="utf-8") as f:
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
