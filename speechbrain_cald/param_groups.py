"""Optimizer parameter groups by role, each with its own learning rate under one schedule.

SpeechBrain's wav2vec2 / Whisper recipes give the pretrained encoder and the new layers
their own learning rates (`lr`, `lr_wav2vec`). Here one optimizer holds one group per
role, so that one LR schedule and one checkpoint entry serve them all:

- ``pretrained``: the weights the model keeps from its source (embeddings, feed-forward
  blocks, norms; in a std run also its attention);
- ``mixers``: what conversion put in the attention slots (`conversion.student_slots`);
- ``heads``: the task's output layers: the HF model's layers outside its base model
  (``lm_head``, ``classifier``, ...) and the task heads outside the HF model.

YAML: ``lr_groups: {pretrained: 1.0e-4, heads: 1.0e-3}``; a role not named uses ``lr``;
``null`` (the paper recipes' default) keeps the reference's one group. A schedule sets
one LR for every group (SpeechBrain's convention); `scaled_groups` around its call gives
each group its ``lr_scale`` (its LR / ``lr``) of it. The student's optimizer
(`brain.CALDBrain`) and a trajectory teacher's (`guidance.Trajectory`) use them alike.
"""

import contextlib
import logging

from speechbrain_cald.conversion import student_slots

logger = logging.getLogger(__name__)
ROLES = ("pretrained", "mixers", "heads")


def parameter_roles(model, heads=None):
    """{role: [trainable parameters]} of an HF `model` (transformer or student) and the
    task `heads` (a module or None); every parameter in exactly one role."""
    mixers = {id(p) for slot in student_slots(model) for p in slot.parameters()}
    base = model.base_model
    in_base = {id(p) for p in base.parameters()} if base is not model else None
    roles = {role: [] for role in ROLES}
    for param in model.parameters():
        if not param.requires_grad:
            continue
        if id(param) in mixers:
            roles["mixers"].append(param)
        elif in_base is not None and id(param) not in in_base:
            roles["heads"].append(param)
        else:
            roles["pretrained"].append(param)
    if heads is not None:
        roles["heads"] += [p for p in heads.parameters() if p.requires_grad]
    return roles


def parameter_groups(model, heads, lr, lr_groups):
    """Optimizer groups `[{params, lr, lr_scale, role}]`, one per non-empty role, the
    LR of a role from `lr_groups` ({role: lr}), else `lr`. ValueError naming an
    unknown role or a non-positive LR."""
    unknown = sorted(set(lr_groups) - set(ROLES))
    if unknown:
        raise ValueError(f"lr_groups: unknown role(s) {unknown}; the roles are {list(ROLES)}")
    bad = {role: value for role, value in lr_groups.items() if not float(value) > 0}
    if bad or not float(lr) > 0:
        raise ValueError(f"lr_groups: learning rates must be > 0 (lr {lr}, groups {bad})")
    groups = []
    for role, params in parameter_roles(model, heads).items():
        if not params:
            continue
        role_lr = float(lr_groups.get(role, lr))
        groups.append({"params": params, "lr": role_lr, "lr_scale": role_lr / lr, "role": role})
        logger.info(
            "parameter group %s: %.2fM parameters, lr %g (%g x lr)",
            role,
            sum(p.numel() for p in params) / 1e6,
            role_lr,
            role_lr / lr,
        )
    return groups


@contextlib.contextmanager
def scaled_groups(optimizer):
    """Around a schedule's call: groups with an `lr_scale` enter at the schedule's own
    LR (their LR / scale: one value for all, as the schedule set it last) and leave at
    scale x the LR the schedule sets, so each group keeps its ratio to `lr` at every
    step, also under a schedule that leaves the LR unchanged."""
    scaled = [g for g in optimizer.param_groups if "lr_scale" in g]
    for group in scaled:
        group["lr"] /= group["lr_scale"]
    try:
        yield
    finally:
        for group in scaled:
            group["lr"] *= group["lr_scale"]
