"""The guidance strategy interface (`Guidance`) and the base every mode builds on."""

import logging
import os

import torch
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)
from transformers import AutoConfig

from speechbrain_cald.conversion import convert_to_student
from speechbrain_cald.losses import CALDLossWeights

logger = logging.getLogger(__name__)
# What a teacher shares with the pretrained model it was fine-tuned from.
ARCHITECTURE_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads")


def check_fine_tuned_from(folder, pretrained, what):
    """`folder` (a teacher or waypoint) must hold a model fine-tuned from the model in
    `pretrained`: FileNotFoundError when it is missing (std has not run), ValueError
    naming the fields when its architecture is another (a stale std run)."""
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise FileNotFoundError(
            f"{what} {folder} not found (no config.json): run --mode std first (it exports "
            "its best model and saves its waypoints there), or point the YAML key to a std run"
        )
    if pretrained is None or not os.path.isfile(os.path.join(pretrained, "config.json")):
        return
    mine, source = AutoConfig.from_pretrained(folder), AutoConfig.from_pretrained(pretrained)
    diff = [
        f"{f} {getattr(mine, f, None)} vs {getattr(source, f, None)}"
        for f in ARCHITECTURE_FIELDS
        if getattr(mine, f, None) != getattr(source, f, None)
    ]
    if diff:
        raise ValueError(
            f"{what} {folder} was not fine-tuned from the pretrained model {pretrained} "
            f"({'; '.join(diff)}): rerun --mode std from it, or point {what} to its std run"
        )


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
