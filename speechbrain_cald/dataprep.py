"""Shared helpers for the `<corpus>_prepare.py` scripts of the speech recipes.

Nothing here knows a corpus: the prepare scripts parse their own layouts and hand
rows to these helpers, which

- check a data folder's layout and name what is missing (`check_layout`);
- check, read and write audio files through `speechbrain_cald.audio` (`audio_info`,
  `read_audio`, `write_audio`, re-exported here for the prepare scripts);
- write SpeechBrain CSV manifests (`ID,duration,wav,...`) atomically;
- skip a preparation whose manifests already exist and are complete, using a small
  JSON file next to the manifests that records the options and the row counts
  (`run_prep` ties the steps together for all three recipes).

Every data problem raises `DataPrepError`, whose message names the file (and the
line, for text files). Audio I/O goes through `speechbrain_cald.audio` only, and
this module imports neither torch nor speechbrain at load time, so a prepare step
stays cheap.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence

from speechbrain_cald.audio import (  # noqa: F401  (re-exported for prepare scripts)
    SILENCE_PEAK,
    DataPrepError,
    audio_info,
    file_error,
    read_audio,
    scan_samples,
    write_audio,
)

logger = logging.getLogger(__name__)

MANIFEST_HEAD = ("ID", "duration", "wav")
SPLITS = ("train", "dev", "test")
OPTIONS_VERSION = 1


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


def read_text(path) -> str:
    """A text file as editors and spreadsheet exports write it: UTF-8 with or without
    a byte-order mark, any line endings (kept: csv reads them). Anything else is a
    DataPrepError naming the file, the line and the byte."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise file_error(
            path, f"not UTF-8 text (byte 0x{data[err.start]:02x}); save it as UTF-8", line
        ) from None


def csv_text(path) -> io.StringIO:
    """`read_text(path)` as a stream for the csv module, fields of any length allowed
    (a long review or transcript is no error)."""
    csv.field_size_limit(2**31 - 1)
    return io.StringIO(read_text(path), newline="")


def csv_rows(path, **reader_options):
    """A csv.reader over `csv_text(path)`."""
    return csv.reader(csv_text(path), **reader_options)


def iter_lines(path) -> Iterator[tuple[int, str]]:
    """Yield `(line_number, stripped_line)` for the non-blank lines of a text file."""
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        line = line.strip()
        if line:
            yield number, line


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


def manifest_paths(hparams, extension="csv"):
    """`{split: <manifest_folder>/<split>.<extension>}`, as the prepare step wrote them."""
    return {s: os.path.join(hparams["manifest_folder"], f"{s}.{extension}") for s in SPLITS}


def read_csv_manifest(path) -> list[dict]:
    """Read a manifest back as a list of dicts (all values as strings)."""
    return list(csv.DictReader(csv_text(path)))


def _manifest_ok(path, expected_rows: int, check_wavs: bool) -> bool:
    """True when the manifest exists, has `expected_rows` rows and (optionally) its wavs."""
    try:
        rows = read_csv_manifest(path)
    except (OSError, csv.Error, DataPrepError):
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


