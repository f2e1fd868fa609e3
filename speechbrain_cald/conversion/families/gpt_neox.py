"""GPT-NeoX (HF `GPTNeoXModel`, `GPTNeoXFor*`, e.g. Pythia): each layer's `attention`
(fused QKV + dense) becomes a slot holding a causal mixer (mamba by default, or
mamba2); the layer keeps its parallel residual, both LayerNorms and its MLP. With a
generation cache (`use_cache=True`, HF `generate()`), the mixers decode recurrently
(`conversion.cache`).
"""

from speechbrain_cald.conversion.cache import RecurrentMixerSlot
from speechbrain_cald.conversion.registry import SourceFamily, register_family


class GPTNeoXMixerSlot(RecurrentMixerSlot):
    """Called by GPTNeoXLayer as `attention(ln(hidden_states), attention_mask=causal_mask,
    position_ids=..., layer_past=cache, use_cache=..., position_embeddings=...)`; the
    mixer is causal (the rotary embeddings are unused), and reads the cache's state."""

    def forward(self, hidden_states, attention_mask=None, layer_past=None, **kwargs):
        """hidden_states (batch, time, d_model) -> ((batch, time, d_model), None)."""
        if layer_past is None:
            return self.mix(hidden_states, attention_mask), None
        return self.mix_cached(hidden_states, attention_mask, layer_past), None


class GPTNeoXFamily(SourceFamily):
    name = "gpt_neox"
    description = "GPTNeoXModel / GPTNeoXFor* (model_type 'gpt_neox')"
    causal = True
    default_mixer = "mamba"

    def matches(self, model):
        return getattr(getattr(model, "config", None), "model_type", None) == "gpt_neox"

    def layers(self, model):
        return model.base_model.layers

    def make_slot(self, mixer, spec, attention):
        return GPTNeoXMixerSlot(mixer, spec.causal, attention.layer_idx)

    def notes(self, model, spec, lobe_config, init):
        return ["rotary embeddings unused; generation caches hold the mixers' states"]


register_family(GPTNeoXFamily())
