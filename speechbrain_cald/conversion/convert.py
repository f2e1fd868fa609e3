"""`convert_to_student`: replace every attention module of an HF model by a mixer slot.

Generic over the registries: the family (`registry.FAMILIES`) says where the
attention modules are and how a slot sits in their place; the mixer
(`registry.MIXERS`) says how to build the lobe. Every other weight is kept
bit-identical; the config gains a `cald_student` entry (the StudentConfig with the
lobe config fully resolved) from which `build_student_from_config` rebuilds the
same architecture without the teacher.
"""

import copy
import dataclasses
import logging
from collections.abc import Mapping

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from speechbrain_cald.conversion.config import ConversionReport, StudentConfig, keep_layers
from speechbrain_cald.conversion.registry import (
    MIXERS,
    MixerSpec,
    SourceFamily,
    detect_family,
    fitting_mixers,
)
from speechbrain_cald.models import model_class

logger = logging.getLogger(__name__)


def resolve(model: PreTrainedModel, config: StudentConfig) -> tuple[SourceFamily, MixerSpec]:
    """(family, mixer) of a conversion; errors for incompatible mixer / init choices."""
    family = detect_family(model)
    name = family.default_mixer if config.mixer == "auto" else config.mixer
    spec = MIXERS[name]
    fitting = fitting_mixers(family)
    if not spec.fits(family):
        direction = ("bidirectional", "causal")
        raise ValueError(
            f"mixer {name!r} does not fit a {family.name} model: the mixer is "
            f"{direction[spec.causal]}, the model's attention {direction[family.causal]} "
            f"(mixers that fit: {fitting})"
        )
    if config.positions == "drop" and not family.can_drop_positions(model):
        raise ValueError(
            f"positions 'drop': a {type(model).__name__} ({family.name}) adds no absolute "
            "positions a student could drop (keep them: positions 'keep')"
        )
    if config.init == "attention" and spec.init_from_attention is None:
        with_init = [m for m in fitting if MIXERS[m].init_from_attention] or "none"
        raise ValueError(
            f"init 'attention' does not exist for {name!r} (mixers with one here: {with_init}"
            "; linformer always keeps Q/K/V)"
        )
    return family, spec


def _replace_slots(model, family: SourceFamily, spec: MixerSpec, config: StudentConfig):
    """Swap the attention of each layer not kept (`config.keep_attention`) for a slot;
    returns (lobe config, {mixer module: parameter names initialised from attention},
    the kept layer indices)."""
    overrides, init = dict(config.mixer_config), config.init
    sizes = family.sizes(model.config)
    lobe_config = spec.make_config(sizes, overrides, init)
    layers = family.layers(model)
    keep = keep_layers(config.keep_attention, len(layers))
    if keep and keep[-1] >= len(layers):
        raise ValueError(
            f"keep_attention {keep}: the model has {len(layers)} layers (0..{len(layers) - 1})"
        )
    if len(keep) == len(layers):
        raise ValueError(f"keep_attention keeps all {len(layers)} layers: nothing to convert")
    if keep:
        family.check_keep_attention(model, keep)
    shared, from_attention = {}, {}
    for index, layer in enumerate(layers):
        if index in keep:
            continue
        parent, name = family.slot_parent(layer)
        attention = getattr(parent, name)
        weight = next(attention.parameters())
        mixer = spec.build(lobe_config, shared)
        if init == "attention":
            projections = family.attention_projections(attention)
            if projections is None:
                raise ValueError(f"the {family.name} family gives no Q/K/V/O for init 'attention'")
            from_attention[mixer] = spec.init_from_attention(
                mixer, *projections, sizes["num_heads"]
            )
        slot = family.make_slot(mixer, spec, attention)
        slot = slot.to(device=weight.device, dtype=weight.dtype).train(attention.training)
        setattr(parent, name, slot)
    return lobe_config, from_attention, keep


def student_slots(model: nn.Module) -> list[nn.Module]:
    """The modules a conversion put in the attention slots of `model`, layer by layer
    (empty for a model that is not a CALD student)."""
    if not getattr(model.config, "cald_student", None):
        return []
    family, kept = detect_family(model), set(kept_attention(model))
    return [
        family.slot(layer) for index, layer in enumerate(family.layers(model)) if index not in kept
    ]


def set_mixer_options(model: nn.Module, check_only: bool = False, **options) -> nn.Module:
    """Change how a trained CALD student's mixers compute, not their parameters: the
    lobe config's `INFERENCE_FIELDS` (e.g. `Mamba2Config.max_timescale`), on every mixer
    and in the stored `cald_student` config, so saving, exporting and reloading keep
    them. Returns `model`. ValueError for a model that is not a CALD student, a field
    its mixer does not let change, or a value the lobe config refuses; `check_only`:
    those checks alone, nothing changed."""
    stored = getattr(model.config, "cald_student", None)
    if not stored:
        raise ValueError(
            f"mixer options {sorted(options)}: a {type(model).__name__} that is not a CALD "
            "student has no mixers to set"
        )
    spec = MIXERS[stored["mixer"]]
    settable = getattr(spec.config_class, "INFERENCE_FIELDS", ())
    refused = sorted(set(options) - set(settable))
    if refused:
        raise ValueError(
            f"mixer options {refused}: not settable on a trained {spec.name!r} student "
            f"(settable: {list(settable)})"
        )
    configs = {
        id(module.config): module.config
        for slot in student_slots(model)
        for module in slot.modules()
        if isinstance(getattr(module, "config", None), spec.config_class)
    }
    for lobe_config in configs.values():
        dataclasses.replace(lobe_config, **options)  # the lobe's own checks, before any change
    if check_only:
        return model
    for lobe_config in configs.values():
        for name, value in options.items():
            setattr(lobe_config, name, value)
    model.config.cald_student = {
        **stored,
        "mixer_config": {**stored["mixer_config"], **options},
    }
    return model


