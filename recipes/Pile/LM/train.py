#!/usr/bin/env python3
"""Causal LM on Pile-style text shards: Pythia (GPT-NeoX) fine-tuning (std) and its
CALD conversion to Mamba (every other mode).

    python train.py hparams/pythia_mamba.yaml --data_folder /path/to/pile [--mode target]

The flow (prepare, datasets, fit, test = held-out perplexity, export) is
speechbrain_cald.experiment.main; this file names the corpus: its token-row manifests.
"""

import torch
from pile_prepare import prepare_pile
from speechbrain.utils.data_pipeline import provides, takes

from speechbrain_cald import experiment, text_data


@takes("ids")
@provides("tokens")
def row_tokens(ids):
    """A stored row of token ids as a tensor."""
    return torch.LongTensor(ids)


def datasets(hparams):
    """Rows are tokenized already (by the prepare step)."""
    return text_data.load_datasets(hparams, [row_tokens], ["id", "tokens"], ["ids"])


if __name__ == "__main__":
    experiment.main(prepare_pile, datasets)
