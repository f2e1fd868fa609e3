#!/usr/bin/env python3
"""TED-LIUM 3 CTC speech recognition (characters, greedy decoding) with Wav2Vec2 / CALD.

    python train.py hparams/wav2vec2_cald.yaml --data_folder /path/to/TEDLIUM_release-3

The flow (prepare, datasets, fit, test, export) is speechbrain_cald.experiment.main;
this file names the corpus: its prepare function and the transcript column `wrd`.
"""

from tedlium_prepare import prepare_tedlium

from speechbrain_cald import experiment, speech_data


def datasets(hparams):
    """Audio + characters of the `wrd` transcripts (the task's vocabulary)."""
    task = hparams["task"]
    text = speech_data.char_pipeline(task.vocab, "wrd", task.word_delimiter, hparams["unk_token"])
    items = [speech_data.audio_pipeline(hparams["sample_rate"]), text]
    return speech_data.load_datasets(hparams, items, ["id", "sig", "words", "tokens"])


if __name__ == "__main__":
    experiment.main(prepare_tedlium, datasets)
