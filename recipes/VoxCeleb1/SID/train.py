#!/usr/bin/env python3
"""VoxCeleb1 speaker identification (1251 speakers) with Wav2Vec2 / CALD.

    python train.py hparams/wav2vec2_cald.yaml --data_folder /path/to/VoxCeleb1 [--mode target]

The flow (prepare, datasets, fit, test, export) is speechbrain_cald.experiment.main;
this file names the corpus: its prepare function and the speaker head
(`label_columns` in the YAML).
"""

from voxceleb1_prepare import prepare_voxceleb1

from speechbrain_cald import experiment, speech_data

if __name__ == "__main__":
    experiment.main(prepare_voxceleb1, speech_data.classification_datasets)
