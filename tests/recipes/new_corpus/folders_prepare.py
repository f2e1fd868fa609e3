"""Data preparation of the example new corpus: one folder per label.

    <data_folder>/{train,dev,test}/<label>/<utt>.wav

writes `train.csv`, `dev.csv`, `test.csv` with the columns `ID,duration,wav,label`:
the columns an utterance-classification recipe reads (`label_columns` in the YAML
maps each head to one of them). This is the first of the three things a new corpus
needs (see "Extending to a new corpus" in recipes/VoxCeleb1/SID/README.md); the
shared helpers of `speechbrain_cald.dataprep` do the checks and the writing.
"""

import glob
import os

from speechbrain_cald.dataprep import DataPrepError, audio_info, prepare_splits

SPLITS = ("train", "dev", "test")
LAYOUT = "  <data_folder>/{train,dev,test}/<label>/<utt>.wav"


def read_split(folder):
    """Manifest rows of one split folder; an empty split is an error naming it."""
    wavs = sorted(glob.glob(os.path.join(folder, "*", "*.wav")))
    if not wavs:
        raise DataPrepError(f"{folder}: no <label>/<utt>.wav files\nExpected layout:\n{LAYOUT}")
    rows = []
    for wav in wavs:
        duration, _, _ = audio_info(wav)  # any rate: the audio pipeline resamples
        label = os.path.basename(os.path.dirname(wav))
        utt_id = f"{label}--{os.path.splitext(os.path.basename(wav))[0]}"
        rows.append({"ID": utt_id, "duration": duration, "wav": wav, "label": label})
    return rows


def read_splits(data_folder):
    """`{split: rows}` of the corpus (the `prepare_splits` build step)."""
    return {split: read_split(os.path.join(data_folder, split)) for split in SPLITS}


def prepare_folders(data_folder, save_folder, skip_prep=False, sample_rate=16000):
    """Write the manifests of a labelled-folder corpus (the `experiment.main` prepare
    signature); returns `{split: csv path}`."""
    return prepare_splits(
        "Folders", data_folder, save_folder, read_splits, SPLITS, LAYOUT, skip_prep, sample_rate
    )
