#!/usr/bin/env python3
"""SLURP intent classification (scenario + action heads) with Wav2Vec2 / CALD.

    python train.py hparams/wav2vec2_cald.yaml --data_folder /path/to/slurp [--mode target]

The flow (prepare, datasets, fit, test, export) is speechbrain_cald.experiment.main;
this file names the corpus: its prepare function and the label heads
(`label_columns` in the YAML).
"""

from slurp_prepare import prepare_slurp

from speechbrain_cald import experiment, speech_data

if __name__ == "__main__":
    experiment.main(prepare_slurp, speech_data.classification_datasets)
