"""Data preparation for TED-LIUM release 3 (legacy split), for CTC ASR.

Reads the official layout

    <data_folder>/legacy/{train,dev,test}/sph/<talk>.sph
    <data_folder>/legacy/{train,dev,test}/stm/<talk>.stm

parses the STM segments (`talk channel speaker start end <label> transcript`),
drops `ignore_time_segment_in_scoring`, normalises the text, cuts each segment
out of its talk into a 16 kHz wav file and writes `train.csv`, `dev.csv` and
`test.csv` with the columns `ID,duration,wav,spk_id,wrd`.

Example
-------
>>> from speechbrain.utils.distributed import run_on_main
>>> run_on_main(prepare_tedlium, kwargs={"data_folder": "TEDLIUM_release-3",
...     "save_folder": "results/tedlium"})  # doctest: +SKIP
"""

import logging
import os
import re
import unicodedata

from speechbrain_cald.dataprep import (
    DataPrepError,
    check_layout,
    file_error,
    iter_lines,
    read_audio,
    run_prep,
    write_audio,
)

logger = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
END_TOLERANCE = 0.05  # seconds a segment may end past its talk's audio; beyond: skipped
IGNORE = "ignore_time_segment_in_scoring"
LAYOUT = """  <data_folder>/legacy/{train,dev,test}/sph/<talk>.sph
  <data_folder>/legacy/{train,dev,test}/stm/<talk>.stm"""
# A talk whose annotation is unusable (a song); SpeechBrain's TED-LIUM recipes skip it too.
DEFAULT_EXCLUDE = ("JillSobuleMANHATTANINJANUARY_2006",)

_VARIANT = re.compile(r"\(\d+\)")  # pronunciation variants: "the(2)"
_MARKUP = re.compile(r"^[<{\[(].*[>}\])]$")  # <unk>, {NOISE}, [laughter], <sil>, (talk_id)
_NOT_ALLOWED = re.compile(r"[^a-z']")
_LIGATURES = str.maketrans({"ß": "ss", "æ": "ae", "œ": "oe", "ø": "o", "đ": "d", "ł": "l"})


def transliterate(text):
    """Latin letters with diacritics as their base letters ("café" -> "cafe",
    "naïve" -> "naive"; "ß" -> "ss", "æ" -> "ae", "œ" -> "oe", "ø" -> "o")."""
    text = text.translate(_LIGATURES)
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def normalize_text(words):
    """Normalise STM words: lower-case; letters with diacritics transliterated
    (`transliterate`); drop markup tokens (`<unk>`, `{NOISE}`, `(2)`, ...); join split
    contractions (`it 's` -> `it's`, as the Kaldi/SpeechBrain TED-LIUM recipes do);
    keep only a-z and apostrophes; single spaces. Returns (text, letters that could
    not be transliterated and were dropped, e.g. from another script).
    """
    out, lost = [], ""
    text = transliterate(_VARIANT.sub("", " ".join(words).lower()))
    for token in text.replace("-", " ").split():
        if _MARKUP.match(token):
            continue
        lost += "".join(c for c in _NOT_ALLOWED.findall(token) if c.isalpha())
        token = _NOT_ALLOWED.sub("", token)
        if not token.strip("'"):
            continue
        if token.startswith("'") and out:
            out[-1] += token
        else:
            out.append(token)
    return " ".join(out), lost


def parse_stm(path):
    """Return the scored segments of an STM file as dicts (speaker, start, end, wrd);
    letters dropped by `normalize_text` are logged with the file and line.

    Raises `DataPrepError` naming the file and line for a malformed line.
    """
    segments = []
    for number, line in iter_lines(path):
        if line.startswith(";;"):
            continue
        fields = line.split()
        if len(fields) < 6:
            raise file_error(path, f"malformed STM line (expected >= 6 fields): {line!r}", number)
        try:
            start, end = float(fields[3]), float(fields[4])
        except ValueError:
            raise file_error(path, f"malformed STM times {fields[3:5]}: {line!r}", number) from None
        if not (0 <= start < end):
            raise file_error(path, f"STM segment with start >= end: {line!r}", number)
        if not (fields[5].startswith("<") and fields[5].endswith(">")):
            raise file_error(path, f"malformed STM label {fields[5]!r}: {line!r}", number)
        words = fields[6:]
        if words[:1] == [IGNORE] or fields[2] == "inter_segment_gap":
            continue
        text, lost = normalize_text(words)
        if lost:
            logger.warning(
                "%s line %d: letters %r dropped (not a-z after transliteration)", path, number, lost
            )
        segments.append(
            {"speaker": fields[2], "start": start, "end": end, "wrd": text, "line": number}
        )
    return segments


