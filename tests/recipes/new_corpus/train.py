#!/usr/bin/env python3
"""Example of a new corpus on the speech classification recipe: nothing in
`speechbrain_cald` changes, the corpus brings its prepare function and a YAML that
names the VoxCeleb1 SID YAML as its base.

    python train.py hparams/wav2vec2_cald.yaml --data_folder /path/to/corpus [--mode target]
"""

from folders_prepare import prepare_folders

from speechbrain_cald import experiment, speech_data

if __name__ == "__main__":
    experiment.main(prepare_folders, speech_data.classification_datasets)
