#!/usr/bin/env python3
"""GLUE (SST-2, QNLI, QQP) and IMDB classification: RoBERTa fine-tuning (std) and
its CALD conversion to Linformer (every other mode).

    python train.py hparams/roberta_linformer.yaml --task_name sst2 \
        --data_folder /path/to/glue/SST-2 [--mode target]

The flow (prepare, datasets, fit, test, export) is speechbrain_cald.experiment.main;
this file names the corpus: its prepare step and the tokenized text columns.
"""

from glue_prepare import prepare_glue, text_columns

from speechbrain_cald import experiment, text_data


def datasets(hparams):
    """Tokens of text_a (+ text_b for sentence pairs, tokenized on the fly) and the label."""
    columns = text_columns(hparams["task_name"])
    items = [text_data.token_pipeline(hparams["tokenizer"], columns, hparams["max_len"])]
    return text_data.load_datasets(hparams, items, ["id", "tokens", "label"], [*columns, "label"])


if __name__ == "__main__":
    experiment.main(prepare_glue, datasets)
