"""What a conversion is asked to do (`StudentConfig`) and what it did (`ConversionReport`)."""

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from speechbrain_cald.conversion.registry import MIXERS

INITS = ("random", "attention")
# How keep_attention {count, by} chooses the layers: "uniform" at conversion,
# "ablation" measured on training batches before it (`layer_selection`).
KEEP_METHODS = ("uniform", "ablation")
POSITIONS = ("keep", "drop")


@dataclass
class StudentConfig:
    """What the student is made of.

    Attributes:
        mixer: "auto" (the family's default mixer: speech encoders -> bimamba2, BERT
            family -> linformer, gpt_neox -> mamba) or a registered mixer that fits the
            model (`registry.MIXERS`, `MixerSpec.fits`: bidirectional mixers for
            encoders, causal ones for decoders).
        mixer_config: overrides of the lobe config (Mamba2Config, LinformerConfig,
            MambaConfig, ...) except the sizes taken from the model.
        init: "random" or "attention" (mixers with an attention init, e.g. bimamba2:
            V -> x, K -> B, Q -> C, O -> out_proj, shape-exact with ngroups = heads,
            d_state = headdim = head size). Linformer always keeps the teacher's Q/K/V,
            whatever `init` says.
        positions: "keep" the source model's absolute position embeddings, or "drop"
            them (families that add them before the first layer, e.g. Whisper's
            encoder): a recurrent mixer carries order itself, and positions it never
            saw in training (inputs longer than the training utterances) are an input
            shift it cannot have learned.
        keep_attention: indices of the layers that keep their attention, exactly as in
            the source (a hybrid student); every other layer is converted. Empty: all
            converted (the paper's student). Or a rule, {"count": k, "by": "uniform"}
            (the middle layer of each of k equal spans, `keep_layers`) or {"count": k,
            "by": "ablation"} (the k layers whose attention the model depends on most,
            measured on training batches by the recipes: `layer_selection`); the chosen
            indices are what the student records, so a reloaded model needs no flag.
    """

    mixer: str = "auto"
    mixer_config: dict = field(default_factory=dict)
    init: str = "random"
    positions: str = "keep"
    keep_attention: list | dict = field(default_factory=list)

    def __post_init__(self):
        if self.mixer != "auto" and self.mixer not in MIXERS:
            choices = ("auto", *MIXERS)
            raise ValueError(f"StudentConfig.mixer must be one of {choices}, got {self.mixer!r}")
        if self.init not in INITS:
            raise ValueError(f"StudentConfig.init must be one of {INITS}, got {self.init!r}")
        if isinstance(self.keep_attention, Mapping) and not self.keep_attention:
            self.keep_attention = []  # {}: none (YAML defaults a rule can be merged into)
        if isinstance(self.keep_attention, Mapping):
            self.keep_attention = dict(self.keep_attention)
            count, by = self.keep_attention.get("count"), self.keep_attention.get("by")
            if set(self.keep_attention) != {"count", "by"} or by not in KEEP_METHODS:
                raise ValueError(
                    f"StudentConfig.keep_attention: {self.keep_attention!r}; give layer "
                    f"indices or {{count: k, by: {' | '.join(KEEP_METHODS)}}}"
                )
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise ValueError(f"StudentConfig.keep_attention count: >= 1, got {count!r}")
            return
        keep = list(self.keep_attention or [])
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in keep):
            raise ValueError(f"StudentConfig.keep_attention: layer indices >= 0, got {keep!r}")
        if len(set(keep)) != len(keep):
            raise ValueError(f"StudentConfig.keep_attention: {keep!r} repeats a layer")
        self.keep_attention = sorted(keep)
        if self.positions not in POSITIONS:
            raise ValueError(
                f"StudentConfig.positions must be one of {POSITIONS}, got {self.positions!r}"
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
        return cls(
            **{
                **data,
                "mixer_config": dict(data.get("mixer_config", {})),
                "keep_attention": data.get("keep_attention", []),
            }
        )


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


def check_keep_count(count: int, n_layers: int) -> None:
    """ValueError unless a keep_attention rule's `count` leaves a layer to convert."""
    if count >= n_layers:
        raise ValueError(f"keep_attention count {count}: the model has {n_layers} layers")


def keep_layers(keep, n_layers: int) -> list[int]:
    """The layer indices `keep` (StudentConfig.keep_attention) names in a stack of
    `n_layers`: a list as given, or {"count": k, "by": "uniform"}: the middle layer of
    each of k equal spans (k = 1 of 6: [3]; 2 of 6: [1, 4]; 1 of 4: [2])."""
    if not isinstance(keep, Mapping):
        return list(keep)
    count = keep["count"]
    if keep["by"] != "uniform":
        raise ValueError(
            f"keep_attention by {keep['by']!r} is measured on data before conversion "
            "(layer_selection.resolve_keep_attention, run by the recipes); give indices here"
        )
    check_keep_count(count, n_layers)
    return [((2 * j + 1) * n_layers) // (2 * count) for j in range(count)]


def _summary_line(label: str, names: list[str]) -> str:
    """`label: N tensors: pattern, ...` with layer indices collapsed to `*`."""
    patterns = list(dict.fromkeys(re.sub(r"\.\d+\.", ".*.", name) for name in names))
    shown = ", ".join(patterns[:8]) + (
        f", ... ({len(patterns) - 8} more)" if len(patterns) > 8 else ""
    )
    return f"  {label}: {len(names)} tensors" + (f": {shown}" if names else "")
