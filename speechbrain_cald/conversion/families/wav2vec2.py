"""The wav2vec2 family: HF Wav2Vec2, HuBERT and Data2Vec-Audio (`*Model`, `*For*`),
which share the encoder layout: each encoder layer's `attention` (q/k/v/out
projections) becomes a slot holding the mixer (bimamba2 by default); the CNN feature
encoder, feature projection, positional convolution, LayerNorms and FFNs are kept.

The layers call `attention(hidden_states, attention_mask=4-D mask, ...)` and read
`(output, weights)`; the slot turns the mask into the boolean valid-frame mask the
bidirectional mixer reads (each utterance reversed within its own length).
"""

from speechbrain_cald.conversion.registry import SourceFamily, register_family


class Wav2Vec2Family(SourceFamily):
    name = "wav2vec2"
    description = (
        "Wav2Vec2, HuBERT, Data2Vec-Audio (*Model / *For*; model_type 'wav2vec2', "
        "'hubert', 'data2vec-audio')"
    )
    model_types = ("wav2vec2", "hubert", "data2vec-audio")

    def matches(self, model):
        return getattr(getattr(model, "config", None), "model_type", None) in self.model_types

    def layers(self, model):
        return model.base_model.encoder.layers

    def attention_projections(self, attention):
        return attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj


register_family(Wav2Vec2Family())
