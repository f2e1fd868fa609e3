"""Data preparation for the Free Spoken Digit Dataset (FSDD).

Reads the upstream layout

    <data_folder>/recordings/{digit}_{speaker}_{index}.wav   (8 kHz mono)

and writes `train.csv`, `dev.csv` and `test.csv` with the columns
`ID,duration,wav,digit,speaker,index`. One file gives one row; the audio is
resampled to the model's rate by the recipe's audio pipeline, not here.

Splits are by recording index, the same for every digit and speaker:

- test: the official test split, indices 0-4, when any of them is present;
  otherwise (e.g. the copy in ../shared/data/fsdd, which ships indices 5-49 only)
  the `heldout_indices` lowest indices present are carved out as test;
- dev: the next `heldout_indices` lowest indices not in test (model selection);
- train: every other index, optionally cut to at most `max_train_per_class`
  recordings per value of `limit_column` (taken index-major, so that e.g. a
  speaker keeps the same number of recordings of every digit).

`prepare_fsdd_digit_strings` builds an ASR corpus from the same splits: each
utterance concatenates `digits` (default 3-5) recordings of one speaker, all from
that split's indices, with random silent gaps of up to `max_gap` (default 0.2 s),
its transcript the digit words ("three one four"). The generator has a fixed seed
and reads the recordings in a fixed order, so the corpus is the same on every
machine that holds the same files.

Example
-------
>>> prepare_fsdd("fsdd", "results/fsdd/manifests")  # doctest: +SKIP
"""

import logging
import os
import re
from collections import Counter, defaultdict

import numpy as np

from speechbrain_cald.dataprep import (
    audio_info,
    check_layout,
    file_error,
    read_audio,
    run_prep,
    write_audio,
)

logger = logging.getLogger(__name__)

LAYOUT = "  <data_folder>/recordings/{digit}_{speaker}_{index}.wav"
FILE_PATTERN = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")
OFFICIAL_TEST = frozenset(range(5))
LABEL_COLUMNS = ("digit", "speaker")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def list_recordings(data_folder):
    """Rows `{ID, duration, wav, digit, speaker, index}` of every recording, sorted by
    (index, digit, speaker); a .wav file not named `{digit}_{speaker}_{index}.wav` is
    an error naming it."""
    folder = os.path.join(data_folder, "recordings")
    rows = []
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".wav"):
            continue
        match = FILE_PATTERN.match(name)
        if match is None:
            raise file_error(os.path.join(folder, name), "not named {digit}_{speaker}_{index}.wav")
        digit, speaker, index = match.groups()
        wav = os.path.join(folder, name)
        duration, _, _ = audio_info(wav)
        rows.append(
            {
                "ID": name[: -len(".wav")],
                "duration": duration,
                "wav": wav,
                "digit": digit,
                "speaker": speaker,
                "index": int(index),
            }
        )
    rows.sort(key=lambda r: (r["index"], r["digit"], r["speaker"]))
    return rows


def split_indices(indices, heldout_indices=5):
    """(test, dev) sets of recording indices for the available `indices`.

    test = the official 0-4 when any of them is present, else the `heldout_indices`
    lowest available; dev = the `heldout_indices` lowest of the rest. Train is what
    remains, and must not be empty.
    """
    indices = sorted(set(indices))
    official = OFFICIAL_TEST.intersection(indices)
    test = official or set(indices[:heldout_indices])
    rest = [i for i in indices if i not in test]
    dev = set(rest[:heldout_indices])
    if len(rest) <= heldout_indices:
        raise ValueError(
            f"FSDD: recording indices {indices} leave no training index after "
            f"{heldout_indices} test and {heldout_indices} dev indices"
        )
    return test, dev


def limit_per_class(rows, column, limit):
    """The first `limit` rows of each value of `column` (rows keep their order)."""
    if limit is None:
        return rows
    seen = Counter()
    kept = []
    for row in rows:
        if seen[row[column]] < limit:
            seen[row[column]] += 1
            kept.append(row)
    return kept