def folder_fingerprint(folder, exclude=None) -> str:
    """ "<n> files, <sha256>" over the relative path, size and modification time of every
    file under `folder` (except under `exclude`): any added, removed, edited or touched
    input file changes it."""
    folder, skip = os.path.abspath(folder), os.path.abspath(exclude) if exclude else None
    digest, count = hashlib.sha256(), 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if os.path.join(root, d) != skip)
        for name in sorted(files):
            path = os.path.join(root, name)
            stat = os.stat(path)
            rel = os.path.relpath(path, folder)
            digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            count += 1
    return f"{count} files, sha256 {digest.hexdigest()}"


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
    and the record is written last, so an interrupted run is redone next time. The
    record holds the options and, when they name a `data_folder`, a fingerprint of the
    files under it (`folder_fingerprint`): edited or other input files are prepared
    again, never reused as complete. Returns `{split: csv_path}` (for the splits of the
    record when skipping).
    """
    os.makedirs(save_folder, exist_ok=True)
    if skip_prep:
        logger.info("%s: data preparation skipped (skip_prep=True)", corpus)
        return {}
    options = dict(options)
    if "data_folder" in options:  # the record covers the files read, not only the options
        options["inputs"] = folder_fingerprint(options["data_folder"], exclude=save_folder)
    if prep_is_complete(save_folder, corpus, options, check_wavs=check_wavs):
        with open(options_path(save_folder, corpus), encoding="utf-8") as f:
            names = json.load(f)["manifests"]
        logger.info("%s: manifests in %s are complete, skipping preparation", corpus, save_folder)
        return {os.path.splitext(n)[0]: os.path.join(save_folder, n) for n in names}
    if os.path.exists(options_path(save_folder, corpus)):
        logger.info(
            "%s: the manifests in %s were prepared from other options or input files "
            "(or are incomplete): preparing them again",
            corpus,
            save_folder,
        )
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


def prepare_splits(
    corpus: str,
    data_folder,
    save_folder,
    read_splits: Callable[[str], Mapping[str, Sequence[Mapping]]],
    required: Sequence[str],
    layout: str,
    skip_prep: bool = False,
    sample_rate: int = 16000,
) -> dict[str, str]:
    """The body of a prepare function whose manifests depend only on the data
    folder (the `experiment.main` prepare contract plus the corpus parts).

    `corpus` names it in messages; lower-cased, it names the preparation record.
    Checks the `required` entries of the layout (unless `skip_prep`), then runs
    `run_prep` with `read_splits(absolute data_folder)` -> `{split: rows}` as its
    build step. `sample_rate` is recorded only: recordings at any rate are read and
    resampled by the audio pipeline. Returns `{split: csv_path}`.
    """
    data_folder = os.path.abspath(data_folder)
    if not skip_prep:
        check_layout(data_folder, required, corpus, layout)
    options = {"data_folder": data_folder, "sample_rate": sample_rate}
    return run_prep(
        corpus.lower(),
        save_folder,
        options,
        lambda: read_splits(data_folder),
        skip_prep=skip_prep,
    )


# --------------------------------------------------------------------------- screening

BAD_DATA_POLICIES = ("skip", "error")
MAX_ROW_WARNINGS = 20  # per manifest; the summary line still counts every bad row


class RowCheck:
    """One check of a manifest row at load time: `func(row)` returns a problem
    (str) or None. `name` labels the problem in the skip counts; `columns` are the
    manifest columns it reads (they become required columns)."""

    def __init__(self, name: str, columns: Sequence[str], func: Callable[[Mapping], str | None]):
        self.name, self.columns, self.func = name, tuple(columns), func

    def __call__(self, row: Mapping) -> str | None:
        return self.func(row)


def audio_row_check(
    min_duration: float = 0.0,
    expected_sr: int | None = None,
    read_samples: bool = True,
    tolerance: float = 0.1,
) -> RowCheck:
    """The `wav` file exists, is readable by soundfile and has samples (and the sample
    rate); its real duration (from its header) lasts at least `min_duration` seconds
    and agrees with the manifest's `duration` within `tolerance` s (or 1%): a manifest
    that lies about durations would defeat `max_duration` and length batching (a
    30-minute file listed as 2 s). With `read_samples`, every sample is read once:
    NaN / inf (a damaged file) and silence (peak <= SILENCE_PEAK) are bad too."""

    def check(row):
        try:
            duration, _, _ = audio_info(row["wav"], expected_sr, min_duration)
            stated = float(row["duration"])
            if abs(duration - stated) > max(tolerance, 0.01 * duration):
                return (
                    f"{row['wav']}: the manifest says {stated:g} s, the file holds {duration:.3f} s"
                )
            if read_samples and scan_samples(row["wav"]) <= SILENCE_PEAK:
                return f"{row['wav']}: silent (peak <= {SILENCE_PEAK})"
        except DataPrepError as err:
            return str(err)
        return None

    return RowCheck("audio", ("wav",), check)


def vocab_row_check(column: str, vocab: Sequence[str], word_delimiter: str = "|") -> RowCheck:
    """Every character of the transcript in `column` (spaces as `word_delimiter`) is
    in `vocab`."""
    known = set(vocab)

    def check(row):
        text = " ".join(row[column].split())
        if not text:
            return f"empty (whitespace-only) transcript in {column!r}"
        outside = sorted({c for c in text.replace(" ", word_delimiter) if c not in known})
        if outside:
            return f"characters outside the vocabulary in {column!r}: {outside}"
        return None

    return RowCheck("vocabulary", (column,), check)


def label_row_check(column: str, labels: Sequence[str]) -> RowCheck:
    """The label in `column` is one of `labels` (those seen in the training set)."""
    known = set(labels)

    def check(row):
        if row[column] not in known:
            return f"label {row[column]!r} in {column!r} was not seen in the training set"
        return None

    return RowCheck("label", (column,), check)


def _row_problem(row: Mapping, required: Sequence[str], checks: Sequence[RowCheck]):
    """(check name, problem) of the first thing wrong with a csv.DictReader row."""
    if row.get(None):  # csv.DictReader's restkey: more fields than the header
        return "columns", f"{len(row[None])} more field(s) than the header"
    missing = [c for c in required if row.get(c) in (None, "")]
    if missing:
        return "columns", f"missing value(s) for column(s) {', '.join(missing)}"
    try:
        float(row["duration"])
    except ValueError:
        return "columns", f"duration {row['duration']!r} is not a number"
    for check in checks:
        problem = check(row)
        if problem:
            return check.name, problem
    return None


class Screening:
    """The bad rows of one manifest under a `bad_data` policy: "skip" logs each one
    (file, line, ID, problem; the first MAX_ROW_WARNINGS as warnings, the rest at
    info level) and counts them per problem; "error" raises `DataPrepError` at the
    first, naming the file, line and ID."""

    def __init__(self, path, bad_data="skip"):
        if bad_data not in BAD_DATA_POLICIES:
            raise ValueError(f"bad_data must be one of {BAD_DATA_POLICIES}, not {bad_data!r}")
        self.path, self.bad_data, self.skipped = path, bad_data, {}

    def bad(self, line, row_id, name, problem):
        """Record (or, under "error", raise) one bad row."""
        where = f"row ID {row_id!r}: {problem}"
        if self.bad_data == "error":
            raise file_error(self.path, f"{where} (bad_data: skip drops such rows)", line)
        self.skipped[name] = self.skipped.get(name, 0) + 1
        level = logging.WARNING if sum(self.skipped.values()) <= MAX_ROW_WARNINGS else logging.INFO
        logger.log(level, "%s:%s: skipping %s", self.path, line, where)

    def finish(self, kept):
        """The summary; a manifest left without any row is an error (an empty split
        would otherwise fail deep in SpeechBrain, or score nothing)."""
        counts = ", ".join(f"{k}: {n}" for k, n in sorted(self.skipped.items()))
        if self.skipped:
            logger.warning(
                "%s: skipped %d of %d rows (%s); bad_data: error stops at the first instead",
                self.path,
                sum(self.skipped.values()),
                sum(self.skipped.values()) + kept,
                counts,
            )
        if not kept:
            raise file_error(
                self.path,
                f"no usable row ({'skipped: ' + counts if counts else 'the manifest is empty'})",
            )
        return dict(self.skipped)


def load_manifest(
    path, checks: Sequence[RowCheck] = (), bad_data: str = "skip", skipped: dict | None = None
) -> dict:
    """A SpeechBrain CSV manifest as `{ID: row}` (duration as float: what
    `DynamicItemDataset` takes, as `speechbrain.dataio.dataio.load_data_csv` returns),
    screened row by row before any training starts.

    A row is bad when it has fewer or more fields than the header, an empty required
    column (`ID,duration,wav` and the columns of `checks`), a non-numeric duration, a
    duplicate ID, or fails a check (unreadable / empty / silent / damaged audio, a
    duration that disagrees with the file, characters outside the vocabulary, a label
    unseen in training, ...). Bad rows are handled by `Screening` under `bad_data`;
    their counts per problem are added to `skipped` when given. A header without a
    required column, or no usable row at all, is an error either way.
    """
    screening = Screening(path, bad_data)
    required = list(dict.fromkeys([*MANIFEST_HEAD, *(c for ch in checks for c in ch.columns)]))
    data = {}
    with csv_text(path) as f:
        reader = csv.DictReader(f)
        absent = [c for c in required if c not in (reader.fieldnames or [])]
        if absent:
            raise file_error(path, f"manifest header lacks column(s) {', '.join(absent)}", 1)
        for row in reader:
            found = _row_problem(row, required, checks)
            if found is None and row["ID"] in data:
                found = "columns", "duplicate ID"
            if found is None:
                data[row["ID"]] = {k: v for k, v in row.items() if k != "ID"}
                data[row["ID"]]["duration"] = float(row["duration"])
            else:
                screening.bad(reader.line_num, row.get("ID"), *found)
    counts = screening.finish(len(data))
    if skipped is not None:
        for name, n in counts.items():
            skipped[name] = skipped.get(name, 0) + n
    return data
