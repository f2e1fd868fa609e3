"""Guidance strategies (docs/CALD_METHOD.md, section 2), one object per mode.

A strategy answers three questions for the Brain: where the student starts
(`init_student`), who the teacher is at optimizer step s (`teacher(s)`, None when
there is none; `teacher_forward` runs it on a batch) and the loss weights at step s
(`weights(s)`). The Brain hands it what it needs once (`bind`: an export callback,
the gradient-accumulation factor); `on_step_end` runs after every optimizer step
(trajectory teacher update, std waypoint saving). Steps count completed optimizer
steps: during the batches that make step s + 1, s is the current step. Teachers
live outside Brain.modules, run under no_grad in the mode set by
`teacher_train_mode` (default eval; the reference runs them in train mode, as the
recipes do), and are frozen except for the trajectory teacher's own updates. A strategy's state is
saved and restored by SpeechBrain's Checkpointer (it is one recoverable).

Selected in YAML with ``!new:``, e.g.::

    guidance: !new:speechbrain_cald.guidance.Target
        teacher: !ref <std_folder>/best
        student_config: !ref <student_config>
        weights: !new:speechbrain_cald.losses.CALDLossWeights {kd: 1.0, ld: 15.0}

or, in the recipes, with `from_mode` (one YAML, the mode as an override).
"""

import copy
import dataclasses
import functools
import logging
import os
import re

import speechbrain as sb
import torch
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)

from speechbrain_cald.conversion import convert_to_student
from speechbrain_cald.losses import CALDLossWeights

logger = logging.getLogger(__name__)


def waypoint_path(folder, step):
    """Folder of the std waypoint saved after optimizer step `step`."""
    return os.path.join(folder, f"step_{step}")


@register_checkpoint_hooks
class Guidance:
    """Base strategy: student from `start`, no teacher, task loss only.

    start: folder of the HF model (and heads) the student starts from.
    student_config: a conversion.StudentConfig, or None to keep the transformer.
    weights: CALDLossWeights (ignored, i.e. task only, by the unguided modes).
    teacher_train_mode: run the teacher in train() mode (dropout) instead of eval().
    """

    def __init__(self, start, student_config=None, weights=None, teacher_train_mode=False):
        self.start = start
        self.student_config = student_config
        self.loss_weights = weights if weights is not None else CALDLossWeights()
        self.teacher_train_mode = teacher_train_mode
        self.task = None
        self.device = torch.device("cpu")
        self.export = None
        self.accumulation = 1

    def bind(self, export=None, accumulation=1):
        """What the Brain provides: `export(folder)` saves the student (+ heads) as a
        teacher folder; `accumulation` micro-batches make one optimizer step."""
        self.export, self.accumulation = export, accumulation

    def init_student(self, task):
        """Bind the task and build the student: (HF model, heads or None)."""
        self.task = task
        model, heads = task.load(self.start)
        return self._convert(model), heads

    def to(self, device):
        """Device for the teachers this strategy loads or owns."""
        self.device = torch.device(device)
        return self

    def teacher(self, step):
        """(model, heads) of the teacher at `step`, or None."""
        return None

    def teacher_forward(self, batch, step, stage):
        """The teacher's TaskOutputs on `batch` at `step` (no gradients), or None."""
        teacher = self.teacher(step)
        if teacher is None:
            return None
        model, heads = teacher
        with torch.no_grad():
            return self.task.forward(model, batch, stage, heads)

    def weights(self, step):
        """CALDLossWeights at `step`."""
        return self.loss_weights

    def on_step_end(self, step):
        """Called after optimizer step `step` (1-based)."""

    def on_step_skipped(self):
        """Called instead of `on_step_end` when a window made no update (non-finite loss)."""

    def state_dict(self):
        """What a checkpoint must hold to resume this strategy exactly."""
        return {}

    def load_state_dict(self, state):
        """Restore `state_dict()`."""

    @mark_as_saver
    def _save(self, path):
        torch.save(self.state_dict(), path)

    @mark_as_loader
    def _load(self, path, end_of_epoch):
        del end_of_epoch
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))

    def _convert(self, model):
        """Replace attention by lobes (a deep copy) unless no student config is set."""
        if self.student_config is None:
            return model
        return convert_to_student(model, self.student_config)[0]  # the report is logged

    def _load_teacher(self, folder):
        """A frozen teacher (model, heads) from a folder written by `Task.save`."""
        model, heads = self.task.load(folder)
        return tuple(self._as_teacher(m) for m in (model, heads))

    def _as_teacher(self, module):
        if module is not None:
            module.to(self.device).train(self.teacher_train_mode).requires_grad_(False)
        return module


