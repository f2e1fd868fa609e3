"""Model classes this package adds to transformers, and how source models load.

Source models are HF transformers classes (Wav2Vec2, HuBERT, WavLM, Data2Vec-Audio,
BERT family, GPT-NeoX, ...) except where transformers has no class for the use:
Whisper's encoder alone, on any length (`whisper_encoder`). Importing this package
registers those classes with transformers' Auto classes.
"""

import transformers
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from speechbrain_cald.models import whisper_encoder

# Classes by name, for configs whose `architectures` names one of them: ours, and
# transformers classes its top level does not export (HF's WhisperEncoder, the
# encoder of WhisperModel, saved on its own).
MODEL_CLASSES = {
    cls.__name__: cls
    for cls in (
        whisper_encoder.WhisperEncoderModel,
        whisper_encoder.WhisperEncoderForCTC,
        WhisperEncoder,
    )
}


def model_class(name):
    """The HF model class called `name`: transformers' own or one of MODEL_CLASSES."""
    cls = getattr(transformers, name, None) or MODEL_CLASSES.get(name)
    if cls is None:
        raise ValueError(
            f"unknown model class {name!r} (not in transformers or {list(MODEL_CLASSES)})"
        )
    return cls


def load_source(auto_class, source, **overrides):
    """The starting transformer from a hub id or folder as `auto_class` (e.g.
    AutoModelForCTC) would load it; a Whisper checkpoint gives its encoder alone
    (`whisper_encoder.from_whisper`, the class `auto_class` maps the encoder to)."""
    config = transformers.AutoConfig.from_pretrained(source)
    if config.model_type == "whisper":
        mapping = auto_class._model_mapping
        cls = mapping[whisper_encoder.CALDWhisperEncoderConfig]
        return whisper_encoder.from_whisper(cls, source, **overrides)
    return auto_class.from_pretrained(source, **overrides)
