"""Shared helpers for the `<corpus>_prepare.py` scripts of the speech recipes.

Nothing here knows a corpus: the prepare scripts parse their own layouts and hand
rows to these helpers, which

- check a data folder's layout and name what is missing (`check_layout`);
- check audio files (readable by soundfile, non-empty, sample rate, duration) and
  read / resample / write audio (`audio_info`, `read_audio`, `resample`, `write_audio`);
- write SpeechBrain CSV manifests (`ID,duration,wav,...`) atomically;
- skip a preparation whose manifests already exist and are complete, using a small
  JSON file next to the manifests that records the options and the row counts
  (`run_prep` ties the steps together for all three recipes).

Every data problem raises `DataPrepError`, whose message names the file (and the
line, for text files). Audio I/O goes through soundfile only (torchaudio's I/O is
unavailable here), and this module imports neither torch nor speechbrain at load
time, so a prepare step stays cheap.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from math import gcd

import numpy as np
import soundfile as sf

logger = logging.getLogger(__name__)

MANIFEST_HEAD = ("ID", "duration", "wav")
OPTIONS_VERSION = 1


class DataPrepError(ValueError):
    """A problem with the data being prepared; the message names the file (and line)."""


def file_error(path, message: str, line: int | None = None) -> DataPrepError:
    """Build a `DataPrepError` whose message starts with `path[:line]`."""
    where = f"{path}:{line}" if line is not None else f"{path}"
    return DataPrepError(f"{where}: {message}")


# --------------------------------------------------------------------------- layout


def check_layout(root, required: Sequence[str], corpus: str, layout: str) -> None:
    """Raise `DataPrepError` naming every missing entry of `required` (paths under root).

    `layout` is a short description of the expected layout, quoted in the message
    so that a wrong `data_folder` is fixed at once.
    """
    if not os.path.isdir(root):
        raise DataPrepError(f"{corpus} data folder not found: {root}\nExpected layout:\n{layout}")
    missing = [rel for rel in required if not os.path.exists(os.path.join(root, rel))]
    if missing:
        names = ", ".join(os.path.join(root, rel) for rel in missing)
        raise DataPrepError(
            f"{corpus} data folder {root} is missing: {names}\nExpected layout:\n{layout}"
        )


def iter_lines(path) -> Iterator[tuple[int, str]]:
    """Yield `(line_number, stripped_line)` for the non-blank lines of a text file."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if line:
                yield number, line


# --------------------------------------------------------------------------- audio


def audio_info(
    path, expected_sr: int | None = None, min_duration: float = 0.0
) -> tuple[float, int, int]:
    """Check an audio file from its header; return `(duration_s, sample_rate, frames)`.

    Raises `DataPrepError` naming the file when it is missing, unreadable by
    soundfile, empty, at another sample rate than `expected_sr`, or shorter
    than `min_duration` seconds.
    """
    if not os.path.isfile(path):
        raise file_error(path, "audio file not found")
    try:
        info = sf.info(path)
    except (RuntimeError, sf.SoundFileError) as err:  # LibsndfileError is a RuntimeError
        hint = ""
        if str(path).lower().endswith(".sph"):
            hint = "; a shorten-compressed SPHERE file needs converting first, e.g. with sph2pipe"
        raise file_error(path, f"unreadable audio ({err}){hint}") from err
    if info.frames <= 0 or info.samplerate <= 0:
        raise file_error(path, "empty audio file (0 samples)")
    if expected_sr is not None and info.samplerate != expected_sr:
        raise file_error(path, f"sample rate {info.samplerate} Hz, expected {expected_sr} Hz")
    duration = info.frames / info.samplerate
    if duration < min_duration:
        raise file_error(path, f"duration {duration:.3f} s is below {min_duration} s")
    return duration, info.samplerate, info.frames


def read_audio(path, target_sr: int | None = None) -> tuple[np.ndarray, int]:
    """Read a file as mono float32 (channels averaged); resample to `target_sr` if given."""
    audio_info(path)
    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)
    except (RuntimeError, sf.SoundFileError) as err:
        raise file_error(path, f"unreadable audio ({err})") from err
    if data.shape[0] == 0:
        raise file_error(path, "empty audio file (0 samples)")
    signal = data.mean(axis=1)
    if target_sr is not None and sr != target_sr:
        signal, sr = resample(signal, sr, target_sr), target_sr
    return signal, sr


