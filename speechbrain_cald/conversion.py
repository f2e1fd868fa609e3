"""Conversion of pretrained HF transformers into linear-complexity CALD students.

CALD_METHOD.md section 3: every self-attention module is replaced by a lobe mixer
held in an *attention slot* (a module with the HF attention call signature); every
other pretrained weight is kept bit-identical.

| family   | HF models                                    | slot replaced     | mixers (auto 1st) |
|----------|----------------------------------------------|-------------------|-------------------|
| wav2vec2 | Wav2Vec2Model, Wav2Vec2For*                  | `layer.attention` | bimamba2          |
| bert     | BERT, RoBERTa, ... (BertSelfAttention Q/K/V) | `attention.self`  | linformer         |
| gpt_neox | GPTNeoXModel, GPTNeoXFor*                    | `layer.attention` | mamba, mamba2     |

The student is the same HF class as the teacher, so forward outputs (logits,
`output_hidden_states=True` giving num_layers + 1 states) are unchanged in form. Its
config carries a `cald_student` entry (the StudentConfig dict, with the lobe config
fully resolved) so `save_pretrained` writes it and `from_pretrained` here rebuilds the
student without the teacher.
"""

import copy
import dataclasses
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel
from transformers.conversion_mapping import get_model_conversion_mapping
from transformers.core_model_loading import PrefixChange, WeightRenaming, apply_renamings

from speechbrain_cald.lobes.bimamba2 import (
    BiMamba2,
    init_bimamba2_from_attention,
    mamba2_config_for_attention_init,
)
from speechbrain_cald.lobes.linformer import (
    LinformerConfig,
    LinformerProjections,
    LinformerSelfAttention,
)
from speechbrain_cald.lobes.mamba import MambaConfig, MambaMixer
from speechbrain_cald.lobes.mamba2 import Mamba2Config, Mamba2Mixer
from speechbrain_cald.lobes.masking import valid_mask

logger = logging.getLogger(__name__)

MIXERS = ("auto", "bimamba2", "linformer", "mamba", "mamba2")
INITS = ("random", "attention")
# Mixers each family accepts; the first one is what "auto" picks.
FAMILY_MIXERS = {
    "wav2vec2": ("bimamba2",),
    "bert": ("linformer",),
    "gpt_neox": ("mamba", "mamba2"),
}
# Lobe-config fields set from the HF model, hence not stored in `mixer_config`.
_MODEL_DERIVED_FIELDS = {"d_model", "hidden_size", "num_attention_heads"}


