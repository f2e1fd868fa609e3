"""The two registries of conversion: student mixers and source-model families.

A *mixer* (`MixerSpec`) is a lobe that replaces attention: its config dataclass, how
to build it, whether it is causal, which of the model's sizes it takes, and optionally
how to initialise it from the attention it replaces (and what the report says about
that). A *family* (`SourceFamily`) is a kind of HF model: how to recognise it, whether
its attention is causal, its sizes in generic names (`SourceFamily.sizes`), where its
attention modules sit, how the HF attention call (and its mask) reaches the mixer, how
to freeze its front end, and what the report says. A mixer fits every family whose
attention has its direction (`fits`): no list names them. Adding either is one
`register_mixer` / `register_family` call; nothing else in the package changes.
"""

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from speechbrain_cald.lobes.masking import valid_mask

# --------------------------------------------------------------------------- mixers


@dataclass(frozen=True)
class MixerSpec:
    """One kind of student mixer.

    name: the `StudentConfig.mixer` value.
    config_class: the lobe's config dataclass.
    build: (config, shared) -> module. `shared` is a dict the layers of one
        conversion share (e.g. Linformer projections shared by every layer).
    causal: a causal mixer is called `mixer(hidden_states)` (right padding never
        reaches a valid frame); a bidirectional one `mixer(hidden_states,
        attention_mask=valid)` with `valid` the boolean `(batch, time)` mask. It fits
        the families whose attention has the same direction.
    sizes: the family's generic sizes (`SourceFamily.sizes`) -> the lobe-config fields
        taken from the model (never stored in `mixer_config`), e.g. `{"d_model":
        sizes["hidden_size"]}`.
    defaults: generic sizes -> lobe-config defaults taken from the model that
        `mixer_config` may override (e.g. Linformer's max_len); a None default (the
        model gives none) must be set in `mixer_config`.
    attention_config: optional (lobe sizes, heads, overrides) -> lobe config shaped for
        `init_from_attention` (StudentConfig.init "attention").
    init_from_attention: optional (mixer, q, k, v, o, heads) -> names of the mixer's
        parameters (relative to it) whose values now come from the attention weights.
    init_note: what `init_from_attention` copies, for the conversion report.
    """

    name: str
    config_class: type
    build: Callable
    causal: bool
    sizes: Callable = lambda sizes: {"d_model": sizes["hidden_size"]}
    defaults: Callable = lambda sizes: {}
    attention_config: Callable | None = None
    init_from_attention: Callable | None = None
    init_note: str = ""

    def fits(self, family) -> bool:
        """Whether this mixer can take the attention slots of `family`'s models."""
        return self.causal == family.causal

    def make_config(self, sizes: dict, overrides: dict, init: str):
        """The resolved lobe config for a model of generic `sizes` (`SourceFamily.sizes`)."""
        lobe_sizes = self.sizes(sizes)
        known = {f.name for f in dataclasses.fields(self.config_class)}
        if set(overrides) - known:
            raise ValueError(
                f"mixer_config {sorted(set(overrides) - known)}: not fields of mixer "
                f"{self.name!r} ({self.config_class.__name__}: {sorted(known - set(lobe_sizes))}); "
                "a recipe's student_mixer_config belongs to its student_mixer"
            )
        derived = set(lobe_sizes).intersection(overrides)
        if derived:
            raise ValueError(
                f"mixer_config must not set {sorted(derived)}: they are taken from the model"
            )
        defaults = self.defaults(sizes)
        unknown = sorted(k for k, v in defaults.items() if v is None and k not in overrides)
        if unknown:
            raise ValueError(
                f"mixer {self.name!r} needs {unknown} in mixer_config: the model gives none"
            )
        fields = {**defaults, **overrides}
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
        if init == "attention":
            return self.attention_config(lobe_sizes, sizes["num_heads"], fields)
        return self.config_class(**lobe_sizes, **fields)

    def stored_fields(self, lobe_config, sizes: dict) -> dict:
        """The lobe config minus the sizes taken from the model: what `mixer_config` stores."""
        derived = set(self.sizes(sizes))
        return {k: v for k, v in dataclasses.asdict(lobe_config).items() if k not in derived}


MIXERS: dict[str, MixerSpec] = {}


def register_mixer(spec: MixerSpec) -> MixerSpec:
    """Make `spec` available as `StudentConfig(mixer=spec.name)`; returns it."""
    MIXERS[spec.name] = spec
    return spec


# --------------------------------------------------------------------------- slots


def valid_frames(attention_mask, hidden_states: torch.Tensor) -> torch.Tensor | None:
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


def is_right_padded(valid: torch.Tensor) -> bool:
    """Whether every row of a `(batch, time)` mask is its valid frames, then padding."""
    prefix = torch.arange(valid.shape[-1], device=valid.device)[None, :] < valid.sum(
        -1, keepdim=True
    )
    return torch.equal(valid, prefix)


class MixerSlot(nn.Module):
    """An attention slot: the HF attention call signature outside, a mixer inside.

    Called as `slot(hidden_states, attention_mask=mask, **kwargs) -> (output, None)`;
    the HF mask becomes one boolean valid-frame mask. A bidirectional mixer gets it
    (right padding only: each utterance is reversed within its own length); a causal
    one needs it only for padding before valid frames (left-padded prompts), which it
    reads as zeros. Families whose layers expect more outputs subclass it.
    """

    def __init__(self, mixer: nn.Module, causal: bool):
        super().__init__()
        self.mixer = mixer
        self.causal = causal

    def mix(self, hidden_states: torch.Tensor, attention_mask=None) -> torch.Tensor:
        """hidden_states (batch, time, d_model) -> (batch, time, d_model)."""
        valid = valid_frames(attention_mask, hidden_states)
        if valid is None or (self.causal and is_right_padded(valid)):
            return self.mixer(hidden_states)
        if not self.causal and not is_right_padded(valid):
            raise ValueError("CALD students need right padding (valid frames first in every row)")
        return self.mixer(hidden_states, attention_mask=valid)

    def forward(self, hidden_states: torch.Tensor, attention_mask=None, **kwargs):
        return self.mix(hidden_states, attention_mask), None


