"""The one way audio files become waveforms, in data preparation, training and inference.

`read_audio(path, sample_rate)` reads any file soundfile reads (WAV, FLAC, OGG,
NIST SPHERE, ...; int or float samples), averages its channels to mono, resamples
it with `resample` (scipy's polyphase filter: the only resampler of the project)
and rejects files that are missing, unreadable, empty or hold non-finite samples,
with a `DataPrepError` naming the file. `AudioReader` is the same conversion for a
signal already read (SpeechBrain's `Pretrained.load_audio` hands its
``audio_normalizer`` the soundfile signal and its rate), so an exported inference
folder loaded by stock SpeechBrain interfaces reads files exactly as training did.

What the model does with the waveform next (its own input normalisation) is
`speechbrain_cald.speech_input`. This module imports neither torch nor speechbrain
at load time, so a prepare step stays cheap.
"""

from __future__ import annotations

import os
import re
from math import gcd

import numpy as np
import soundfile as sf


class DataPrepError(ValueError):
    """A problem with a data file; the message names the file (and line)."""


def file_error(path, message: str, line: int | None = None) -> DataPrepError:
    """Build a `DataPrepError` whose message starts with `path[:line]`."""
    where = f"{path}:{line}" if line is not None else f"{path}"
    return DataPrepError(f"{where}: {message}")


# libsndfile's report of a WAV/AIFF data chunk longer than the file: "data : N (should be M)"
_DATA_CUT_SHORT = re.compile(r"^\s*(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


def audio_info(
    path, expected_sr: int | None = None, min_duration: float = 0.0
) -> tuple[float, int, int]:
    """Check an audio file from its header; return `(duration_s, sample_rate, frames)`.

    Raises `DataPrepError` naming the file when it is missing, unreadable by
    soundfile, cut short (its header announces more samples than it holds), empty,
    at another sample rate than `expected_sr`, or shorter than `min_duration` seconds.
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
    cut = _DATA_CUT_SHORT.search(info.extra_info or "")
    if cut and int(cut.group(2)) < int(cut.group(1)):
        raise file_error(
            path,
            f"its header announces {cut.group(1)} bytes of samples but the file holds "
            f"{cut.group(2)}: cut short (an interrupted copy or download?)",
        )
    if info.frames <= 0 or info.samplerate <= 0:
        raise file_error(path, "empty audio file (0 samples)")
    if expected_sr is not None and info.samplerate != expected_sr:
        raise file_error(path, f"sample rate {info.samplerate} Hz, expected {expected_sr} Hz")
    duration = info.frames / info.samplerate
    if duration < min_duration:
        raise file_error(path, f"duration {duration:.3f} s is below {min_duration} s")
    return duration, info.samplerate, info.frames


def resample(signal: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited resampling of a 1-D float signal (scipy's polyphase filter)."""
    if orig_sr == target_sr:
        return signal
    from scipy.signal import resample_poly

    g = gcd(int(orig_sr), int(target_sr))
    return resample_poly(signal, int(target_sr) // g, int(orig_sr) // g).astype(np.float32)


def to_model_rate(samples: np.ndarray, sr: int, sample_rate: int | None, source) -> np.ndarray:
    """`(samples,)` or `(samples, channels)` float samples -> mono float32 at
    `sample_rate` (None: keep `sr`); `source` names the file in errors."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 2:
        samples = samples.mean(axis=1, dtype=np.float32)
    if samples.size == 0:
        raise file_error(source, "empty audio file (0 samples)")
    bad = ~np.isfinite(samples)
    if bad.any():
        first = int(np.argmax(bad))
        raise file_error(
            source,
            f"{int(bad.sum())} non-finite (NaN/inf) sample(s), the first at "
            f"{first / sr:.3f} s; the file is damaged",
        )
    if sample_rate is not None and sr != sample_rate:
        samples = resample(samples, sr, sample_rate)
    return samples


def read_audio(path, sample_rate: int | None = None) -> np.ndarray:
    """A file as a mono float32 waveform at `sample_rate` (None: the file's rate).

    Channels are averaged; int samples are scaled to [-1, 1) as soundfile does.
    `DataPrepError` naming the file when it is missing, unreadable, empty or holds
    NaN / inf samples.
    """
    _, _, frames = audio_info(path)
    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)
    except (RuntimeError, sf.SoundFileError) as err:
        raise file_error(path, f"unreadable audio ({err})") from err
    if len(data) != frames:
        raise file_error(path, f"holds {len(data)} samples, its header says {frames}: damaged")
    return to_model_rate(data, sr, sample_rate, path)


# Peak amplitude (full scale 1.0) at or below which a file counts as silent.
SILENCE_PEAK = 1e-5


def scan_samples(path, block_frames: int = 1 << 18) -> float:
    """Read a file block by block and return its peak absolute amplitude;
    `DataPrepError` naming the file when a sample is NaN / inf (damaged)."""
    peak = 0.0
    try:
        for block in sf.blocks(path, blocksize=block_frames, dtype="float32", always_2d=True):
            if not np.isfinite(block).all():
                raise file_error(path, "non-finite (NaN/inf) samples; the file is damaged")
            peak = max(peak, float(np.abs(block).max(initial=0.0)))
    except (RuntimeError, sf.SoundFileError) as err:
        raise file_error(path, f"unreadable audio ({err})") from err
    return peak


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


class AudioReader:
    """`read_audio` for a signal SpeechBrain already read: the ``audio_normalizer``
    of an exported inference folder (`Pretrained.load_audio` calls it as
    ``audio_normalizer(signal, sr)`` with soundfile's float32 samples, time first).

    Returns a mono float32 torch tensor at `sample_rate`; `DataPrepError` on empty
    or non-finite input.
    """

    def __init__(self, sample_rate: int = 16000):
        self.sample_rate = sample_rate

    def __call__(self, signal, sr: int, source: str = "audio signal"):
        import torch

        samples = signal.detach().cpu().numpy() if isinstance(signal, torch.Tensor) else signal
        mono = to_model_rate(samples, int(sr), self.sample_rate, source)
        device = signal.device if isinstance(signal, torch.Tensor) else "cpu"
        return torch.from_numpy(np.ascontiguousarray(mono)).to(device)