class Std(Guidance):
    """Plain fine-tuning of the transformer; saves waypoints for a waypoint run.

    pretrained: HF folder. waypoint_folder / waypoint_every: save the model (and
    heads) as `<waypoint_folder>/step_<s>/` after every `waypoint_every` optimizer
    steps (None: no waypoints). Export the best model with `CALDBrain.export`.
    """

    def __init__(self, pretrained, waypoint_folder=None, waypoint_every=None):
        super().__init__(pretrained)
        self.waypoint_folder = waypoint_folder
        self.waypoint_every = waypoint_every

    def on_step_end(self, step):
        if self.waypoint_every and step % self.waypoint_every == 0:
            self.export(waypoint_path(self.waypoint_folder, step))


class Unguided(Guidance):
    """Converted pretrained transformer, fine-tuned on the task loss alone."""

    def __init__(self, pretrained, student_config=None):
        super().__init__(pretrained, student_config)


class Target(Guidance):
    """Teacher: the fine-tuned transformer (a std run's export), frozen.

    The student starts from the same fine-tuned model (heads included), converted.
    """

    def __init__(self, teacher, student_config=None, weights=None, teacher_train_mode=False):
        super().__init__(teacher, student_config, weights, teacher_train_mode)
        self.teacher_folder = teacher
        self._teacher = None

    def teacher(self, step):
        if self._teacher is None:
            self._teacher = self._load_teacher(self.teacher_folder)
        return self._teacher


class SrcInit(Target):
    """Teacher as in Target; the student starts from the pretrained transformer."""

    def __init__(
        self, pretrained, teacher, student_config=None, weights=None, teacher_train_mode=False
    ):
        super().__init__(teacher, student_config, weights, teacher_train_mode)
        self.start = pretrained


def _scheduler_state(scheduler):
    """The counters and values of an LR scheduler object (SpeechBrain's keep them as
    plain attributes), for a guidance checkpoint."""
    return {k: v for k, v in vars(scheduler).items() if isinstance(v, (bool, int, float))}


def _detached(outputs):
    """TaskOutputs with every tensor detached (a teacher's targets for the student)."""

    def detach(value):
        if isinstance(value, torch.Tensor):
            return value.detach()
        if isinstance(value, dict):
            return {k: detach(v) for k, v in value.items()}
        if isinstance(value, tuple):
            return tuple(detach(v) for v in value)
        return value

    return dataclasses.replace(
        outputs, **{f.name: detach(getattr(outputs, f.name)) for f in dataclasses.fields(outputs)}
    )


