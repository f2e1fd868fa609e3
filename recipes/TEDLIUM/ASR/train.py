#!/usr/bin/env python3
"""TED-LIUM 3 CTC speech recognition (characters, greedy decoding) with Wav2Vec2 / CALD.

    python train.py hparams/wav2vec2_cald.yaml --data_folder /path/to/TEDLIUM_release-3

The flow (prepare, datasets, fit, test, export) is speechbrain_cald.experiment.main;
this file names the corpus: its prepare function (transcripts in the column `wrd`).
"""

from tedlium_prepare import prepare_tedlium

from speechbrain_cald import experiment, speech_data

if __name__ == "__main__":
    experiment.main(prepare_tedlium, speech_data.ctc_datasets)  # transcripts: `wrd`