# --------------------------------------------------------------------------- families


class SourceFamily:
    """How one family of HF models is converted. Subclass, set the attributes, and
    register an instance with `register_family`.

    name: the family's name in reports; description: the models it covers. causal:
    whether its attention is causal (decoders), which decides the mixers that fit
    (`MixerSpec.fits`). default_mixer: what StudentConfig.mixer "auto" picks.
    slot_attribute: the (dotted) attribute of each layer that holds the attention.
    """

    name: str = ""
    description: str = ""  # the models it covers, for error messages
    causal: bool = False
    default_mixer: str = "bimamba2"
    slot_attribute: str = "attention"

    def sizes(self, config) -> dict:
        """The model's sizes in the generic names mixers read: hidden_size, num_heads,
        max_positions (None where the model has no maximum length) and
        attention_dropout. Default: HF's common config names; override where a family
        names them otherwise."""
        dropout = next(
            (
                getattr(config, n)
                for n in ("attention_probs_dropout_prob", "attention_dropout")
                if getattr(config, n, None) is not None
            ),
            0.0,
        )
        return {
            "hidden_size": config.hidden_size,
            "num_heads": config.num_attention_heads,
            "max_positions": getattr(config, "max_position_embeddings", None),
            "attention_dropout": dropout,
        }

    def freeze_front_end(self, model) -> None:
        """Freeze the layers before the first attention layer (speech: the CNN feature
        encoder), for `freeze_feature_encoder` in the recipes. Default: HF's
        `freeze_feature_encoder()`; ValueError for a model without one."""
        freeze = getattr(model, "freeze_feature_encoder", None)
        if freeze is None:
            raise ValueError(
                f"{type(model).__name__} ({self.name or 'unregistered'} family) has no "
                "freeze_feature_encoder(): set freeze_feature_encoder: False, or give its "
                "family a freeze_front_end"
            )
        freeze()

    def matches(self, model) -> bool:
        """Whether `model` (an HF PreTrainedModel) belongs to this family."""
        raise NotImplementedError

    def layers(self, model) -> Sequence[nn.Module]:
        """The layers whose `slot_attribute` is replaced, in order."""
        raise NotImplementedError

    def slot_parent(self, layer: nn.Module) -> tuple[nn.Module, str]:
        """(module holding the attention slot, its attribute name) in `layer`, from the
        dotted `slot_attribute`."""
        *path, last = self.slot_attribute.split(".")
        for name in path:
            layer = getattr(layer, name)
        return layer, last

    def slot(self, layer: nn.Module) -> nn.Module:
        """The module in `layer`'s attention slot (the attention, or what replaced it)."""
        return getattr(*self.slot_parent(layer))

    def attention_projections(self, attention):
        """(q, k, v, o) nn.Linear of an attention module, for init "attention"; None
        when the family cannot provide them."""
        return None

    def can_drop_positions(self, model) -> bool:
        """Whether `model` adds absolute position embeddings a student may drop
        (StudentConfig positions "drop"; the model reads that choice from its config's
        `cald_student`). Default: no."""
        return False

    def check_keep_attention(self, model, keep: list[int]) -> None:
        """ValueError when the layers `keep` cannot keep their attention beside
        converted ones (StudentConfig.keep_attention). Default: any layers can."""

    def make_slot(self, mixer: nn.Module, spec: MixerSpec, attention: nn.Module) -> nn.Module:
        """The module that takes the attention's place (default: `MixerSlot`)."""
        return MixerSlot(mixer, spec.causal)

    def notes(self, model, spec: MixerSpec, lobe_config, init: str) -> list[str]:
        """Remarks for the conversion report (what else changed, what was dropped)."""
        return []

    def after_conversion(self, model) -> None:
        """Adjust the converted model's config (e.g. caches the student cannot use)."""


FAMILIES: dict[str, SourceFamily] = {}


def register_family(family: SourceFamily) -> SourceFamily:
    """Make `family` detectable by `detect_family` (families registered later are
    tried first, so a specific family can take over from a general one)."""
    FAMILIES.pop(family.name, None)
    FAMILIES[family.name] = family
    return family


def fitting_mixers(family: SourceFamily) -> list[str]:
    """The registered mixers that fit `family` (`MixerSpec.fits`)."""
    return [name for name, spec in MIXERS.items() if spec.fits(family)]


def freeze_front_end(model) -> None:
    """Freeze `model`'s front end as its family says (`SourceFamily.freeze_front_end`;
    an unregistered model: the default)."""
    try:
        family = detect_family(model)
    except ValueError:
        family = SourceFamily()
    family.freeze_front_end(model)


def detect_family(model) -> SourceFamily:
    """The registered family of `model`; ValueError naming the supported ones."""
    for family in reversed(list(FAMILIES.values())):
        if family.matches(model):
            return family
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    supported = "; ".join(f"{f.name}: {f.description}" for f in FAMILIES.values())
    raise ValueError(
        f"cannot convert {type(model).__name__} (model_type {model_type!r}); supported: "
        f"{supported} (register a SourceFamily for others)"
    )
