"""Trajectory guidance: the teacher is fine-tuned on the task alongside the student."""

import copy
import dataclasses

import speechbrain as sb
import torch

from speechbrain_cald.guidance.base import Guidance
from speechbrain_cald.param_groups import parameter_groups, scaled_groups


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
    `max_grad_norm` (None: no clipping); `lr_groups` ({role: lr}, with the schedule's
    `lr`) gives its parameter roles their own LRs as a std run's (`param_groups`). The
    student distils from the teacher's detached outputs *before* the update: with
    `teacher_train_mode` (the reference) the forward pass of the update window serves
    both; otherwise the student reads a separate eval-mode pass. Optimizer, schedule
    and counters are checkpointed.
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
        lr=None,
        lr_groups=None,
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
        self.lr, self.lr_groups = lr, lr_groups
        self.updates = 0

    def init_student(self, task):
        self.task = task
        model, heads = task.load(self.start)
        self.model, self.heads = copy.deepcopy(model), copy.deepcopy(heads)
        self.model.train(self.teacher_train_mode)
        if self.lr_groups:
            groups = parameter_groups(self.model, self.heads, self.lr, self.lr_groups)
            self.optimizer = self.opt_class(groups)
        else:
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
            with scaled_groups(self.optimizer):
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
