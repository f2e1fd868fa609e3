"""CALDBrain: one SpeechBrain training loop for every task, model family and mode.

hparams it reads:
  task (tasks.Task), guidance (guidance.Guidance)     required
  distill_layers (None: `losses.distilled_layers` with distill_skip_first (1) and
  distill_skip_last (0); or indices, or a {student_index: teacher_index} map),
  ld_layer_norm (True), ld_layer_reduction ("mean"), kd_temperature (2.0)
                                                       distillation terms
  lr_scheduler, epoch_counter, train_logger, tensorboard_logger (both get the dev
  and test stats), ckpt_min_key / ckpt_max_key (best-checkpoint metric; default min
  "total"), ckpt_num_to_keep (1)                       optional
Mixed precision and gradient accumulation come from SpeechBrain's run options
(`precision`, `grad_accumulation_factor`) and Brain.fit_batch; resuming, non-finite
skipping and DDP from `resumable.ResumableBrain`.
"""

import logging

import speechbrain as sb
from speechbrain.utils.checkpoints import register_checkpoint_hooks
from speechbrain.utils.distributed import main_process_only

from speechbrain_cald import conversion, param_groups
from speechbrain_cald.exports import atomic_folder
from speechbrain_cald.losses import (
    check_layer_compatibility,
    kd_loss,
    layerwise_distillation_loss,
)
from speechbrain_cald.resumable import ResumableBrain, unwrapped

logger = logging.getLogger(__name__)


