"""WavLM (HF `WavLMModel`, `WavLMFor*`): as the wav2vec2 family, but each layer's
attention returns `(output, weights, position_bias)` and owns WavLM's gated relative
position bias (`rel_attn_embed` in the first layer, `gru_rel_pos_linear`,
`gru_rel_pos_const` in every layer): those belong to attention and go with it (the
mixer needs no positions); the conversion report says so.
"""

from speechbrain_cald.conversion.families.wav2vec2 import Wav2Vec2Family
from speechbrain_cald.conversion.registry import MixerSlot, register_family


class WavLMMixerSlot(MixerSlot):
    """Called by WavLMEncoderLayer as `attention(hidden_states, attention_mask=mask,
    position_bias=..., index=...)`; returns `(output, None, position_bias)`: the bias
    it received is passed on unchanged (for attention layers a hybrid keeps after it)."""

    def forward(self, hidden_states, attention_mask=None, position_bias=None, **kwargs):
        return self.mix(hidden_states, attention_mask), None, position_bias


class WavLMFamily(Wav2Vec2Family):
    name = "wavlm"
    description = "WavLMModel / WavLMFor* (model_type 'wavlm')"
    model_types = ("wavlm",)

    def make_slot(self, mixer, spec, attention):
        return WavLMMixerSlot(mixer, spec.causal)

    def check_keep_attention(self, model, keep):
        if 0 not in keep:
            raise ValueError(
                f"keep_attention {keep}: WavLM's kept attention layers read the relative "
                "position bias that layer 0's attention computes; keep layer 0 too"
            )

    def notes(self, model, spec, lobe_config, init):
        return [
            "WavLM's gated relative position bias (rel_attn_embed, gru_rel_pos_linear, "
            "gru_rel_pos_const) belongs to attention and is replaced with it"
        ]


register_family(WavLMFamily())
