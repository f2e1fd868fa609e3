"""CALDBrain: one SpeechBrain training loop for every task, model family and mode.

hparams it reads:
  task (tasks.Task), guidance (guidance.Guidance)     required
  distill_layers (None: every hidden state but index 0; indices or a
  {student_index: teacher_index} map), ld_layer_norm (True),
  kd_temperature (2.0)                                 distillation terms
  lr_scheduler (called as scheduler(optimizer) once per optimizer step, e.g.
  speechbrain.nnet.schedulers.WarmAndExpDecayLRSchedule), epoch_counter,
  train_logger, ckpt_min_key / ckpt_max_key (best-checkpoint metric; default
  min "total"), ckpt_num_to_keep (1)                    optional
Mixed precision and gradient accumulation come from SpeechBrain's run options
(`precision`, `grad_accumulation_factor`) and Brain.fit_batch.
"""

import logging

import speechbrain as sb
import torch
from speechbrain.utils.distributed import main_process_only

from speechbrain_cald.conversion import check_layer_compatibility
from speechbrain_cald.losses import kd_loss, layerwise_distillation_loss

logger = logging.getLogger(__name__)
TERMS = ("task", "kd", "ld", "total")


class CALDBrain(sb.core.Brain):
    """Trains the student of `hparams["guidance"]` on `hparams["task"]`.

    modules: extra modules; "student" (and "heads" when the task has them) are added
    from the guidance strategy. The student, heads, optimizer, LR scheduler, epoch
    counter and guidance state are checkpoint recoverables, so a resumed run repeats
    the uninterrupted one step for step. Per-step loss terms are in `step_terms`;
    their stage averages join the stage stats (task, kd, ld, total and the metrics).
    """

    def __init__(
        self, modules=None, opt_class=None, hparams=None, run_opts=None, checkpointer=None
    ):
        self.task, self.guidance = hparams["task"], hparams["guidance"]
        student, heads = self.guidance.init_student(self.task)
        modules = {**(modules or {}), "student": student}
        if heads is not None:
            modules["heads"] = heads
        super().__init__(modules, opt_class, hparams, run_opts, checkpointer)
        self.guidance.to(self.device)
        self.step_terms = {}
        if self.checkpointer is not None:
            self._add_recoverables()

    def _add_recoverables(self):
        """Everything a kill-and-resume needs, beyond what Brain registers itself."""
        extra = {"student": self.modules.student, "guidance": self.guidance}
        if "heads" in self.modules:
            extra["heads"] = self.modules.heads
        for name in ("lr_scheduler", "epoch_counter"):
            if hasattr(self.hparams, name):
                extra[name] = getattr(self.hparams, name)
        for name, obj in extra.items():
            if name not in self.checkpointer.recoverables:
                self.checkpointer.add_recoverable(name, obj)

    @property
    def heads(self):
        """The task heads outside the HF model, or None."""
        return self.modules["heads"] if "heads" in self.modules else None

    @main_process_only
    def export(self, folder):
        """Save the student (+ heads) as a folder `Task.load` / a teacher can read."""
        self.task.save(folder, self.modules.student, self.heads)

    def on_fit_start(self):
        """Brain set-up and recovery, then check the student/teacher layer map."""
        super().on_fit_start()
        if not self.guidance.weights(self.optimizer_step).guided:
            return
        teacher, _ = self.guidance.teacher(self.optimizer_step)
        check_layer_compatibility(
            teacher, self.modules.student, getattr(self.hparams, "distill_layers", None)
        )

    def compute_forward(self, batch, stage):
        """Student forward; teacher forward (no_grad) only when training and guided."""
        batch = batch.to(self.device)
        student = self.task.forward(self.modules.student, batch, stage, self.heads)
        teacher = None
        if stage == sb.Stage.TRAIN and self.guidance.weights(self.optimizer_step).guided:
            model, heads = self.guidance.teacher(self.optimizer_step)
            with torch.no_grad():
                teacher = self.task.forward(model, batch, stage, heads)
        return student, teacher

    def compute_objectives(self, predictions, batch, stage):
        """task + a_KD * KD + a_LD * LD (KD, LD only with a teacher); terms recorded
        per step (`step_terms`) and averaged per stage."""
        student, teacher = predictions
        weights = self.guidance.weights(self.optimizer_step)
        kd = ld = None
        if teacher is not None:
            if weights.kd:
                kd = self._kd(student, teacher)
            if weights.ld:
                ld = layerwise_distillation_loss(
                    student.hidden_states,
                    teacher.hidden_states,
                    student.mask,
                    getattr(self.hparams, "distill_layers", None),
                    getattr(self.hparams, "ld_layer_norm", True),
                )
        terms = weights.combine(self.task.loss(student, batch), kd, ld)
        self.step_terms = {k: float(v.detach()) for k, v in terms.items()}
        for k, v in self.step_terms.items():
            self.term_sums[k] += v
        self.term_count += 1
        if stage == sb.Stage.TRAIN:
            logger.debug("step %d terms %s", self.optimizer_step, self.step_terms)
        else:
            self.task.update_metrics(self.metrics, student, batch)
        return terms["total"]

    def _kd(self, student, teacher):
        """KD on frame/token logits, or averaged over the heads' utterance logits."""
        temperature = getattr(self.hparams, "kd_temperature", 2.0)
        if isinstance(student.logits, dict):
            return torch.stack(
                [
                    kd_loss(v, teacher.logits[k], None, temperature)
                    for k, v in student.logits.items()
                ]
            ).mean()
        return kd_loss(student.logits, teacher.logits, student.logits_mask, temperature)

    def on_fit_batch_start(self, batch, should_step):
        """Set the LR for the optimizer step this batch completes (warm-up included)."""
        if should_step and hasattr(self.hparams, "lr_scheduler"):
            self.hparams.lr_scheduler(self.optimizer)

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        """Guidance hooks after each optimizer step (teacher update, waypoints)."""
        if should_step:
            self.guidance.on_step_end(self, batch, self.optimizer_step)

    def on_stage_start(self, stage, epoch=None):
        """Reset the term averages and, outside training, the metrics."""
        self.term_sums = dict.fromkeys(TERMS, 0.0)
        self.term_count = 0
        if stage != sb.Stage.TRAIN:
            self.metrics = self.task.metrics()

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Stage stats = mean loss terms (+ metrics); log them; keep the best checkpoint."""
        stats = {k: v / max(self.term_count, 1) for k, v in self.term_sums.items()}
        if stage != sb.Stage.TRAIN:
            stats.update(self.task.summarize(self.metrics))
        logger.info("%s epoch %s: %s", stage.name, epoch, stats)
        self.last_stage_stats = stats
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
            return
        train_logger = getattr(self.hparams, "train_logger", None)
        if stage == sb.Stage.VALID:
            meta = {"epoch": epoch, "step": self.optimizer_step}
            if train_logger is not None:
                train_logger.log_stats(
                    meta, train_stats=getattr(self, "train_stats", None), valid_stats=stats
                )
            if self.checkpointer is not None:
                self.checkpointer.save_and_keep_only(
                    meta={**stats, **meta},
                    num_to_keep=getattr(self.hparams, "ckpt_num_to_keep", 1),
                    **self.ckpt_keys(),
                )
        elif train_logger is not None:
            train_logger.log_stats({"step": self.optimizer_step}, test_stats=stats)

    def ckpt_keys(self):
        """min_keys / max_keys for the best checkpoint (default: lowest loss)."""
        max_key = getattr(self.hparams, "ckpt_max_key", None)
        if max_key is not None:
            return {"max_keys": [max_key]}
        return {"min_keys": [getattr(self.hparams, "ckpt_min_key", "total")]}
