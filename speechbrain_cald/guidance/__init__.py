"""Guidance strategies (docs/CALD_METHOD.md, section 2), one object per mode.

Rooms: `base` (the interface), `modes` (std, unguided, target, src_init, waypoint,
hybrid), `trajectory`; `from_mode` here builds any of them from YAML keys.

A strategy answers three questions for the Brain: where the student starts
(`init_student`), who the teacher is at optimizer step s (`teacher(s)`, None when
there is none; `teacher_forward` runs it on a batch) and the loss weights at step s
(`weights(s)`). The Brain hands it what it needs once (`bind`: an export callback,
the gradient-accumulation factor); `on_step_end` runs after every optimizer step
(trajectory teacher update, std waypoint saving). Steps count completed optimizer
steps: during the batches that make step s + 1, s is the current step. Teachers
live outside Brain.modules, run under no_grad in the mode set by
`teacher_train_mode` (default eval; the reference runs them in train mode, as the
recipes do), and are frozen except for the trajectory teacher's own updates. A
strategy's state is saved and restored by SpeechBrain's Checkpointer (it is one
recoverable).

Selected in YAML with ``!new:``, e.g.::

    guidance: !new:speechbrain_cald.guidance.Target
        teacher: !ref <std_folder>/best
        student_config: !ref <student_config>
        weights: !new:speechbrain_cald.losses.CALDLossWeights {kd: 1.0, ld: 15.0}

or, in the recipes, with `from_mode` (one YAML, the mode as an override).
"""

from speechbrain_cald.guidance.base import Guidance, waypoint_path
from speechbrain_cald.guidance.modes import Hybrid, SrcInit, Std, Target, Unguided, Waypoint
from speechbrain_cald.guidance.trajectory import Trajectory

__all__ = [
    "Guidance",
    "Hybrid",
    "SrcInit",
    "Std",
    "Target",
    "Trajectory",
    "Unguided",
    "Waypoint",
    "from_mode",
    "mode_overrides",
    "waypoint_path",
]

MODES = ("std", "unguided", "target", "src_init", "trajectory", "waypoint")
GUIDED_MODES = MODES[2:]
HYBRID = "hybrid"  # a run, not a strategy: a guided mode with `hybrid_switch_step` set
RUN_MODES = (*MODES, HYBRID)  # the runs of a whole workflow, std first


def mode_overrides(mode, hybrid_switch_step=None, hybrid_of="target"):
    """The `train.py` overrides of one run of RUN_MODES: `--mode <mode>`, or for
    "hybrid" the guided mode `hybrid_of` with L_LD off from `hybrid_switch_step`,
    run under the name "hybrid"."""
    if mode == HYBRID:
        if hybrid_switch_step is None:
            raise ValueError("the hybrid run needs a hybrid_switch_step")
        switch = ["--hybrid_switch_step", str(hybrid_switch_step)]
        return ["--mode", hybrid_of, *switch, "--run_name", HYBRID]
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {RUN_MODES}")
    return ["--mode", mode]


def from_mode(
    mode,
    pretrained,
    student_config=None,
    weights=None,
    teacher_folder=None,
    waypoint_folder=None,
    waypoint_every=None,
    trajectory_opt_class=None,
    trajectory_update_every=1,
    trajectory_lr_scheduler=None,
    trajectory_max_grad_norm=None,
    trajectory_lr=None,
    trajectory_lr_groups=None,
    hybrid_switch_step=None,
    hybrid_disable_kd=False,
    teacher_train_mode=False,
    max_steps=None,
):
    """The strategy for `mode`, so that a recipe switches modes by overriding keys.

    mode: one of MODES. std saves waypoints into `waypoint_folder` (every
    `waypoint_every` steps); waypoint reads them from there. target / src_init read
    the std export in `teacher_folder`; trajectory fine-tunes its teacher with
    `trajectory_opt_class` and `trajectory_lr_scheduler` every
    `trajectory_update_every` steps, clipped to `trajectory_max_grad_norm`, its
    parameter roles at `trajectory_lr_groups` ({role: lr}; others at `trajectory_lr`).
    A set `hybrid_switch_step` wraps the (guided) mode in Hybrid; it must fall inside
    the run (1 <= step < `max_steps` when given), or the "hybrid" run would be the
    plain guided mode or no guidance at all.
    """
    if mode not in MODES:
        raise ValueError(f"unknown guidance mode {mode!r}; use one of {MODES}")
    guided = {"student_config": student_config, "weights": weights}
    guided["teacher_train_mode"] = teacher_train_mode
    builders = {
        "std": lambda: Std(pretrained, waypoint_folder, waypoint_every),
        "unguided": lambda: Unguided(pretrained, student_config),
        "target": lambda: Target(teacher_folder, **guided, pretrained=pretrained),
        "src_init": lambda: SrcInit(pretrained, teacher_folder, **guided),
        "trajectory": lambda: Trajectory(
            pretrained,
            trajectory_opt_class,
            trajectory_update_every,
            lr_scheduler=trajectory_lr_scheduler,
            max_grad_norm=trajectory_max_grad_norm,
            lr=trajectory_lr,
            lr_groups=trajectory_lr_groups,
            **guided,
        ),
        "waypoint": lambda: Waypoint(pretrained, waypoint_folder, **guided),
    }
    if hybrid_switch_step is not None:
        if mode not in GUIDED_MODES:
            raise ValueError(f"hybrid_switch_step needs a guided mode {GUIDED_MODES}, not {mode!r}")
        if not 1 <= int(hybrid_switch_step) < (max_steps or float("inf")):
            raise ValueError(
                f"hybrid_switch_step {hybrid_switch_step} is outside the run: it must be "
                f"between 1 and max_steps - 1 = {max_steps - 1 if max_steps else 'inf'} "
                "(the reference switches at about 40% of the steps)"
            )
    strategy = builders[mode]()
    if hybrid_switch_step is None:
        return strategy
    return Hybrid(strategy, hybrid_switch_step, hybrid_disable_kd)
