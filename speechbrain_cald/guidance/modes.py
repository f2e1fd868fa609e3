"""The fixed-teacher modes: std, unguided, target, src_init, waypoint, and hybrid
(any guided mode with L_LD switched off part-way)."""

import dataclasses
import functools
import logging
import os
import re

from speechbrain_cald.guidance.base import Guidance, check_fine_tuned_from, waypoint_path

logger = logging.getLogger(__name__)


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
    `pretrained` (optional): the model std started from; the teacher must have its
    architecture, or this run would silently ignore the recipe's pretrained model.
    """

    def __init__(
        self,
        teacher,
        student_config=None,
        weights=None,
        teacher_train_mode=False,
        pretrained=None,
    ):
        super().__init__(teacher, student_config, weights, teacher_train_mode)
        self.teacher_folder = teacher
        self.pretrained = pretrained
        self._teacher = None

    def init_student(self, task):
        check_fine_tuned_from(self.teacher_folder, self.pretrained, "teacher_folder")
        return super().init_student(task)

    def teacher(self, step):
        if self._teacher is None:
            self._teacher = self._load_teacher(self.teacher_folder)
        return self._teacher


class SrcInit(Target):
    """Teacher as in Target; the student starts from the pretrained transformer."""

    def __init__(
        self, pretrained, teacher, student_config=None, weights=None, teacher_train_mode=False
    ):
        # the teacher may be another architecture here (a layer map pairs the layers)
        super().__init__(teacher, student_config, weights, teacher_train_mode)
        self.start = pretrained


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
            raise FileNotFoundError(
                f"No step_<s> waypoints in {self.waypoint_folder}: run --mode std with "
                "waypoint_every set first (it saves them there)"
            )
        return steps

    def init_student(self, task):
        first = waypoint_path(self.waypoint_folder, self.waypoint_steps[0])
        check_fine_tuned_from(first, None, "waypoint")
        return super().init_student(task)

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
