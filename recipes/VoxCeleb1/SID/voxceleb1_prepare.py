"""Data preparation for VoxCeleb1 speaker identification.

Reads the official layout

    <data_folder>/wav/<spk>/<video>/<utt>.wav
    <data_folder>/iden_split.txt     (lines `<1|2|3> <spk>/<video>/<utt>.wav`)

(the two archives `vox1_dev_wav/wav` and `vox1_test_wav/wav` extracted side by
side are accepted in place of `wav/`) and writes `train.csv` (1), `dev.csv` (2)
and `test.csv` (3) with the columns `ID,duration,wav,spk_id`.

Example
-------
>>> from speechbrain.utils.distributed import run_on_main
>>> run_on_main(prepare_voxceleb1, kwargs={"data_folder": "VoxCeleb1",
...     "save_folder": "results/voxceleb1"})  # doctest: +SKIP
"""

import logging
import os

from speechbrain_cald.dataprep import (
    DataPrepError,
    audio_info,
    file_error,
    iter_lines,
    prepare_splits,
)

logger = logging.getLogger(__name__)

SPLIT_NAMES = {"1": "train", "2": "dev", "3": "test"}
LAYOUT = """  <data_folder>/wav/<spk>/<video>/<utt>.wav
  <data_folder>/iden_split.txt   (lines: <1|2|3> <spk>/<video>/<utt>.wav)"""
SPLIT_FILE = "iden_split.txt"


def wav_roots(data_folder):
    """The folders holding `<spk>/<video>/<utt>.wav` (`wav/`, or the two archives' `wav/`);
    raises `DataPrepError` when there is none."""
    flat = os.path.join(data_folder, "wav")
    if os.path.isdir(flat):
        return [flat]
    parts = [os.path.join(data_folder, d, "wav") for d in ("vox1_dev_wav", "vox1_test_wav")]
    roots = [p for p in parts if os.path.isdir(p)]
    if not roots:
        raise DataPrepError(
            f"VoxCeleb1 data folder {data_folder} is missing: {flat}\nExpected layout:\n{LAYOUT}"
        )
    return roots


def read_split_file(path, roots):
    """`{split: rows}` from `iden_split.txt`; errors name the line or the missing file."""
    splits = {name: [] for name in SPLIT_NAMES.values()}
    for number, line in iter_lines(path):
        fields = line.split()
        if len(fields) != 2 or fields[0] not in SPLIT_NAMES or fields[1].count("/") != 2:
            raise file_error(
                path,
                f"malformed split line (expected '<1|2|3> spk/video/utt.wav'): {line!r}",
                number,
            )
        rel = fields[1]
        candidates = [os.path.join(root, rel) for root in roots]
        wav = next((c for c in candidates if os.path.isfile(c)), candidates[0])
        if not os.path.isfile(wav):
            raise file_error(path, f"listed file not found: {wav}", number)
        duration, _, _ = audio_info(wav)  # any rate: the audio pipeline resamples
        spk = rel.split("/")[0]
        utt_id = os.path.splitext(rel)[0].replace("/", "--")
        splits[SPLIT_NAMES[fields[0]]].append(
            {"ID": utt_id, "duration": duration, "wav": wav, "spk_id": spk}
        )
    return splits


def read_splits(data_folder):
    """`{split: rows}` of the corpus (the `prepare_splits` build step)."""
    roots = wav_roots(data_folder)
    return read_split_file(os.path.join(data_folder, SPLIT_FILE), roots)


def prepare_voxceleb1(data_folder, save_folder, skip_prep=False, sample_rate=16000):
    """Prepare VoxCeleb1 identification manifests `train.csv`, `dev.csv`, `test.csv`
    in `save_folder` from the VoxCeleb1 root `data_folder` (holding `wav/` and
    `iden_split.txt`); files at any rate are resampled to `sample_rate` when read
    (recorded only here). Nothing is done with `skip_prep`. Returns `{split: manifest path}`.
    """
    return prepare_splits(
        "VoxCeleb1",
        data_folder,
        save_folder,
        read_splits,
        [SPLIT_FILE],
        LAYOUT,
        skip_prep,
        sample_rate,
    )
