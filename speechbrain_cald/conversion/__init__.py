"""Conversion of pretrained HF transformers into linear-complexity CALD students.

CALD_METHOD.md section 3: every self-attention module is replaced by a lobe mixer
held in an *attention slot* (a module with the HF attention call signature); every
other pretrained weight is kept bit-identical. The student is the same HF class as
the teacher, so its outputs (logits, `output_hidden_states=True` giving num_layers +
1 states) keep their form, and `save_pretrained` / `from_pretrained` (here) round-trip.

| family   | HF models                                 | slot         | attention | auto      |
|----------|-------------------------------------------|--------------|-----------|-----------|
| wav2vec2 | Wav2Vec2, HuBERT, Data2Vec-Audio          | `attention`  | both ways | bimamba2  |
| wavlm    | WavLMModel, WavLMFor*                     | `attention`  | both ways | bimamba2  |
| whisper  | Whisper's encoder (ours and HF's)         | `self_attn`  | both ways | bimamba2  |
| bert     | BERT, RoBERTa, ... (BertSelfAttention)    | `attention.self` | both ways | linformer |
| gpt_neox | GPTNeoXModel, GPTNeoXFor*                 | `attention`  | causal    | mamba     |

A mixer fits every family whose attention has its direction (`MixerSpec.fits`):
bimamba2, bimamba2_shared and linformer the bidirectional ones, mamba and mamba2 the
causal one; each family gives its sizes in generic names (`SourceFamily.sizes`).

Rooms: `registry` (the mixer and family registries, the generic attention slot),
`mixers` (the built-in mixers), `families/` (one module per source family),
`convert` (the conversion itself), `config` (StudentConfig, ConversionReport), `io`
(loading saved students).

A new mixer is its lobe plus one `register_mixer(MixerSpec(...))`; a new family is
one `SourceFamily` subclass plus `register_family(...)`; nothing else changes
(tests/unit/test_extension.py does both from outside the package).
"""

from speechbrain_cald.conversion import families, mixers  # noqa: F401  (registrations)
from speechbrain_cald.conversion.config import ConversionReport, StudentConfig
from speechbrain_cald.conversion.convert import (
    build_student_from_config,
    convert_to_student,
    kept_attention,
    set_mixer_options,
    student_slots,
)
from speechbrain_cald.conversion.io import from_pretrained, load_student
from speechbrain_cald.conversion.registry import (
    FAMILIES,
    MIXERS,
    MixerSlot,
    MixerSpec,
    SourceFamily,
    detect_family,
    fitting_mixers,
    freeze_front_end,
    register_family,
    register_mixer,
)

__all__ = [
    "FAMILIES",
    "MIXERS",
    "ConversionReport",
    "MixerSlot",
    "MixerSpec",
    "SourceFamily",
    "StudentConfig",
    "build_student_from_config",
    "convert_to_student",
    "kept_attention",
    "detect_family",
    "fitting_mixers",
    "freeze_front_end",
    "from_pretrained",
    "load_student",
    "register_family",
    "register_mixer",
    "set_mixer_options",
    "student_slots",
]
