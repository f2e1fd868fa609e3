"""From a padded waveform batch to a speech model's outputs: the one speech input path.

Files become waveforms in `speechbrain_cald.audio`; this module does the rest, the
same way in training (`tasks`), inference (`inference.SpeechEncoder`) and analysis:

1. the source model's own input processing, read from its HF feature extractor
   config (``preprocessor_config.json``): wav2vec2's ``do_normalize`` (per-utterance
   zero mean, unit variance over the valid samples, padding 0) or Whisper's log-mel
   features (per utterance). It is recorded in the model's config under
   `FEATURE_EXTRACTOR_KEY` when the starting model is prepared, so it travels with
   the weights into students, exports and inference folders;
2. a wav2vec2-style CNN feature encoder made padding-exact (and chunked on request)
   by `feature_encoder.exact_feature_encoder` (Whisper's encoder masks its own
   convolutions, `models.whisper_encoder`; its log-mel input is `log_mel` here);
3. the model call with the sample mask, and the valid-frame mask of its outputs.
"""

import contextlib

import numpy as np
import torch
import transformers

from speechbrain_cald.feature_encoder import cnn_frames, exact_feature_encoder
from speechbrain_cald.masks import counts_to_mask, lengths_to_mask

HOP = 160  # Whisper: samples per mel frame (10 ms at 16 kHz)
N_FFT = 400
FEATURE_EXTRACTOR_KEY = "cald_feature_extractor"
# What wav2vec2-style checkpoints expect (facebook/wav2vec2-base, -large-lv60):
# models built from a config (tests, pretraining from scratch) get it unless the
# YAML says otherwise (`feature_extractor` options).
DEFAULT_FEATURE_EXTRACTOR = {"do_normalize": True, "return_attention_mask": True}


def log_mel(wavs, lengths, mel_filters):
    """Per-utterance Whisper log-mel features of right-padded waveforms.

    wavs `(batch, samples)` at 16 kHz, lengths `(batch,)` valid samples,
    mel_filters `(n_fft // 2 + 1, mels)` (the feature extractor's). Each utterance
    alone: centred STFT (reflect padding), power, mel, log10 clamped at 1e-10, floor
    at its own max - 8, (x + 4) / 4. Returns ((batch, mels, frames) padded with 0,
    frames per utterance = samples // 160).
    """
    window = torch.hann_window(N_FFT, device=wavs.device)
    filters = torch.as_tensor(np.asarray(mel_filters), dtype=torch.float32, device=wavs.device)
    frames = torch.div(lengths, HOP, rounding_mode="floor")
    out = wavs.new_zeros(wavs.shape[0], filters.shape[1], int(frames.max()))
    for row, (n, t) in enumerate(zip(lengths.tolist(), frames.tolist())):
        if n <= N_FFT // 2:
            raise ValueError(f"utterance {row} has {n} samples; Whisper needs more than 200")
        stft = torch.stft(wavs[row, :n].float(), N_FFT, HOP, window=window, return_complex=True)
        power = stft[..., :-1].abs() ** 2  # (freq, frames): the last frame dropped, as HF
        spec = (filters.T @ power).clamp(min=1e-10).log10()
        spec = torch.maximum(spec, spec.max() - 8.0)
        out[row, :, :t] = ((spec + 4.0) / 4.0)[:, :t]
    return out, frames


def feature_extractor_for(source=None, options=None):
    """The HF feature extractor of a hub id / folder (its ``preprocessor_config.json``),
    or for a model built from a config (`source` None) a Wav2Vec2FeatureExtractor
    from `options` (default `DEFAULT_FEATURE_EXTRACTOR`)."""
    if source is None:
        return transformers.Wav2Vec2FeatureExtractor(**(options or DEFAULT_FEATURE_EXTRACTOR))
    try:
        return transformers.AutoFeatureExtractor.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{source}: no feature extractor (preprocessor_config.json) to read the "
            "model's input normalisation from; give its options in the YAML "
            "(feature_extractor: {do_normalize: true, ...})"
        ) from err


def attach_feature_extractor(model, feature_extractor):
    """Record `feature_extractor`'s settings in `model.config` (saved in config.json)."""
    setattr(model.config, FEATURE_EXTRACTOR_KEY, feature_extractor.to_dict())
    return model


def feature_extractor_from_config(config):
    """The HF feature extractor recorded in a model config (`attach_feature_extractor`)."""
    settings = getattr(config, FEATURE_EXTRACTOR_KEY, None)
    if settings is None:
        raise ValueError(
            f"the {config.model_type} config records no input normalisation "
            f"({FEATURE_EXTRACTOR_KEY!r}); prepare the model with "
            "speechbrain_cald.pretrained.prepare_pretrained or load it with a speech Task"
        )
    settings = dict(settings)
    cls = getattr(transformers, settings.pop("feature_extractor_type"))
    return cls(**{k: v for k, v in settings.items() if k != "processor_class"})