def kept_attention(model: nn.Module) -> list[int]:
    """The layers of a CALD student that kept their attention (`StudentConfig.keep_attention`;
    empty for a model converted whole or not converted)."""
    stored = getattr(model.config, "cald_student", None) or {}
    return list(stored.get("keep_attention", []))


def _declare_shared_parameters(model: nn.Module, slots: list[nn.Module]) -> None:
    """Declare aliases of shared lobe parameters as tied weights, slot by slot.

    `save_pretrained` refuses shared tensors unless they are declared in a module's
    `_tied_weights_keys`; the first name (layer 0) is the one saved, the aliases are
    dropped from the file and restored by the sharing that rebuilding re-creates.
    """
    canonical = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        canonical.setdefault(id(param), name)
    names = {id(module): name for name, module in model.named_modules(remove_duplicate=False)}
    for slot in slots:
        tied = {
            name: canonical[id(param)]
            for name, param in slot.named_parameters(remove_duplicate=False)
            if canonical[id(param)] != f"{names[id(slot)]}.{name}"
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
    family, spec = resolve(model, config)
    teacher_names = list(_named_tensors(model))
    teacher_parameters = _numel(model)

    lobe_config, from_attention, keep = _replace_slots(model, family, spec, config)
    stored = StudentConfig(
        mixer=spec.name,
        mixer_config=spec.stored_fields(lobe_config, family.sizes(model.config)),
        init=config.init,
        positions=config.positions,
        keep_attention=keep,  # the indices, also when a rule chose them
    )
    model.config.cald_student = stored.to_dict()
    model.config.architectures = [type(model).__name__]  # what rebuilding instantiates
    family.after_conversion(model)
    _declare_shared_parameters(model, student_slots(model))

    student_names = list(_named_tensors(model))
    student_set, teacher_set = set(student_names), set(teacher_names)
    module_names = {id(module): name for name, module in model.named_modules()}
    initialised = [
        f"{module_names[id(mixer)]}.{name}"
        for mixer, names in from_attention.items()
        for name in names
    ]
    return ConversionReport(
        architecture=type(model).__name__,
        family=family.name,
        mixer=spec.name,
        init=config.init,
        replaced=[name for name in teacher_names if name not in student_set],
        kept=[name for name in teacher_names if name in student_set],
        new=[name for name in student_names if name not in teacher_set],
        from_attention=initialised,
        teacher_parameters=teacher_parameters,
        student_parameters=_numel(model),
        notes=family.notes(model, spec, lobe_config, config.init)
        + ([spec.init_note] if config.init == "attention" and spec.init_note else [])
        + ([f"attention kept in layers {keep}"] if keep else []),
    )


def convert_to_student(
    model: PreTrainedModel, config: StudentConfig | Mapping | None = None
) -> tuple[PreTrainedModel, ConversionReport]:
    """Copy `model` and replace the attention of every layer by a CALD lobe mixer.

    Args:
        model: an HF model of a registered family (Wav2Vec2*, BERT-family encoder,
            GPT-NeoX, ...); never modified.
        config: StudentConfig, its dict, or None (defaults: auto mixer, random init).

    Returns:
        (student, report): the student is the same HF class, with every non-attention
        weight bit-identical to `model`'s and `config.cald_student` set; the report's
        first line is logged (the whole of it at debug level; `str(report)`).
    """
    if config is None:
        config = StudentConfig()
    elif isinstance(config, Mapping):
        config = StudentConfig.from_dict(config)
    resolve(model, config)  # fail before the deep copy
    student = copy.deepcopy(model)
    report = _convert_in_place(student, config)
    logger.info("%s", str(report).splitlines()[0])
    logger.debug("%s", report)
    return student, report


def build_student_from_config(hf_config: PretrainedConfig) -> PreTrainedModel:
    """Random-weight student from a student config (`cald_student` + `architectures`).

    Instantiates the class `architectures[0]` names (`models.model_class`) and
    converts it with the stored StudentConfig (init "random": the weights are meant to
    be loaded afterwards). Lobe parameters shared between layers come out shared
    again. `hf_config` is not modified.
    """
    stored = getattr(hf_config, "cald_student", None)
    if stored is None:
        raise ValueError("this config has no 'cald_student' entry: it is not a CALD student")
    architectures = getattr(hf_config, "architectures", None) or []
    if not architectures:
        raise ValueError(f"cannot rebuild a student for config.architectures = {architectures!r}")
    model_cls = model_class(architectures[0])
    hf_config = copy.deepcopy(hf_config)
    model = model_cls(hf_config)
    _convert_in_place(model, StudentConfig.from_dict({**stored, "init": "random"}))
    model.config.cald_student = dict(stored)  # keep the record of how it was initialised
    return model