@register_checkpoint_hooks
class CALDBrain(ResumableBrain):
    """Trains the student of `hparams["guidance"]` on `hparams["task"]`.

    The student (module "student", and "heads" when the task has them) comes from the
    guidance strategy; student, heads and guidance state are checkpointed with the
    rest. Per-step loss terms (task, kd, ld, total) are in `step_terms`; their stage
    averages join the stage stats with the task's metrics.
    """

    TERMS = ("task", "kd", "ld", "total")

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
        self.guidance.bind(export=self.export, accumulation=self.grad_accumulation_factor)
        self.weights = self.guidance.weights(0)
        if self.checkpointer is not None:
            self.add_recoverables({"student": student, "guidance": self.guidance, "heads": heads})

    @property
    def heads(self):
        """The task heads outside the HF model, or None."""
        return self.modules["heads"] if "heads" in self.modules else None

    @main_process_only
    def export(self, folder):
        """Save the student (+ heads) as a folder `Task.load` / a teacher can read
        (the bare modules under DDP, so no `module.` prefix reaches the files), whole
        or not at all (`exports.atomic_folder`)."""
        with atomic_folder(folder) as partial:
            self.task.save(partial, unwrapped(self.modules.student), unwrapped(self.heads))

    def init_optimizers(self):
        """One optimizer group per parameter role when the YAML sets `lr_groups`
        (`param_groups`), else Brain's single group."""
        lr_groups = getattr(self.hparams, "lr_groups", None)
        if not lr_groups or self.opt_class is None:
            return super().init_optimizers()
        groups = param_groups.parameter_groups(
            unwrapped(self.modules.student), unwrapped(self.heads), self.hparams.lr, lr_groups
        )
        self.optimizer = self.opt_class(groups)
        self.optimizers_dict = {"opt_class": self.optimizer}
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)

    def on_fit_start(self):
        """Brain set-up and recovery, then check the student/teacher layer map."""
        super().on_fit_start()
        if self.guidance.weights(self.optimizer_step).guided:
            teacher, _ = self.guidance.teacher(self.optimizer_step)
            check_layer_compatibility(
                teacher, self.modules.student, getattr(self.hparams, "distill_layers", None)
            )
        self.restore_rng_state()  # after the teacher load above (it may draw numbers)

    def compute_forward(self, batch, stage):
        """Student forward; teacher forward only when training with a guided weight."""
        batch = batch.to(self.device)
        self.weights = self.guidance.weights(self.optimizer_step)  # once per batch
        teacher = None
        with self.task.shared_front_end():  # a frozen CNN the teacher shares runs once
            student = self.task.forward(self.modules.student, batch, stage, self.heads)
            if stage == sb.Stage.TRAIN and self.weights.guided:
                teacher = self.guidance.teacher_forward(batch, self.optimizer_step, stage)
        return student, teacher

    def compute_objectives(self, predictions, batch, stage):
        """task + a_KD * KD + a_LD * LD (KD, LD only with a teacher)."""
        student, teacher = predictions
        kd = ld = None
        if teacher is not None and self.weights.kd:
            kd = self._kd(student, teacher)
        if teacher is not None and self.weights.ld:
            ld = layerwise_distillation_loss(
                student.hidden_states,
                teacher.hidden_states,
                student.mask,
                getattr(self.hparams, "distill_layers", None),
                getattr(self.hparams, "ld_layer_norm", True),
                getattr(self.hparams, "distill_skip_first", 1),
                getattr(self.hparams, "distill_skip_last", 0),
                getattr(self.hparams, "ld_layer_reduction", "mean"),
                conversion.kept_attention(unwrapped(self.modules.student)),
            )
        terms = self.weights.combine(self.task.loss(student, batch), kd, ld)
        self.record_terms(terms)
        if stage != sb.Stage.TRAIN:
            self.task.update_metrics(self.metrics, student, batch)
        return terms["total"]

    def _kd(self, student, teacher):
        """KD on frame/token logits, or averaged over the heads' utterance logits."""
        temperature = getattr(self.hparams, "kd_temperature", 2.0)
        if isinstance(student.logits, dict):
            pairs = [(v, teacher.logits[k], None) for k, v in student.logits.items()]
        else:
            pairs = [(student.logits, teacher.logits, student.logits_mask)]
        return sum(kd_loss(s, t, mask, temperature) for s, t, mask in pairs) / len(pairs)

    def on_optimizer_step(self, skipped):
        """Guidance hooks after each optimizer step (teacher update, waypoints)."""
        if skipped:
            self.guidance.on_step_skipped()
        else:
            self.guidance.on_step_end(self.optimizer_step)

    def on_stage_start(self, stage, epoch=None):
        """Term averages reset (see ResumableBrain); fresh metrics outside training."""
        super().on_stage_start(stage, epoch)
        if stage != sb.Stage.TRAIN:
            self.metrics = self.task.metrics()

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Stage stats = mean loss terms (+ metrics); log them; keep the best checkpoint."""
        stats = self.stage_terms(stage)
        if stage != sb.Stage.TRAIN:
            stats.update(self.task.summarize(self.metrics))
        logger.info("%s epoch %s: %s", stage.name, epoch, stats)
        self.last_stage_stats = stats
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
            return
        loggers = [getattr(self.hparams, k, None) for k in ("train_logger", "tensorboard_logger")]
        loggers = [logger for logger in loggers if logger is not None]
        if stage == sb.Stage.VALID:
            meta = {"epoch": epoch, "step": self.optimizer_step}
            for train_logger in loggers:
                train_logger.log_stats(
                    meta, train_stats=getattr(self, "train_stats", None), valid_stats=stats
                )
            if self.checkpointer is not None:
                self.checkpointer.save_and_keep_only(
                    meta={**stats, **meta},
                    num_to_keep=getattr(self.hparams, "ckpt_num_to_keep", 1),
                    **self.ckpt_keys(),
                )
        else:
            for train_logger in loggers:
                train_logger.log_stats({"step": self.optimizer_step}, test_stats=stats)

    def ckpt_keys(self):
        """min_keys / max_keys for the best checkpoint (default: lowest loss)."""
        max_key = getattr(self.hparams, "ckpt_max_key", None)
        if max_key is not None:
            return {"max_keys": [max_key]}
        return {"min_keys": [getattr(self.hparams, "ckpt_min_key", "total")]}
