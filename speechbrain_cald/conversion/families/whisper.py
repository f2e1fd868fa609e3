"""Whisper's encoder (`models.whisper_encoder.WhisperEncoderModel` / `ForCTC`): each
encoder layer's `self_attn` (q/k/v/out projections; k without bias) becomes a slot
holding the mixer (bimamba2 by default). The convolutions, LayerNorms and FFNs are
kept; so are the sinusoidal positions (their first frames, continued past 30 s)
unless the student config says positions "drop" (the model then adds none).
"""

from speechbrain_cald.conversion.registry import SourceFamily, register_family


class WhisperEncoderFamily(SourceFamily):
    name = "whisper"
    description = (
        "Whisper's encoder (WhisperEncoderModel / WhisperEncoderForCTC, "
        "model_type 'whisper_encoder')"
    )
    mixers = ("bimamba2", "bimamba2_shared")
    slot_attribute = "self_attn"
    absolute_positions = True

    def matches(self, model):
        return getattr(getattr(model, "config", None), "model_type", None) == "whisper_encoder"

    def layers(self, model):
        return model.encoder.layers

    def attention_projections(self, attention):
        return attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj

    def notes(self, model, spec, lobe_config, init):
        if model.adds_positions:
            notes = ["sinusoidal positions kept (added before the first layer)"]
        else:
            notes = ["sinusoidal positions dropped (the student adds none)"]
        if init == "attention":
            notes.append("in_proj x/B/C rows <- V/K/Q and out_proj <- O; attention biases dropped")
        return notes


register_family(WhisperEncoderFamily())