@dataclass
class StudentConfig:
    """What the student is made of.

    Attributes:
        mixer: "auto" (by family: wav2vec2 -> bimamba2, BERT family -> linformer,
            gpt_neox -> mamba) or one of "bimamba2", "linformer", "mamba", "mamba2".
        mixer_config: overrides of the lobe config (Mamba2Config, LinformerConfig or
            MambaConfig) except the sizes taken from the model (d_model / hidden_size /
            num_attention_heads).
        init: "random" or "attention" (bimamba2 only: V -> x, K -> B, Q -> C, O -> out_proj,
            shape-exact with ngroups = heads, d_state = headdim = head size). Linformer
            always keeps the teacher's Q/K/V, whatever `init` says.
    """

    mixer: str = "auto"
    mixer_config: dict = field(default_factory=dict)
    init: str = "random"

    def __post_init__(self):
        if self.mixer not in MIXERS:
            raise ValueError(f"StudentConfig.mixer must be one of {MIXERS}, got {self.mixer!r}")
        if self.init not in INITS:
            raise ValueError(f"StudentConfig.init must be one of {INITS}, got {self.init!r}")
        derived = _MODEL_DERIVED_FIELDS.intersection(self.mixer_config)
        if derived:
            raise ValueError(
                f"mixer_config must not set {sorted(derived)}: they are taken from the model"
            )

    def to_dict(self) -> dict:
        """JSON-ready dict (tuples become lists, as they would through config.json)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: Mapping) -> "StudentConfig":
        """Inverse of `to_dict`; unknown keys are an error."""
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown StudentConfig keys: {sorted(unknown)}")
        return cls(**{**data, "mixer_config": dict(data.get("mixer_config", {}))})


@dataclass
class ConversionReport:
    """What a conversion did, by parameter name (aliases of shared tensors listed each).

    Attributes:
        architecture: HF class name of the converted model.
        family, mixer, init: the resolved conversion.
        replaced: teacher parameters removed with the attention modules.
        kept: teacher parameters present in the student with identical values.
        new: student parameters that the teacher did not have (freshly initialised).
        from_attention: the subset of `new` whose values (or some rows of them) come from
            the teacher's attention weights.
        teacher_parameters, student_parameters: number of unique scalar parameters.
        notes: remarks (dropped biases, unused rotary embeddings, ...).
    """

    architecture: str
    family: str
    mixer: str
    init: str
    replaced: list[str]
    kept: list[str]
    new: list[str]
    from_attention: list[str]
    teacher_parameters: int
    student_parameters: int
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [
            f"CALD conversion of {self.architecture}: {self.family} attention -> {self.mixer} "
            f"(init {self.init}); parameters {self.teacher_parameters:,} -> "
            f"{self.student_parameters:,}",
            _summary_line("replaced", self.replaced),
            _summary_line("kept", self.kept),
            _summary_line("new", self.new),
            _summary_line("from attention", self.from_attention),
        ]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def _summary_line(label: str, names: list[str]) -> str:
    """`label: N tensors: pattern, ...` with layer indices collapsed to `*`."""
    patterns = list(dict.fromkeys(re.sub(r"\.\d+\.", ".*.", name) for name in names))
    shown = ", ".join(patterns[:8]) + (
        f", ... ({len(patterns) - 8} more)" if len(patterns) > 8 else ""
    )
    return f"  {label}: {len(names)} tensors" + (f": {shown}" if names else "")


# ---------------------------------------------------------------------------------
# Attention slots: HF attention call signature in, lobe mixer inside.
# ---------------------------------------------------------------------------------


def _valid_frames(attention_mask, hidden_states: torch.Tensor) -> torch.Tensor | None:
    """Boolean `(batch, time)` valid frames from the mask an HF layer passes its attention.

    The mask is None (no padding, sdpa), 2-D 0/1 (flash attention), or 4-D boolean
    (sdpa) / additive (eager) of shape (batch, 1, time, time); None stays None.
    """
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(
            f"CALD students cannot read a {type(attention_mask).__name__} attention mask "
            "(flex attention); load the model with attn_implementation 'sdpa' or 'eager'"
        )
    batch, time = hidden_states.shape[:2]
    return valid_mask(batch, time, attention_mask=attention_mask)


def _require_right_padding(valid: torch.Tensor) -> torch.Tensor:
    """Number of valid frames per row `(batch,)`; error unless padding is at the right."""
    n_valid = valid.sum(dim=-1)
    prefix = torch.arange(valid.shape[-1], device=valid.device)[None, :] < n_valid[:, None]
    if not torch.equal(valid, prefix):
        raise ValueError("CALD students need right padding (valid frames first in every row)")
    return n_valid


class Wav2Vec2BiMamba2Attention(nn.Module):
    """Replaces `Wav2Vec2Attention` (incl. its out_proj) by a BiMamba2 mixer.

    Called by Wav2Vec2EncoderLayer(StableLayerNorm) as
    `attention(hidden_states, attention_mask=mask, **kwargs) -> (output, weights)`;
    the mask becomes relative valid lengths so each utterance is scanned (and reversed)
    within its own length, and padded frames come out as 0.
    """

    def __init__(self, config: Mamba2Config):
        super().__init__()
        self.mixer = BiMamba2(config)

    def forward(self, hidden_states: torch.Tensor, attention_mask=None, **kwargs):
        """hidden_states (batch, time, d_model) -> ((batch, time, d_model), None)."""
        valid = _valid_frames(attention_mask, hidden_states)
        lengths = None
        if valid is not None:
            lengths = _require_right_padding(valid).to(torch.float64) / valid.shape[-1]
        return self.mixer(hidden_states, lengths=lengths), None


class BertLinformerSelfAttention(LinformerSelfAttention):
    """Replaces `BertSelfAttention` (`attention.self`); BertSelfOutput is kept.

    A subclass rather than a wrapper so `query`/`key`/`value` keep the teacher's
    parameter names. Called by BertAttention as
    `self(hidden_states, encoder_hidden_states=..., attention_mask=mask, past_key_values=...)`
    and returns `(context, None)`, context (batch, time, hidden) before the output dense.
    """

    def forward(self, hidden_states: torch.Tensor, attention_mask=None, **kwargs):
        """hidden_states (batch, time, hidden) -> ((batch, time, hidden), None)."""
        if kwargs.get("encoder_hidden_states") is not None:
            raise ValueError("the Linformer student has no cross-attention")
        valid = _valid_frames(attention_mask, hidden_states)
        if valid is not None:
            _require_right_padding(valid)
        return super().forward(hidden_states, attention_mask=valid), None


class GPTNeoXMixerAttention(nn.Module):
    """Replaces `GPTNeoXAttention` (incl. its `dense`, whose role the mixer's out_proj takes).

    Called by GPTNeoXLayer as `attention(ln(hidden_states), attention_mask=causal_mask,
    position_ids=..., layer_past=..., use_cache=..., position_embeddings=...)`; the mixer
    is causal, so the mask is only checked for right padding and the rotary embeddings
    are unused. No incremental decoding (KV cache).
    """

    def __init__(self, mixer: nn.Module):
        super().__init__()
        self.mixer = mixer

    def forward(self, hidden_states: torch.Tensor, attention_mask=None, layer_past=None, **kwargs):
        """hidden_states (batch, time, d_model) -> ((batch, time, d_model), None)."""
        if layer_past is not None:
            raise NotImplementedError(
                "the Mamba student keeps no KV cache: call it with use_cache=False "
                "(generate(..., use_cache=False))"
            )
        valid = _valid_frames(attention_mask, hidden_states)
        if valid is not None:
            _require_right_padding(valid)
        return self.mixer(hidden_states), None


# ---------------------------------------------------------------------------------
# Families: detection and per-layer replacement.
# ---------------------------------------------------------------------------------


def _bert_shaped(base: nn.Module) -> bool:
    """True when every encoder layer has BertSelfAttention-shaped `attention.self`."""
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        return False
    for layer in layers:
        self_attention = getattr(getattr(layer, "attention", None), "self", None)
        if not all(
            isinstance(getattr(self_attention, name, None), nn.Linear)
            for name in ("query", "key", "value")
        ):
            return False
    return True


def detect_family(model: PreTrainedModel) -> str:
    """The model's family: "wav2vec2", "bert" or "gpt_neox"; ValueError names others."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in ("wav2vec2", "gpt_neox"):
        return model_type
    if isinstance(model, PreTrainedModel) and _bert_shaped(model.base_model):
        if model.config.is_decoder:
            raise ValueError(
                f"{type(model).__name__} is a BERT-family decoder; the Linformer student "
                "is bidirectional (encoders only)"
            )
        return "bert"
    raise ValueError(
        f"cannot convert {type(model).__name__} (model_type {model_type!r}); supported: "
        "Wav2Vec2Model / Wav2Vec2For* (model_type 'wav2vec2'), BERT-family encoders whose "
        "layers have BertSelfAttention-shaped attention.self (BERT, RoBERTa, ...), and "
        "GPTNeoXModel / GPTNeoXFor* (model_type 'gpt_neox')"
    )


def _lobe_config(cls, **kwargs):
    """Lobe config dataclass from kwargs; lists (from JSON) become tuples."""
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})


