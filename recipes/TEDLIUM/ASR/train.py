#!/usr/bin/env python3
"""TED-LIUM 3 CTC speech recognition (characters, greedy decoding) with Wav2Vec2 / CALD.

    python train.py hparams/wav2vec2_cald.yaml --data_folder /path/to/TEDLIUM_release-3

The flow (prepare, datasets, fit, test, export) is speechbrain_cald.recipe.main;
this file names the corpus: its prepare function and the transcript column `wrd`.
"""

from tedlium_prepare import prepare_tedlium

from speechbrain_cald import recipe


def dataset_items(hparams, manifests):
    """Audio + characters of the `wrd` transcripts (the task's vocabulary)."""
    task = hparams["task"]
    text = recipe.char_pipeline(task.vocab, "wrd", task.word_delimiter, hparams["unk_token"])
    return [recipe.audio_pipeline(hparams["sample_rate"]), text], ["id", "sig", "words", "tokens"]


if __name__ == "__main__":
    recipe.main(prepare_tedlium, dataset_items)
