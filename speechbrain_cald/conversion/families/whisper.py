"""Whisper's encoder (`models.whisper_encoder.WhisperEncoderModel` / `ForCTC`): each
encoder layer's `self_attn` (q/k/v/out projections; k without bias) becomes a slot
holding the mixer (bimamba2 by default). The convolutions, LayerNorms and FFNs are
kept; so are the sinusoidal positions (their first frames, continued past 30 s)
unless the student config says positions "drop" (the model then adds none). HF's own
Whisper encoders (`WhisperEncoder`, `WhisperForAudioClassification`) convert the same
way, every non-attention weight kept; they keep HF's 30 s input windows and positions.
"""

from transformers import WhisperForAudioClassification
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from speechbrain_cald.conversion.registry import SourceFamily, register_family

# HF's own Whisper encoders: `WhisperModel(...).encoder` / `get_encoder()` and the audio
# classifier (its `encoder`); they take 30 s windows of log-mel frames, as HF runs them.
HF_ENCODER_MODELS = (WhisperEncoder, WhisperForAudioClassification)


class WhisperEncoderFamily(SourceFamily):
    name = "whisper"
    description = (
        "Whisper's encoder (WhisperEncoderModel / WhisperEncoderForCTC, model_type "
        "'whisper_encoder'; HF's WhisperEncoder, e.g. WhisperModel.get_encoder(), and "
        "WhisperForAudioClassification)"
    )
    slot_attribute = "self_attn"

    def matches(self, model):
        if getattr(getattr(model, "config", None), "model_type", None) == "whisper_encoder":
            return True
        return isinstance(model, HF_ENCODER_MODELS)

    def layers(self, model):
        encoder = model if isinstance(model, WhisperEncoder) else model.encoder
        return encoder.layers

    def can_drop_positions(self, model):
        return not isinstance(model, HF_ENCODER_MODELS)  # HF's add their own

    def attention_projections(self, attention):
        return attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj

    def notes(self, model, spec, lobe_config, init):
        if getattr(model, "adds_positions", True):
            return ["sinusoidal positions kept (added before the first layer)"]
        return ["sinusoidal positions dropped (the student adds none)"]


register_family(WhisperEncoderFamily())