def _stored_fields(lobe_config) -> dict:
    """The lobe config minus the sizes taken from the model: what `mixer_config` stores."""
    fields = dataclasses.asdict(lobe_config)
    return {k: v for k, v in fields.items() if k not in _MODEL_DERIVED_FIELDS}


def _replace_wav2vec2(model, mixer: str, overrides: dict, init: str):
    """Swap each encoder layer's `attention` for a BiMamba2 slot.

    Returns (resolved lobe config, {slot: names initialised from attention}, notes).
    """
    config = model.config
    if init == "attention":
        mixer_config = mamba2_config_for_attention_init(
            config.hidden_size, config.num_attention_heads, **overrides
        )
    else:
        mixer_config = _lobe_config(Mamba2Config, d_model=config.hidden_size, **overrides)
    from_attention, notes = {}, []
    for layer in model.base_model.encoder.layers:
        attention = layer.attention
        weight = attention.out_proj.weight
        slot = Wav2Vec2BiMamba2Attention(mixer_config).to(device=weight.device, dtype=weight.dtype)
        slot.train(attention.training)
        if init == "attention":
            init_bimamba2_from_attention(
                slot.mixer,
                attention.q_proj,
                attention.k_proj,
                attention.v_proj,
                attention.out_proj,
                config.num_attention_heads,
            )
            from_attention[slot] = [
                f"mixer.{direction}.{proj}.weight"
                for direction in ("forward_mixer", "backward_mixer")
                for proj in ("in_proj", "out_proj")
            ]
        layer.attention = slot
    if init == "attention":
        notes.append(
            "in_proj x/B/C rows <- V/K/Q and out_proj <- O; in_proj z/dt rows random; "
            "attention biases dropped"
        )
    return mixer_config, from_attention, notes