def ensure_feature_extractor(model, folder):
    """Make sure `model` (loaded from `folder`) records its input normalisation:
    from its config, else from the folder's ``preprocessor_config.json``; a clear
    error naming the folder otherwise (never a silent guess)."""
    if getattr(model.config, FEATURE_EXTRACTOR_KEY, None) is not None:
        return model
    try:
        extractor = transformers.AutoFeatureExtractor.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{folder}: no preprocessor_config.json and no {FEATURE_EXTRACTOR_KEY!r} in "
            "config.json, so the model's input normalisation is unknown; save the "
            "checkpoint's feature extractor there (feature_extractor.save_pretrained)"
        ) from err
    return attach_feature_extractor(model, extractor)


def normalize_waveforms(wavs, lengths, eps=1e-7):
    """HF `Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm` on a padded batch:
    each row `(batch, samples)` minus its mean, over sqrt(variance + eps), both over
    its first `lengths[b]` samples (float64 statistics); padding set to 0."""
    valid = counts_to_mask(lengths, wavs.shape[1])
    count = lengths.clamp(min=1).double()[:, None]
    values = wavs.double().where(valid, 0.0)
    mean = values.sum(1, keepdim=True) / count
    var = (values - mean).where(valid, 0.0).square().sum(1, keepdim=True) / count
    return ((values - mean) / (var + eps).sqrt()).where(valid, 0.0).to(wavs.dtype)


def whisper_frames(mel_frames):
    """Whisper encoder frames for `mel_frames`: its second conv (kernel 3, stride 2,
    padding 1) halves them, rounding up."""
    return torch.div(mel_frames - 1, 2, rounding_mode="floor") + 1


def encoder_frames(config, sample_lengths):
    """Frames of the encoder's hidden states for `sample_lengths` `(batch,)` samples,
    per the recorded feature extractor: Whisper, one mel frame per `HOP` samples
    (`log_mel`) then `whisper_frames`; wav2vec2-style, the CNN feature encoder's
    (`feature_encoder.cnn_frames`)."""
    extractor = feature_extractor_from_config(config)
    if isinstance(extractor, transformers.WhisperFeatureExtractor):
        return whisper_frames(torch.div(sample_lengths, HOP, rounding_mode="floor"))
    return cnn_frames(config, sample_lengths)


def model_inputs(config, wavs, lengths):
    """The model's keyword inputs for raw waveforms `(batch, samples)` with `lengths`
    valid samples per row, per its recorded feature extractor:
    wav2vec2-style: `input_values` (normalised if `do_normalize`) + the sample mask;
    Whisper: per-utterance log-mel `input_features` + the mel-frame mask."""
    extractor = feature_extractor_from_config(config)
    if isinstance(extractor, transformers.WhisperFeatureExtractor):
        features, frames = log_mel(wavs, lengths, extractor.mel_filters)
        return {
            "input_features": features,
            "attention_mask": counts_to_mask(frames, features.shape[-1]).long(),
        }
    if not isinstance(extractor, transformers.Wav2Vec2FeatureExtractor):
        raise ValueError(f"unsupported speech feature extractor {type(extractor).__name__}")
    values = normalize_waveforms(wavs, lengths) if extractor.do_normalize else wavs
    return {"input_values": values, "attention_mask": counts_to_mask(lengths, wavs.shape[1]).long()}


def speech_model_forward(model, wavs, rel_lens, chunk_frames=None, progress=False, **kwargs):
    """Run an HF speech model (transformer or CALD student) on raw waveforms.

    wavs `(batch, samples)` right-padded, rel_lens `(batch,)` SpeechBrain relative
    lengths. The input is prepared as the model's feature extractor does
    (`model_inputs`), a wav2vec2-style CNN runs padding-exact (in chunks of
    `chunk_frames` frames if set), and `kwargs` go to the model (e.g.
    ``output_hidden_states=True``). Returns (HF output, valid-frame mask
    `(batch, frames)` of its hidden states).
    """
    lengths = lengths_to_mask(rel_lens, wavs.shape[1]).sum(1)
    n_frames = encoder_frames(model.config, lengths)
    if (n_frames < 1).any():
        row = int((n_frames < 1).nonzero()[0])
        raise ValueError(
            f"utterance {row}: {int(lengths[row])} samples are too short for this model "
            "(its feature encoder gives no frame)"
        )
    inputs = model_inputs(model.config, wavs, lengths)
    exact = contextlib.nullcontext()
    if "input_values" in inputs:  # the wav2vec2 family's CNN feature encoder
        exact = exact_feature_encoder(model, lengths, chunk_frames, progress)
    with exact:
        out = model(**inputs, **kwargs)
    hidden = out.hidden_states[-1] if kwargs.get("output_hidden_states") else out[0]
    return out, counts_to_mask(n_frames, hidden.shape[1])