def resample(signal: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited resampling of a 1-D signal (scipy's polyphase filter, else torchaudio)."""
    if orig_sr == target_sr:
        return signal
    try:
        from scipy.signal import resample_poly
    except ImportError:  # torchaudio's functional resample works in its pure-Python mode
        import torch
        import torchaudio.functional as AF

        out = AF.resample(torch.from_numpy(np.ascontiguousarray(signal)), orig_sr, target_sr)
        return out.numpy().astype(np.float32)
    g = gcd(int(orig_sr), int(target_sr))
    return resample_poly(signal, target_sr // g, orig_sr // g).astype(np.float32)


def write_audio(path, signal: np.ndarray, sr: int, **kwargs) -> None:
    """Write audio atomically (tmp file + os.replace); format follows the extension."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp{os.getpid()}{ext}"
    if ext.lower() == ".sph":
        kwargs.setdefault("format", "NIST")
    kwargs.setdefault("subtype", "PCM_16")
    sf.write(tmp, signal, sr, **kwargs)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- manifests


def _format_cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.5f}".rstrip("0").rstrip(".")
    return str(value)


def write_csv_manifest(path, rows: Sequence[Mapping], extra_columns: Sequence[str] = ()) -> int:
    """Write a SpeechBrain CSV manifest atomically; return its number of rows.

    Columns are `ID,duration,wav` followed by `extra_columns` (default: the other
    keys of the first row, in order). IDs must be unique.
    """
    columns = list(MANIFEST_HEAD)
    extra = list(extra_columns) or [k for k in (rows[0] if rows else {}) if k not in columns]
    columns += extra
    seen = set()
    for row in rows:
        if row["ID"] in seen:
            raise DataPrepError(f"{path}: duplicate ID {row['ID']!r} in manifest rows")
        seen.add(row["ID"])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_format_cell(row[c]) for c in columns])
    os.replace(tmp, path)
    return len(rows)


def read_csv_manifest(path) -> list[dict]:
    """Read a manifest back as a list of dicts (all values as strings)."""
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _manifest_ok(path, expected_rows: int, check_wavs: bool) -> bool:
    """True when the manifest exists, has `expected_rows` rows and (optionally) its wavs."""
    try:
        rows = read_csv_manifest(path)
    except (OSError, csv.Error, UnicodeDecodeError):
        return False
    if len(rows) != expected_rows or (rows and list(rows[0])[:3] != list(MANIFEST_HEAD)):
        return False
    if check_wavs:
        return all(row.get("wav") and os.path.isfile(row["wav"]) for row in rows)
    return True


def options_path(save_folder, corpus: str) -> str:
    """Where the options/row-count record of a corpus preparation lives."""
    return os.path.join(save_folder, f"{corpus}_prepare.json")


def prep_is_complete(save_folder, corpus: str, options: Mapping, check_wavs: bool = True) -> bool:
    """True when a previous run with the same options left all its manifests complete."""
    try:
        with open(options_path(save_folder, corpus), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return False
    if record.get("version") != OPTIONS_VERSION or record.get("options") != json.loads(
        json.dumps(dict(options))
    ):
        return False
    manifests = record.get("manifests") or {}
    return bool(manifests) and all(
        _manifest_ok(os.path.join(save_folder, name), n, check_wavs)
        for name, n in manifests.items()
    )


def record_prep(save_folder, corpus: str, options: Mapping, counts: Mapping[str, int]) -> None:
    """Write the options/row-count record (atomically, after the manifests)."""
    path = options_path(save_folder, corpus)
    record = {"version": OPTIONS_VERSION, "options": dict(options), "manifests": dict(counts)}
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def run_prep(
    corpus: str,
    save_folder,
    options: Mapping,
    build: Callable[[], Mapping[str, Sequence[Mapping]]],
    skip_prep: bool = False,
    check_wavs: bool = True,
) -> dict[str, str]:
    """Build and write `<save_folder>/<split>.csv` manifests unless already complete.

    `build()` returns `{split: rows}`; its rows are written with `write_csv_manifest`
    and the record is written last, so an interrupted run is redone next time.
    Returns `{split: csv_path}` (for the splits of the record when skipping).
    """
    os.makedirs(save_folder, exist_ok=True)
    if skip_prep:
        logger.info("%s: data preparation skipped (skip_prep=True)", corpus)
        return {}
    if prep_is_complete(save_folder, corpus, options, check_wavs=check_wavs):
        with open(options_path(save_folder, corpus), encoding="utf-8") as f:
            names = json.load(f)["manifests"]
        logger.info("%s: manifests in %s are complete, skipping preparation", corpus, save_folder)
        return {os.path.splitext(n)[0]: os.path.join(save_folder, n) for n in names}
    if os.path.exists(options_path(save_folder, corpus)):
        os.remove(options_path(save_folder, corpus))
    splits = build()
    paths, counts = {}, {}
    for split, rows in splits.items():
        path = os.path.join(save_folder, f"{split}.csv")
        counts[f"{split}.csv"] = write_csv_manifest(path, rows)
        paths[split] = path
        hours = sum(float(r["duration"]) for r in rows) / 3600
        logger.info("%s: wrote %s (%d rows, %.2f h)", corpus, path, len(rows), hours)
    record_prep(save_folder, corpus, options, counts)
    return paths