def _replace_bert(model, mixer: str, overrides: dict, init: str):
    """Swap each layer's `attention.self` for a Linformer slot keeping Q/K/V."""
    config = model.config
    defaults = {
        "max_len": config.max_position_embeddings,
        "attention_dropout": config.attention_probs_dropout_prob,
    }
    mixer_config = _lobe_config(
        LinformerConfig,
        hidden_size=config.hidden_size,
        num_attention_heads=config.num_attention_heads,
        **{**defaults, **overrides},
    )
    layers = model.base_model.encoder.layer
    weight = layers[0].attention.self.query.weight
    shared = None
    if mixer_config.sharing == "layer":
        shared = LinformerProjections(mixer_config).to(device=weight.device, dtype=weight.dtype)
    for layer in layers:
        teacher_self = layer.attention.self
        slot = BertLinformerSelfAttention(mixer_config, projections=shared)
        slot = slot.to(device=weight.device, dtype=weight.dtype).train(teacher_self.training)
        for name in ("query", "key", "value"):
            getattr(slot, name).load_state_dict(getattr(teacher_self, name).state_dict())
        layer.attention.self = slot
    notes = [
        f"Linformer k={mixer_config.k}, max_len={mixer_config.max_len}, "
        f"sharing={mixer_config.sharing!r}; Q/K/V and attention.output kept"
    ]
    return mixer_config, {}, notes


def _replace_gpt_neox(model, mixer: str, overrides: dict, init: str):
    """Swap each layer's `attention` (QKV + dense) for a causal Mamba / Mamba2 slot."""
    config = model.config
    config_cls, mixer_cls = {
        "mamba": (MambaConfig, MambaMixer),
        "mamba2": (Mamba2Config, Mamba2Mixer),
    }[mixer]
    mixer_config = _lobe_config(config_cls, d_model=config.hidden_size, **overrides)
    for layer in model.base_model.layers:
        weight = layer.attention.dense.weight
        slot = GPTNeoXMixerAttention(mixer_cls(mixer_config))
        slot = slot.to(device=weight.device, dtype=weight.dtype).train(layer.attention.training)
        layer.attention = slot
    config.use_cache = False
    notes = ["rotary embeddings unused; use_cache set to False (no KV cache in the student)"]
    return mixer_config, {}, notes


_REPLACERS = {"wav2vec2": _replace_wav2vec2, "bert": _replace_bert, "gpt_neox": _replace_gpt_neox}


def _resolve(family: str, config: StudentConfig) -> str:
    """Concrete mixer for the family; errors for incompatible mixer / init choices."""
    allowed = FAMILY_MIXERS[family]
    mixer = allowed[0] if config.mixer == "auto" else config.mixer
    if mixer not in allowed:
        raise ValueError(f"mixer {mixer!r} does not fit a {family} model; use one of {allowed}")
    if config.init == "attention" and mixer not in ("bimamba2", "linformer"):
        raise ValueError(
            f"init 'attention' exists for bimamba2 (linformer always keeps Q/K/V), not {mixer!r}"
        )
    return mixer


def _declare_shared_parameters(model: nn.Module) -> None:
    """Declare aliases of shared lobe parameters as tied weights, slot by slot.

    `save_pretrained` refuses shared tensors unless they are declared in a module's
    `_tied_weights_keys`; the first name (layer 0) is the one saved, the aliases are
    dropped from the file and restored by the sharing that rebuilding re-creates.
    """
    canonical = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        canonical.setdefault(id(param), name)
    slots = (Wav2Vec2BiMamba2Attention, BertLinformerSelfAttention, GPTNeoXMixerAttention)
    for slot_name, slot in model.named_modules(remove_duplicate=False):
        if not isinstance(slot, slots):
            continue
        tied = {
            name: canonical[id(param)]
            for name, param in slot.named_parameters(remove_duplicate=False)
            if canonical[id(param)] != f"{slot_name}.{name}"
        }
        if tied:
            slot._tied_weights_keys = tied


def _named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """All parameter names, shared ones under every alias."""
    return dict(model.named_parameters(remove_duplicate=False))


