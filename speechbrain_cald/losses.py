"""Task-agnostic CALD distillation terms (docs/CALD_METHOD.md, section 1).

Every term is masked: padded frames / tokens never contribute, whatever they hold.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel


def _masked_mean(per_item, mask):
    """Sum `per_item` (batch, time) over valid positions / their count; mean if no mask."""
    if mask is None:
        return per_item.mean()
    return per_item.where(mask, 0.0).sum() / mask.sum().clamp(min=1)


def kd_loss(student_logits, teacher_logits, mask=None, temperature=2.0):
    """KL(teacher || student) of the output distributions at `temperature`.

    As in the reference: no temperature**2 factor. Logits are (batch, time, classes)
    with `mask` (batch, time), True = valid, or utterance-level (batch, classes) with
    `mask=None` (mean over the batch).
    """
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)
    return _masked_mean(kl, mask)


def distilled_layers(n_hidden, layers=None, skip_first=1, skip_last=0, kept=()):
    """{student index: teacher index} of the hidden states to distil.

    `n_hidden`: number of HF `hidden_states` (layers + 1; index 0 = embedding output).
    `layers`: explicit indices distilled on both sides, or a {student: teacher} map;
    None: indices skip_first .. n_hidden - 1 - skip_last. Speech (ref): skip_first 1
    (no embedding output). NLP (ref): skip_first 0. LM (ref `distill_skip_last=1`):
    skip_last 1, because HF's last hidden state of GPT-NeoX is the final-LayerNorm
    output, not layer L's. `kept`: layers of a hybrid student that kept their
    attention (`conversion.kept_attention`): their outputs (hidden state index + 1) get
    no target of their own; they still feed the next converted layer.
    """
    if layers is None:
        layers = range(skip_first, n_hidden - skip_last)
    pairs = dict(layers) if isinstance(layers, Mapping) else {i: i for i in layers}
    pairs = {s: t for s, t in pairs.items() if s - 1 not in set(kept)}
    if not pairs:
        raise ValueError(f"no layer to distil among {n_hidden} hidden states")
    return pairs


def layerwise_distillation_loss(
    student_hidden,
    teacher_hidden,
    mask=None,
    layers=None,
    layer_norm=True,
    skip_first=1,
    skip_last=0,
    reduction="mean",
    kept=(),
):
    """Hidden-state MSE per distilled layer, averaged (or summed) over layers.

    `student_hidden` / `teacher_hidden`: sequences of (batch, time, d) tensors as in
    HF `hidden_states` (index 0 = embedding output); the layers are
    `distilled_layers(len(teacher_hidden), layers, skip_first, skip_last, kept)`. Each
    layer: optional parameter-free LayerNorm over features, MSE averaged over
    features, summed over valid frames / their count. `reduction` over layers: "mean"
    (speech and LM reference) or "sum" (NLP reference, raw states, no LayerNorm).
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"ld reduction must be 'mean' or 'sum', not {reduction!r}")
    terms = []
    pairs = distilled_layers(len(teacher_hidden), layers, skip_first, skip_last, kept)
    for i, j in pairs.items():
        s, t = student_hidden[i].float(), teacher_hidden[j].float()
        if layer_norm:
            s = F.layer_norm(s, s.shape[-1:])
            t = F.layer_norm(t, t.shape[-1:])
        terms.append(_masked_mean(((s - t) ** 2).mean(-1), mask))
    stacked = torch.stack(terms)
    return stacked.sum() if reduction == "sum" else stacked.mean()


@dataclass
class CALDLossWeights:
    """Weights of L = task * L_task + kd * L_KD + ld * L_LD."""

    task: float = 1.0
    kd: float = 0.0
    ld: float = 0.0

    @property
    def guided(self):
        """Whether a teacher is needed (any distillation weight non-zero)."""
        return self.kd != 0 or self.ld != 0

    def combine(self, task, kd=None, ld=None):
        """Weighted total and the separate terms as a dict (task, kd, ld, total).

        A term that is not computed (None) counts as 0.
        """
        zero = torch.zeros((), device=task.device)
        kd = zero if kd is None else kd
        ld = zero if ld is None else ld
        total = self.task * task + self.kd * kd + self.ld * ld
        return {"task": task, "kd": kd, "ld": ld, "total": total}


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