def _cut_talk(sph, stm, talk, out_dir, sample_rate, min_duration):
    """Cut the scored STM segments of one talk into wav files; return manifest rows."""
    segments = parse_stm(stm)
    if not segments:
        return []
    signal, sr = read_audio(sph, sample_rate), sample_rate
    total = len(signal) / sr
    rows, empty, past_end = [], 0, 0
    for seg in segments:
        if seg["end"] > total + END_TOLERANCE:
            past_end += 1
            logger.warning(
                "%s line %d: segment %s-%s s runs past the end of %s (%.2f s): not used",
                stm, seg["line"], seg["start"], seg["end"], sph, total,
            )  # fmt: skip
            continue
        if not seg["wrd"]:
            empty += 1
            continue
        if seg["end"] - seg["start"] < min_duration:
            continue
        utt_id = f"{talk}-{round(seg['start'] * 100):07d}-{round(seg['end'] * 100):07d}"
        piece = signal[round(seg["start"] * sr) : round(seg["end"] * sr)]
        wav = os.path.join(out_dir, f"{utt_id}.wav")
        if not _same_audio(wav, len(piece), sr):
            write_audio(wav, piece, sr)
        rows.append(
            {
                "ID": utt_id,
                "duration": len(piece) / sr,
                "wav": wav,
                "spk_id": seg["speaker"],
                "wrd": seg["wrd"],
            }
        )
    if empty or past_end:
        logger.warning(
            "%s: %d segment(s) with no words left after normalisation and %d past the end "
            "of the audio: not used",
            stm, empty, past_end,
        )  # fmt: skip
    return rows


def _same_audio(path, frames, sr):
    """True when `path` is already a wav of `frames` samples at `sr` (a previous cut)."""
    import soundfile as sf

    try:
        info = sf.info(path)
    except (RuntimeError, sf.SoundFileError):
        return False
    return info.frames == frames and info.samplerate == sr


def prepare_tedlium(
    data_folder,
    save_folder,
    skip_prep=False,
    utt_folder=None,
    sample_rate=16000,
    min_duration=0.0,
    exclude_talks=DEFAULT_EXCLUDE,
):
    """Prepare TED-LIUM 3 legacy manifests `train.csv`, `dev.csv`, `test.csv`.

    Arguments
    ---------
    data_folder : str
        TED-LIUM release 3 root (the folder holding `legacy/`).
    save_folder : str
        Where the manifests (and the options record) go.
    skip_prep : bool
        If True, do nothing.
    utt_folder : str, optional
        Where the cut segment wavs go (default `<save_folder>/wav`).
    sample_rate : int
        Sample rate of the cut wavs (talks at another rate are resampled).
    min_duration : float
        Segments shorter than this (seconds) are left out.
    exclude_talks : sequence of str
        Talk names (file stems) left out.

    Returns
    -------
    dict mapping split -> manifest path.
    """
    legacy = os.path.join(data_folder, "legacy")
    utt_folder = os.path.abspath(utt_folder or os.path.join(save_folder, "wav"))
    if not skip_prep:
        required = [os.path.join("legacy", s, d) for s in SPLITS for d in ("sph", "stm")]
        check_layout(data_folder, required, "TED-LIUM 3", LAYOUT)
    options = {
        "data_folder": os.path.abspath(data_folder),
        "utt_folder": utt_folder,
        "sample_rate": sample_rate,
        "min_duration": min_duration,
        "exclude_talks": sorted(exclude_talks),
    }

    def build():
        splits = {}
        for split in SPLITS:
            stm_dir = os.path.join(legacy, split, "stm")
            talks = sorted(f[:-4] for f in os.listdir(stm_dir) if f.endswith(".stm"))
            if not talks:
                raise DataPrepError(f"{stm_dir}: no .stm files (expected layout:\n{LAYOUT})")
            rows = []
            for talk in talks:
                if talk in exclude_talks:
                    logger.info("TED-LIUM: talk %s excluded", talk)
                    continue
                stm = os.path.join(stm_dir, f"{talk}.stm")
                sph = os.path.join(legacy, split, "sph", f"{talk}.sph")
                if not os.path.isfile(sph):
                    raise file_error(stm, f"no audio for this talk: {sph} not found")
                out_dir = os.path.join(utt_folder, split)
                rows += _cut_talk(sph, stm, talk, out_dir, sample_rate, min_duration)
            splits[split] = rows
        return splits

    return run_prep("tedlium", save_folder, options, build, skip_prep=skip_prep)
