"""The BERT family (BERT, RoBERTa, ...: encoders whose layers have a
BertSelfAttention-shaped `attention.self` with `query`, `key`, `value`): the
`attention.self` module becomes the mixer (linformer by default); `attention.output`
(dense, LayerNorm) is kept.

A Linformer keeps the teacher's Q/K/V under their own names: the slot is the
Linformer itself, as `BertLinformerSelfAttention` (same parameters, BERT's call
signature), with the teacher's query / key / value loaded.
"""

from torch import nn

from speechbrain_cald.conversion.registry import (
    MixerSlot,
    SourceFamily,
    is_right_padded,
    register_family,
    valid_frames,
)
from speechbrain_cald.lobes.linformer import LinformerSelfAttention

PROJECTIONS = ("query", "key", "value")


class BertLinformerSelfAttention(LinformerSelfAttention):
    """Called by BertAttention as `self(hidden_states, encoder_hidden_states=...,
    attention_mask=mask, past_key_values=...)`; returns `(context, None)`, context
    (batch, time, hidden) before the output dense."""

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        if kwargs.get("encoder_hidden_states") is not None:
            raise ValueError("the Linformer student has no cross-attention")
        valid = valid_frames(attention_mask, hidden_states)
        if valid is not None and not is_right_padded(valid):
            raise ValueError("the Linformer student needs right padding (valid tokens first)")
        return super().forward(hidden_states, attention_mask=valid), None


class BertFamily(SourceFamily):
    name = "bert"
    description = (
        "BERT-family encoders whose layers have a BertSelfAttention-shaped "
        "attention.self (BERT, RoBERTa, ...)"
    )
    default_mixer = "linformer"
    slot_attribute = "attention.self"

    def matches(self, model):
        base = getattr(model, "base_model", None)
        layers = getattr(getattr(base, "encoder", None), "layer", None)
        if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
            return False
        converted = getattr(model.config, "cald_student", None)  # slots hold mixers now
        for layer in layers:
            attention = getattr(getattr(layer, "attention", None), "self", None)
            if attention is None:
                return False
            if not converted and not all(
                isinstance(getattr(attention, n, None), nn.Linear) for n in PROJECTIONS
            ):
                return False
        if model.config.is_decoder:
            raise ValueError(
                f"{type(model).__name__} is a BERT-family decoder; the Linformer student "
                "is bidirectional (encoders only)"
            )
        return True

    def layers(self, model):
        return model.base_model.encoder.layer

    def make_slot(self, mixer, spec, attention):
        if not isinstance(mixer, LinformerSelfAttention):
            return MixerSlot(mixer, spec.causal)
        mixer.__class__ = BertLinformerSelfAttention  # same module, BERT's call signature
        for name in PROJECTIONS:
            getattr(mixer, name).load_state_dict(getattr(attention, name).state_dict())
        return mixer

    def notes(self, model, spec, lobe_config, init):
        if spec.name != "linformer":
            return []
        return [
            f"Linformer k={lobe_config.k}, max_len={lobe_config.max_len}, "
            f"sharing={lobe_config.sharing!r}; Q/K/V and attention.output kept"
        ]


register_family(BertFamily())
