#!/usr/bin/env python3
"""Causal LM on Pile-style text shards: Pythia (GPT-NeoX) fine-tuning (std) and its
CALD conversion to Mamba (every other mode).

    python train.py hparams/pythia_mamba.yaml --data_folder /path/to/pile [--mode target]

The flow (prepare, datasets, fit, test = held-out perplexity, export) is
speechbrain_cald.text.main; this file names the corpus: its token-row prepare step.
"""

import torch
from pile_prepare import prepare_pile
from speechbrain.utils.data_pipeline import provides, takes

from speechbrain_cald import text


def prepare(hparams, tokenizer):
    """Token-row manifests of the train and held-out shards."""
    prepare_pile(
        hparams["data_folder"],
        hparams["manifest_folder"],
        tokenizer,
        hparams["seq_len"],
        hparams["train_shards"],
        hparams["valid_shards"],
        hparams["skip_prep"],
    )


@takes("ids")
@provides("tokens")
def row_tokens(ids):
    """A stored row of token ids as a tensor."""
    return torch.LongTensor(ids)


def dataset_items(hparams, tokenizer):
    """Rows are tokenized already."""
    del hparams, tokenizer
    return [row_tokens], ["id", "tokens"]


if __name__ == "__main__":
    text.main(prepare, dataset_items)
