#!/usr/bin/env python3
"""FSDD speaker identification or digit recognition with Wav2Vec2 / CALD.

    python train.py hparams/wav2vec2_cald.yaml --data_folder /path/to/fsdd [--mode target]

The flow (prepare, datasets, fit, test, export) is speechbrain_cald.experiment.main;
this file names the corpus: its prepare function and the label head
(`label_columns` in the YAML). workflow.py chains the runs of the whole workflow.
"""

from fsdd_prepare import prepare_fsdd

from speechbrain_cald import experiment, speech_data

if __name__ == "__main__":
    experiment.main(prepare_fsdd, speech_data.classification_datasets)
