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

Reliability (SpeechBrain run options, also read from the YAML):
  ckpt_interval_steps / ckpt_interval_minutes: intra-epoch checkpoints. A run killed
  at any point resumes from the last one at the exact batch: the data loader skips
  the batches already seen, and this Brain's own checkpoint file holds the step
  counters, the running loss-term sums of the epoch, the count of skipped updates
  and the RNG states (torch, CUDA, numpy, random: dropout and time masking), which
  are put back just before the next batch, so the resumed run repeats the
  uninterrupted one (the LR scheduler, epoch counter and guidance are recoverables).
  nonfinite_patience: a batch whose loss or any distillation term is NaN / inf makes
  no update (its gradients are dropped, the LR schedule and the step count do not
  advance); such batches are counted in `nonfinite_skipped` and the run stops with
  an error naming the terms once more than `nonfinite_patience` occur in one epoch.
"""

import logging
import random

import numpy as np
import speechbrain as sb
import torch
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks
from speechbrain.utils.distributed import main_process_only

from speechbrain_cald.conversion import check_layer_compatibility
from speechbrain_cald.losses import kd_loss, layerwise_distillation_loss

logger = logging.getLogger(__name__)
TERMS = ("task", "kd", "ld", "total")


class NonFiniteLossError(ValueError):
    """More non-finite losses in one epoch than `nonfinite_patience` allows."""


def rng_state():
    """The global RNG states (torch CPU and CUDA, numpy, random) as tensors and
    plain values, so that `torch.load(weights_only=True)` reads them back."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos)},
        "numpy_gauss": [int(has_gauss), float(gauss)],
        "random": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    """Restore what `rng_state` returned."""
    torch.set_rng_state(state["torch"])
    keys = state["numpy"]["keys"].numpy().astype(np.uint32)
    has_gauss, gauss = state["numpy_gauss"]
    np.random.set_state(("MT19937", keys, state["numpy"]["pos"], has_gauss, gauss))
    version, internal, gauss_next = state["random"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _ModelDDP(torch.nn.parallel.DistributedDataParallel):
    """DDP wrapper that also answers the wrapped model's attributes (an HF model's
    `config`, `_get_feat_extract_output_lengths`, `save_pretrained`), so the tasks and
    `export` use a DDP-wrapped student as they use the bare one; calls still go
    through DDP's forward (gradient synchronisation)."""

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def unwrapped(module):
    """`module` without the DDP wrapper CALDBrain gives it under torchrun (for saving:
    no `module.` key prefix); anything else (None included) as it is."""
    return module.module if isinstance(module, _ModelDDP) else module


@register_checkpoint_hooks
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
        self.term_sums, self.term_count = dict.fromkeys(TERMS, 0.0), 0
        self.nonfinite_skipped = 0  # updates skipped for a non-finite loss, whole run
        self._skip_update = False  # this accumulation window had a non-finite loss
        self._recovered_rng = None  # RNG states of a recovered checkpoint, applied late
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

    def _wrap_distributed(self):
        """Brain's DDP wrapping (torchrun), with wrappers that expose the model's own
        attributes (`_ModelDDP`); the checkpointer keeps the bare modules."""
        super()._wrap_distributed()
        for module in self.modules.values():
            if type(module) is torch.nn.parallel.DistributedDataParallel:
                module.__class__ = _ModelDDP  # same object and state, more attributes

    @property
    def heads(self):
        """The task heads outside the HF model, or None."""
        return self.modules["heads"] if "heads" in self.modules else None

    @main_process_only
    def export(self, folder):
        """Save the student (+ heads) as a folder `Task.load` / a teacher can read
        (the bare modules under DDP, so no `module.` prefix reaches the files)."""
        self.task.save(folder, unwrapped(self.modules.student), unwrapped(self.heads))

    def on_fit_start(self):
        """Brain set-up and recovery, then check the student/teacher layer map."""
        super().on_fit_start()
        if self.guidance.weights(self.optimizer_step).guided:
            teacher, _ = self.guidance.teacher(self.optimizer_step)
            check_layer_compatibility(
                teacher, self.modules.student, getattr(self.hparams, "distill_layers", None)
            )
        # after the teacher load above, which may draw random numbers (head init)
        if self._recovered_rng is not None:
            set_rng_state(self._recovered_rng)
            self._recovered_rng = None

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
        if all(np.isfinite(v) for v in self.step_terms.values()):  # skipped ones stay out
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

    def check_loss_isfinite(self, loss):
        """Brain's non-finite check (called before backward), extended to every loss
        term: a non-finite batch marks its accumulation window for no update, is
        counted, and more than `nonfinite_patience` of them in one epoch stop the run."""
        bad = [k for k, v in self.step_terms.items() if not np.isfinite(v)]
        if not bad and torch.isfinite(loss):
            return
        self._skip_update = True
        self.nonfinite_count += 1  # reset by Brain at each epoch start
        self.nonfinite_skipped += 1
        where = f"optimizer step {self.optimizer_step + 1} (batch {self.step} of the epoch)"
        terms = ", ".join(f"{k}={self.step_terms.get(k)}" for k in bad) or f"loss={loss}"
        if self.nonfinite_count > self.nonfinite_patience:
            raise NonFiniteLossError(
                f"Non-finite loss at {where}: {terms}. {self.nonfinite_count} non-finite "
                f"batches this epoch exceed nonfinite_patience={self.nonfinite_patience}; "
                "stopping. Lower the LR, check the data (bad_data) or run with "
                "torch.autograd.detect_anomaly() to find the cause."
            )
        logger.warning(
            "Non-finite loss at %s: %s; update skipped (%d this epoch, patience %d)",
            where,
            terms,
            self.nonfinite_count,
            self.nonfinite_patience,
        )

    def optimizers_step(self):
        """Set the LR for this step (warm-up included), then Brain's step (unscale,
        clip, step); a window with a non-finite loss (on any process) drops its
        gradients instead."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor(float(self._skip_update), device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            self._skip_update = bool(flag.item())
        if self._skip_update:
            self.zero_grad(set_to_none=True)
            return
        if hasattr(self.hparams, "lr_scheduler"):
            self.hparams.lr_scheduler(self.optimizer)
        super().optimizers_step()

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        """Guidance hooks after each optimizer step (teacher update, waypoints)."""
        if not should_step:
            return
        if self._skip_update:
            self._skip_update = False
        else:
            self.guidance.on_step_end(self, batch, self.optimizer_step)

    def on_stage_start(self, stage, epoch=None):
        """Reset the term averages (unless a training epoch resumes mid-way from an
        intra-epoch checkpoint: Brain's `step` > 0) and, outside training, the metrics."""
        if stage != sb.Stage.TRAIN or self.step == 0:
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

    @mark_as_saver
    def _save(self, path):
        """Brain's counters plus the epoch's term sums, skip count and RNG states."""
        state = {
            "step": self.step,
            "avg_train_loss": float(self.avg_train_loss),
            "optimizer_step": self.optimizer_step,
            "term_sums": dict(self.term_sums),
            "term_count": self.term_count,
            "nonfinite_skipped": self.nonfinite_skipped,
            "rng": rng_state(),
        }
        torch.save(state, path)

    @mark_as_loader
    def _recover(self, path, end_of_epoch):
        """Restore `_save`; the RNG states are applied at the end of `on_fit_start`."""
        del end_of_epoch
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.step, self.optimizer_step = state["step"], state["optimizer_step"]
        self.avg_train_loss = state["avg_train_loss"]
        self.term_sums, self.term_count = state["term_sums"], state["term_count"]
        self.nonfinite_skipped = state["nonfinite_skipped"]
        self._recovered_rng = state["rng"]

    def ckpt_keys(self):
        """min_keys / max_keys for the best checkpoint (default: lowest loss)."""
        max_key = getattr(self.hparams, "ckpt_max_key", None)
        if max_key is not None:
            return {"max_keys": [max_key]}
        return {"min_keys": [getattr(self.hparams, "ckpt_min_key", "total")]}