class Trajectory(Guidance):
    """Teacher: the pretrained transformer, fine-tuned alongside the student.

    The teacher (and a copy of the student's initial heads) has its own optimizer
    (`opt_class`: params -> optimizer) and LR schedule (`lr_scheduler`, called as
    scheduler(optimizer) before each teacher update; None keeps the optimizer's LR),
    and takes one step on the task loss every `update_every` student optimizer steps,
    with its gradients accumulated over that step's whole accumulation window (each
    micro-batch's loss / the accumulation factor, as the reference) and clipped to
    `max_grad_norm` (None: no clipping). The student distils from the teacher's
    detached outputs *before* the update: with `teacher_train_mode` (the reference)
    the forward pass of the update window serves both; otherwise the student reads a
    separate eval-mode pass. Optimizer, schedule and counters are checkpointed.
    """

    def __init__(
        self,
        pretrained,
        opt_class,
        update_every=1,
        student_config=None,
        weights=None,
        teacher_train_mode=False,
        lr_scheduler=None,
        max_grad_norm=None,
    ):
        super().__init__(pretrained, student_config, weights, teacher_train_mode)
        if int(update_every) < 1:
            raise ValueError(
                f"trajectory update_every must be >= 1 student steps, got {update_every}"
            )
        self.opt_class = opt_class
        self.update_every = int(update_every)
        self.lr_scheduler = lr_scheduler
        self.max_grad_norm = max_grad_norm
        self.updates = 0

    def init_student(self, task):
        self.task = task
        model, heads = task.load(self.start)
        self.model, self.heads = copy.deepcopy(model), copy.deepcopy(heads)
        self.model.train(self.teacher_train_mode)
        self.optimizer = self.opt_class(list(self._parameters()))
        return self._convert(model), heads

    def _parameters(self):
        for module in (self.model, self.heads):
            if module is not None:
                yield from module.parameters()

    def to(self, device):
        super().to(device)
        for module in (self.model, self.heads):
            if module is not None:
                module.to(self.device)
        return self

    def teacher(self, step):
        return self.model, self.heads

    def _updating(self, step):
        """Whether the window that makes optimizer step `step` + 1 updates the teacher."""
        return (step + 1) % self.update_every == 0

    def teacher_forward(self, batch, step, stage):
        if stage != sb.Stage.TRAIN or not self._updating(step):
            return super().teacher_forward(batch, step, stage)
        self.model.train()
        outputs = self.task.forward(self.model, batch, stage, self.heads)
        (self.task.loss(outputs, batch) / self.accumulation).backward()
        self.model.train(self.teacher_train_mode)
        if self.teacher_train_mode:
            return _detached(outputs)
        return super().teacher_forward(batch, step, stage)

    def on_step_end(self, step):
        if step % self.update_every:
            return
        self._average_gradients()
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(list(self._parameters()), self.max_grad_norm)
        if self.lr_scheduler is not None:
            self.lr_scheduler(self.optimizer)
        self.optimizer.step()
        self.on_step_skipped()
        self.updates += 1

    def on_step_skipped(self):
        """Drop the teacher's accumulated gradients (after its update, or when the
        student's window made no update)."""
        self.optimizer.zero_grad(set_to_none=True)

    def _average_gradients(self):
        """Under DDP each process updates the teacher on its own batch: average the
        gradients over processes so every copy of the teacher stays identical (the
        teacher is not a Brain module, so DDP does not do it)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        world = torch.distributed.get_world_size()
        for param in self._parameters():
            if param.requires_grad:
                if param.grad is None:  # unused on this process: contribute zeros
                    param.grad = torch.zeros_like(param)
                torch.distributed.all_reduce(param.grad)
                param.grad /= world

    def state_dict(self):
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
        if self.heads is not None:
            state["heads"] = self.heads.state_dict()
        if self.lr_scheduler is not None:
            state["lr_scheduler"] = _scheduler_state(self.lr_scheduler)
        return {**state, "updates": self.updates}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        if self.heads is not None:
            self.heads.load_state_dict(state["heads"])
        self.optimizer.load_state_dict(state["optimizer"])
        for key, value in state.get("lr_scheduler", {}).items():
            setattr(self.lr_scheduler, key, value)
        self.updates = state["updates"]


class Waypoint(Guidance):
    """Teacher: the first std waypoint saved after the current step (the last after
    the final one), from `<waypoint_folder>/step_<s>/`. Loaded lazily; one teacher is
    kept in memory.
    """

    def __init__(
        self,
        pretrained,
        waypoint_folder,
        student_config=None,
        weights=None,
        teacher_train_mode=False,
    ):
        super().__init__(pretrained, student_config, weights, teacher_train_mode)
        self.waypoint_folder = waypoint_folder
        self.waypoint_step = None  # step of the waypoint that is (to be) the teacher
        self._teacher = None

    @functools.cached_property
    def waypoint_steps(self):
        """Sorted steps of the saved waypoints (read once: the std run is finished)."""
        names = os.listdir(self.waypoint_folder) if os.path.isdir(self.waypoint_folder) else []
        steps = sorted(int(m.group(1)) for m in map(re.compile(r"step_(\d+)$").match, names) if m)
        if not steps:
            raise FileNotFoundError(f"No step_<s> waypoints in {self.waypoint_folder}")
        return steps

    def teacher(self, step):
        steps = self.waypoint_steps
        wanted = next((s for s in steps if s > step), steps[-1])
        if wanted != self.waypoint_step or self._teacher is None:
            self._teacher = None  # free the previous teacher before loading the next
            self._teacher = self._load_teacher(waypoint_path(self.waypoint_folder, wanted))
            self.waypoint_step = wanted
            logger.info("Waypoint teacher at step %d: step_%d", step, wanted)
        return self._teacher

    def state_dict(self):
        return {"waypoint_step": self.waypoint_step}

    def load_state_dict(self, state):
        self.waypoint_step, self._teacher = state["waypoint_step"], None


class Hybrid(Guidance):
    """A guided mode whose L_LD (and, if `disable_kd`, L_KD) is off from `switch_step`.

    Only the loss weights change; the student's optimizer and LR schedule continue.
    The reference keeps L_KD as it was (a_KD = 1 for TEDLIUM), hence `disable_kd`
    False by default.
    """

    def __init__(self, wrapped, switch_step, disable_kd=False):
        super().__init__(wrapped.start)
        if int(switch_step) < 1:
            raise ValueError(f"hybrid switch_step must be a step >= 1, got {switch_step}")
        self.wrapped = wrapped
        self.switch_step = int(switch_step)
        self.disable_kd = disable_kd
        self.switched = False

    def bind(self, export=None, accumulation=1):
        super().bind(export, accumulation)
        self.wrapped.bind(export, accumulation)

    def init_student(self, task):
        self.task = task
        return self.wrapped.init_student(task)

    def to(self, device):
        super().to(device)
        self.wrapped.to(device)
        return self

    def teacher(self, step):
        return self.wrapped.teacher(step)

    def teacher_forward(self, batch, step, stage):
        return self.wrapped.teacher_forward(batch, step, stage)

    def weights(self, step):
        weights = self.wrapped.weights(step)
        if step < self.switch_step:
            return weights
        return dataclasses.replace(weights, ld=0.0, kd=0.0 if self.disable_kd else weights.kd)

    def on_step_end(self, step):
        if self.weights(step - 1).guided:  # the weights of the window that made `step`
            self.wrapped.on_step_end(step)
        if not self.switched and step >= self.switch_step:
            self.switched = True
            logger.info("Hybrid switch at step %d: weights now %s", step, self.weights(step))

    def on_step_skipped(self):
        self.wrapped.on_step_skipped()

    def state_dict(self):
        return {"wrapped": self.wrapped.state_dict(), "switched": self.switched}

    def load_state_dict(self, state):
        self.wrapped.load_state_dict(state["wrapped"])
        self.switched = state["switched"]


MODES = ("std", "unguided", "target", "src_init", "trajectory", "waypoint")
GUIDED_MODES = MODES[2:]


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
    `trajectory_update_every` steps, clipped to `trajectory_max_grad_norm`. A set
    `hybrid_switch_step` wraps the (guided) mode in Hybrid; it must fall inside the
    run (1 <= step < `max_steps` when given), or the "hybrid" run would be the
    plain guided mode or no guidance at all.
    """
    if mode not in MODES:
        raise ValueError(f"unknown guidance mode {mode!r}; use one of {MODES}")
    guided = {"student_config": student_config, "weights": weights}
    guided["teacher_train_mode"] = teacher_train_mode
    builders = {
        "std": lambda: Std(pretrained, waypoint_folder, waypoint_every),
        "unguided": lambda: Unguided(pretrained, student_config),
        "target": lambda: Target(teacher_folder, **guided),
        "src_init": lambda: SrcInit(pretrained, teacher_folder, **guided),
        "trajectory": lambda: Trajectory(
            pretrained,
            trajectory_opt_class,
            trajectory_update_every,
            lr_scheduler=trajectory_lr_scheduler,
            max_grad_norm=trajectory_max_grad_norm,
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