def prepare_fsdd(
    data_folder,
    save_folder,
    skip_prep=False,
    sample_rate=16000,
    heldout_indices=5,
    max_train_per_class=None,
    limit_column="speaker",
):
    """Prepare FSDD manifests `train.csv`, `dev.csv`, `test.csv` (see the module doc).

    Arguments
    ---------
    data_folder : str
        FSDD root holding `recordings/`.
    save_folder : str
        Where the manifests (and the options record) go.
    skip_prep : bool
        If True, do nothing.
    sample_rate : int
        The model's rate; recorded only (the 8 kHz files are resampled on loading).
    heldout_indices : int
        Number of recording indices carved out for dev (and for test when the
        official test indices 0-4 are absent).
    max_train_per_class : int or None
        Keep at most this many training recordings per value of `limit_column`.
    limit_column : str
        "speaker" or "digit": the class the training limit counts.

    Returns
    -------
    dict mapping split -> manifest path.
    """
    data_folder = os.path.abspath(data_folder)
    if limit_column not in LABEL_COLUMNS:
        raise ValueError(f"limit_column must be one of {LABEL_COLUMNS}, not {limit_column!r}")
    if not skip_prep:
        check_layout(data_folder, ["recordings"], "FSDD", LAYOUT)
    options = {
        "data_folder": data_folder,
        "sample_rate": sample_rate,
        "heldout_indices": heldout_indices,
        "max_train_per_class": max_train_per_class,
        "limit_column": limit_column,
    }

    def build():
        splits = split_rows(data_folder, heldout_indices)
        splits["train"] = limit_per_class(splits["train"], limit_column, max_train_per_class)
        return splits

    return run_prep("fsdd", save_folder, options, build, skip_prep=skip_prep)


def split_rows(data_folder, heldout_indices):
    """{split: rows} of every recording, split by recording index (`split_indices`)."""
    rows = list_recordings(data_folder)
    if not rows:
        raise file_error(os.path.join(data_folder, "recordings"), "no .wav recordings")
    test, dev = split_indices([r["index"] for r in rows], heldout_indices)
    logger.info("FSDD: test indices %s, dev indices %s", sorted(test), sorted(dev))
    return {
        "train": [r for r in rows if r["index"] not in test | dev],
        "dev": [r for r in rows if r["index"] in dev],
        "test": [r for r in rows if r["index"] in test],
    }


def digit_strings(rows, count, out_dir, split, rng, digits=(3, 5), max_gap=0.2, sample_rate=8000):
    """`count` utterances of `digits[0]`-`digits[1]` recordings of one speaker (speakers
    in turn), joined by silent gaps of 0-`max_gap` s, written to `out_dir`; returns
    their manifest rows (`ID,duration,wav,wrd,speaker,recordings`: the IDs of the
    recordings joined)."""
    by_speaker = defaultdict(list)
    for row in rows:
        by_speaker[row["speaker"]].append(row)
    speakers = sorted(by_speaker)
    manifest = []
    for n in range(count):
        speaker = speakers[n % len(speakers)]
        clips = [
            by_speaker[speaker][i]
            for i in rng.integers(
                len(by_speaker[speaker]), size=rng.integers(digits[0], digits[1] + 1)
            )
        ]
        pieces = []
        for i, clip in enumerate(clips):
            if i:
                pieces.append(np.zeros(int(rng.uniform(0.0, max_gap) * sample_rate), np.float32))
            pieces.append(read_audio(clip["wav"], sample_rate))
        signal = np.concatenate(pieces)
        uid = f"{split}_{n:05d}_{speaker}"
        wav = os.path.join(out_dir, split, f"{uid}.wav")
        write_audio(wav, signal, sample_rate)
        words = " ".join(DIGIT_WORDS[int(clip["digit"])] for clip in clips)
        manifest.append(
            {
                "ID": uid,
                "duration": len(signal) / sample_rate,
                "wav": wav,
                "wrd": words,
                "speaker": speaker,
                "recordings": " ".join(clip["ID"] for clip in clips),
            }
        )
    return manifest


def prepare_fsdd_digit_strings(
    data_folder,
    save_folder,
    skip_prep=False,
    sample_rate=16000,
    heldout_indices=5,
    utterances=(600, 60, 120),
    digits=(3, 5),
    max_gap=0.2,
    seed=0,
):
    """Prepare an FSDD digit-string ASR corpus (see the module doc) in `save_folder`:
    the wavs in `<save_folder>/digit_strings/<split>/` and `train.csv`, `dev.csv`,
    `test.csv` (`ID,duration,wav,wrd,speaker,recordings`); `utterances` = (train, dev, test)
    counts; `sample_rate` is recorded only (the audio pipeline resamples).
    Returns `{split: manifest path}`."""
    data_folder = os.path.abspath(data_folder)
    if not skip_prep:
        check_layout(data_folder, ["recordings"], "FSDD", LAYOUT)
    options = {
        "data_folder": data_folder,
        "sample_rate": sample_rate,
        "heldout_indices": heldout_indices,
        "utterances": list(utterances),
        "digits": list(digits),
        "max_gap": max_gap,
        "seed": seed,
    }

    def build():
        rng = np.random.default_rng(seed)
        out_dir = os.path.join(save_folder, "digit_strings")
        splits = split_rows(data_folder, heldout_indices)
        return {
            split: digit_strings(rows, count, out_dir, split, rng, tuple(digits), max_gap)
            for (split, rows), count in zip(splits.items(), utterances)
        }

    return run_prep("fsdd_digit_strings", save_folder, options, build, skip_prep=skip_prep)
