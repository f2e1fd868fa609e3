#!/usr/bin/env python3
"""GLUE (SST-2, QNLI, QQP) and IMDB classification: RoBERTa fine-tuning (std) and
its CALD conversion to Linformer (every other mode).

    python train.py hparams/roberta_linformer.yaml --task_name sst2 \
        --data_folder /path/to/glue/SST-2 [--mode target]

The flow (prepare, datasets, fit, test, export) is speechbrain_cald.text.main; this
file names the corpus: its prepare step and the tokenized text columns.
"""

from glue_prepare import prepare_glue, text_columns

from speechbrain_cald import text


def prepare(hparams, tokenizer):
    """GLUE / IMDB manifests (the tokenizer is applied on the fly)."""
    del tokenizer
    prepare_glue(
        hparams["data_folder"],
        hparams["manifest_folder"],
        hparams["task_name"],
        hparams["skip_prep"],
    )


def dataset_items(hparams, tokenizer):
    """Tokens of text_a (+ text_b for sentence pairs) and the label."""
    columns = text_columns(hparams["task_name"])
    items = [text.token_pipeline(tokenizer, columns, hparams["max_len"])]
    return items, ["id", "tokens", "label"]


if __name__ == "__main__":
    text.main(prepare, dataset_items)
