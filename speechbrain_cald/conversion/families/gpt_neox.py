"""GPT-NeoX (HF `GPTNeoXModel`, `GPTNeoXFor*`, e.g. Pythia): each layer's `attention`
(fused QKV + dense) becomes a slot holding a causal mixer (mamba by default, or
mamba2); the layer keeps its parallel residual, both LayerNorms and its MLP.
"""

from speechbrain_cald.conversion.registry import MixerSlot, SourceFamily, register_family


class GPTNeoXMixerSlot(MixerSlot):
    """Called by GPTNeoXLayer as `attention(ln(hidden_states), attention_mask=causal_mask,
    position_ids=..., layer_past=..., use_cache=..., position_embeddings=...)`; the mixer
    is causal, so the mask is only checked for right padding and the rotary embeddings
    are unused. No incremental decoding (KV cache)."""

    def forward(self, hidden_states, attention_mask=None, layer_past=None, **kwargs):
        """hidden_states (batch, time, d_model) -> ((batch, time, d_model), None)."""
        if layer_past is not None:
            raise NotImplementedError(
                "the Mamba student keeps no KV cache: call it with use_cache=False "
                "(generate(..., use_cache=False))"
            )
        return self.mix(hidden_states, attention_mask), None


class GPTNeoXFamily(SourceFamily):
    name = "gpt_neox"
    description = "GPTNeoXModel / GPTNeoXFor* (model_type 'gpt_neox')"
    mixers = ("mamba", "mamba2")

    def matches(self, model):
        return getattr(getattr(model, "config", None), "model_type", None) == "gpt_neox"

    def layers(self, model):
        return model.base_model.layers

    def make_slot(self, mixer, spec, attention):
        return GPTNeoXMixerSlot(mixer, spec.causal)

    def notes(self, model, spec, lobe_config, init):
        return ["rotary embeddings unused; use_cache set to False (no KV cache in the student)"]

    def after_conversion(self, model):
        model.config.use_cache = False


register_family(GPTNeoXFamily())