def _numel(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _convert_in_place(model: PreTrainedModel, config: StudentConfig) -> ConversionReport:
    """Replace the attention slots of `model` itself; see `convert_to_student`."""
    family = detect_family(model)
    mixer = _resolve(family, config)
    teacher_names = list(_named_tensors(model))
    teacher_parameters = _numel(model)

    lobe_config, from_attention, notes = _REPLACERS[family](
        model, mixer, dict(config.mixer_config), config.init
    )
    stored = StudentConfig(mixer=mixer, mixer_config=_stored_fields(lobe_config), init=config.init)
    model.config.cald_student = stored.to_dict()
    model.config.architectures = [type(model).__name__]  # what rebuilding instantiates
    _declare_shared_parameters(model)

    student_names = list(_named_tensors(model))
    student_set, teacher_set = set(student_names), set(teacher_names)
    module_names = {id(module): name for name, module in model.named_modules()}
    initialised = [
        f"{module_names[id(slot)]}.{name}"
        for slot, names in from_attention.items()
        for name in names
    ]
    return ConversionReport(
        architecture=type(model).__name__,
        family=family,
        mixer=mixer,
        init=config.init,
        replaced=[name for name in teacher_names if name not in student_set],
        kept=[name for name in teacher_names if name in student_set],
        new=[name for name in student_names if name not in teacher_set],
        from_attention=initialised,
        teacher_parameters=teacher_parameters,
        student_parameters=_numel(model),
        notes=notes,
    )


def convert_to_student(
    model: PreTrainedModel, config: StudentConfig | Mapping | None = None
) -> tuple[PreTrainedModel, ConversionReport]:
    """Copy `model` and replace the attention of every layer by a CALD lobe mixer.

    Args:
        model: HF Wav2Vec2*, BERT-family encoder or GPT-NeoX model; never modified.
        config: StudentConfig, its dict, or None (defaults: auto mixer, random init).

    Returns:
        (student, report): the student is the same HF class, with every non-attention
        weight bit-identical to `model`'s and `config.cald_student` set; the report is
        also logged.
    """
    if config is None:
        config = StudentConfig()
    elif isinstance(config, Mapping):
        config = StudentConfig.from_dict(config)
    _resolve(detect_family(model), config)  # fail before the deep copy
    student = copy.deepcopy(model)
    report = _convert_in_place(student, config)
    logger.info("%s", report)
    return student, report


# ---------------------------------------------------------------------------------
# Rebuild, save and load.
# ---------------------------------------------------------------------------------


def build_student_from_config(hf_config: PretrainedConfig) -> PreTrainedModel:
    """Random-weight student from a student config (`cald_student` + `architectures`).

    Instantiates `transformers.<architectures[0]>` and converts it with the stored
    StudentConfig (init "random": the weights are meant to be loaded afterwards). Lobe
    parameters shared between layers come out shared again. `hf_config` is not modified.
    """
    stored = getattr(hf_config, "cald_student", None)
    if stored is None:
        raise ValueError("this config has no 'cald_student' entry: it is not a CALD student")
    architectures = getattr(hf_config, "architectures", None) or []
    model_cls = getattr(transformers, architectures[0], None) if architectures else None
    if model_cls is None:
        raise ValueError(f"cannot rebuild a student for config.architectures = {architectures!r}")
    hf_config = copy.deepcopy(hf_config)
    model = model_cls(hf_config)
    _convert_in_place(model, StudentConfig.from_dict({**stored, "init": "random"}))
    model.config.cald_student = dict(stored)  # keep the record of how it was initialised
    return model


def _read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    """Weights written by `save_pretrained`, single file or sharded."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"no model.safetensors(.index.json) in {folder}")
    state = {}
    for name in files:
        state.update(load_file(folder / name))
    return state


def _hf_key_renamings(model: PreTrainedModel) -> list[WeightRenaming]:
    """The key renamings `save_pretrained` reverts (e.g. GPT-NeoX lm_head -> embed_out).

    The same list HF's own loader applies; weight *converters* (tensor merges) do not
    occur in the supported families.
    """
    transforms = get_model_conversion_mapping(model, add_legacy=False)
    return [
        t for t in transforms if isinstance(t, WeightRenaming) and not isinstance(t, PrefixChange)
    ]


def _load_strict(model: PreTrainedModel, state: Mapping[str, torch.Tensor]) -> None:
    """Load `state` into `model`; every tensor must be covered by a key or a tied alias."""
    renamings = _hf_key_renamings(model)
    state = {apply_renamings(key, renamings): tensor for key, tensor in state.items()}
    expected = model.state_dict()
    groups: dict[int, list[str]] = {}
    for name, tensor in [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]:
        groups.setdefault(id(tensor), []).append(name)
    aliases = {name: names for names in groups.values() for name in names}
    unexpected = sorted(set(state) - set(expected))
    missing = sorted(
        name
        for name in expected
        if name not in state and not any(alias in state for alias in aliases.get(name, ()))
    )
    if missing or unexpected:
        raise RuntimeError(
            f"student weights do not match the rebuilt student: missing keys {missing}, "
            f"unexpected keys {unexpected}"
        )
    for names in groups.values():
        stored = [state[name] for name in names if name in state]
        if any(not torch.equal(stored[0], tensor) for tensor in stored[1:]):
            raise RuntimeError(
                f"tied student keys {names} hold different tensors in the checkpoint "
                "(saved with another parameter sharing?)"
            )
    model.load_state_dict(state, strict=False)


def from_pretrained(folder: str | Path) -> PreTrainedModel:
    """Load a student saved with `student.save_pretrained(folder)` (no teacher needed)."""
    folder = Path(folder)
    model = build_student_from_config(AutoConfig.from_pretrained(folder))
    _load_strict(model, _read_safetensors(folder))
    return model


def load_student(folder_or_config: str | Path | PretrainedConfig) -> PreTrainedModel:
    """A saved student (folder) or a random-weight one (config), e.g. before loading a
    SpeechBrain checkpoint, which holds the plain `state_dict`."""
    if isinstance(folder_or_config, PretrainedConfig):
        return build_student_from_config(folder_or_config)
    return from_pretrained(folder_or_config)


# ---------------------------------------------------------------------------------
# Teacher / student compatibility for layerwise distillation.
# ---------------------------------------------------------------------------------


def _hf_config(model: nn.Module) -> PretrainedConfig:
    """The HF config of `model`, looking through DDP / DataParallel `.module` wrappers."""
    while not isinstance(getattr(model, "config", None), PretrainedConfig):
        if not isinstance(getattr(model, "module", None), nn.Module):
            raise TypeError(f"{type(model).__name__} is not an HF model (no PretrainedConfig)")
        model = model.module
    return model.config


def check_layer_compatibility(
    teacher: PreTrainedModel,
    student: PreTrainedModel,
    distill_layers: Sequence[int] | Mapping[int, int] | None = None,
) -> list[tuple[int, int]]:
    """Check that `student` can distil from `teacher` layer by layer.

    Args:
        teacher, student: HF models (`config.num_hidden_layers`, `config.hidden_size`),
            possibly inside DDP / DataParallel.
        distill_layers: hidden-state indices (0 = embedding output, i = after layer i)
            used on both sides, or a `{student_index: teacher_index}` map; None = every
            layer 1..num_layers.

    Returns:
        The (student_index, teacher_index) pairs.

    Raises:
        ValueError naming each mismatch: hidden size, layer count (when indices are
        shared), or layer map entries out of range.
    """
    student_config, teacher_config = _hf_config(student), _hf_config(teacher)
    n_student, n_teacher = student_config.num_hidden_layers, teacher_config.num_hidden_layers
    d_student, d_teacher = student_config.hidden_size, teacher_config.hidden_size
    problems = []
    if d_student != d_teacher:
        problems.append(f"hidden size: student {d_student} vs teacher {d_teacher}")
    if isinstance(distill_layers, Mapping):
        pairs = [(int(s), int(t)) for s, t in distill_layers.items()]
    else:
        if n_student != n_teacher:
            problems.append(
                f"layer count: student {n_student} vs teacher {n_teacher} "
                "(give distill_layers as a {student_index: teacher_index} map)"
            )
        indices = range(1, n_student + 1) if distill_layers is None else distill_layers
        pairs = [(int(i), int(i)) for i in indices]
    bad = [(s, t) for s, t in pairs if not (0 <= s <= n_student and 0 <= t <= n_teacher)]
    if bad:
        problems.append(
            f"layer map: {bad} out of range (student 0..{n_student}, teacher 0..{n_teacher})"
        )
    if problems:
        raise ValueError("teacher and student are not layer-compatible: " + "; ".join(problems))
    return pairs
