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
    check_layout,
    file_error,
    iter_lines,
    run_prep,
)

logger = logging.getLogger(__name__)

SPLIT_NAMES = {"1": "train", "2": "dev", "3": "test"}
LAYOUT = """  <data_folder>/wav/<spk>/<video>/<utt>.wav
  <data_folder>/iden_split.txt   (lines: <1|2|3> <spk>/<video>/<utt>.wav)"""
SPLIT_FILE = "iden_split.txt"


def wav_roots(data_folder):
    """The folders holding `<spk>/<video>/<utt>.wav` (`wav/`, or the two archives' `wav/`)."""
    flat = os.path.join(data_folder, "wav")
    if os.path.isdir(flat):
        return [flat]
    parts = [os.path.join(data_folder, d, "wav") for d in ("vox1_dev_wav", "vox1_test_wav")]
    return [p for p in parts if os.path.isdir(p)]


def read_split_file(path, roots, sample_rate):
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
        duration, _, _ = audio_info(wav, expected_sr=sample_rate)
        spk = rel.split("/")[0]
        utt_id = os.path.splitext(rel)[0].replace("/", "--")
        splits[SPLIT_NAMES[fields[0]]].append(
            {"ID": utt_id, "duration": duration, "wav": wav, "spk_id": spk}
        )
    return splits


def prepare_voxceleb1(data_folder, save_folder, skip_prep=False, sample_rate=16000):
    """Prepare VoxCeleb1 identification manifests `train.csv`, `dev.csv`, `test.csv`.

    Arguments
    ---------
    data_folder : str
        VoxCeleb1 root (holding `wav/` and `iden_split.txt`).
    save_folder : str
        Where the manifests (and the options record) go.
    skip_prep : bool
        If True, do nothing.
    sample_rate : int
        Expected sample rate of every file (a mismatch is an error).

    Returns
    -------
    dict mapping split -> manifest path.
    """
    data_folder = os.path.abspath(data_folder)
    if not skip_prep:
        check_layout(data_folder, [SPLIT_FILE], "VoxCeleb1", LAYOUT)
        if not wav_roots(data_folder):
            raise DataPrepError(
                f"VoxCeleb1 data folder {data_folder} is missing: "
                f"{os.path.join(data_folder, 'wav')}\nExpected layout:\n{LAYOUT}"
            )
    options = {"data_folder": data_folder, "sample_rate": sample_rate}

    def build():
        roots = wav_roots(data_folder)
        return read_split_file(os.path.join(data_folder, SPLIT_FILE), roots, sample_rate)

    return run_prep("voxceleb1", save_folder, options, build, skip_prep=skip_prep)
