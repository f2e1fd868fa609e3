#!/usr/bin/env python3
"""FSDD digit strings: CTC speech recognition (characters) with a pretrained speech
transformer (Whisper's encoder) and its CALD conversion to bidirectional Mamba2.

    python train_asr.py hparams/whisper_asr.yaml --data_folder /path/to/fsdd \\
        --source_hub /path/to/whisper-tiny.en [--mode target]

The flow (prepare, datasets, fit, test, export) is speechbrain_cald.experiment.main;
the corpus is generated from FSDD by `fsdd_prepare.prepare_fsdd_digit_strings`.
"""

from fsdd_prepare import prepare_fsdd_digit_strings

from speechbrain_cald import experiment, speech_data

if __name__ == "__main__":
    experiment.main(prepare_fsdd_digit_strings, speech_data.ctc_datasets)  # transcripts: `wrd`
