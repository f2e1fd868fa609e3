"""ResumableBrain: SpeechBrain's Brain, made exactly resumable and robust; no CALD in it.

What it adds to `speechbrain.core.Brain` (settings are SpeechBrain run options, also
read from the YAML):

- ckpt_interval_steps / ckpt_interval_minutes: intra-epoch checkpoints. A run killed
  at any point resumes from the last one at the exact batch: the data loader skips
  the batches already seen, and this Brain's own checkpoint file holds the step
  counters, the running loss-term sums of the epoch, the count of skipped updates
  and the RNG states (torch, CUDA, numpy, random: dropout and time masking), which
  are put back just before the next batch (`restore_rng_state`), so the resumed run
  repeats the uninterrupted one.
- nonfinite_patience: a batch whose loss or any recorded loss term is NaN / inf makes
  no update (its gradients are dropped, the LR schedule and the step count do not
  advance); such batches are counted in `nonfinite_skipped` and the run stops with
  an error naming the terms once more than `nonfinite_patience` occur in one epoch.
- lr_scheduler (hparams): called as scheduler(optimizer) once per optimizer step;
  parameter groups with an `lr_scale` get that multiple of its LR
  (`param_groups.scaled_groups`).
- Per-stage averages of the loss terms a subclass records with `record_terms`.
- DDP (torchrun): modules wrapped so that they still answer their own attributes.

Subclasses implement compute_forward / compute_objectives (calling `record_terms`)
and may override `on_optimizer_step(skipped)`.
"""

import logging
import random

import numpy as np
import speechbrain as sb
import torch
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks

from speechbrain_cald.param_groups import scaled_groups

logger = logging.getLogger(__name__)


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
    `config`, `save_pretrained`), so code uses a
    DDP-wrapped model as it uses the bare one; calls still go through DDP's forward
    (gradient synchronisation)."""

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def unwrapped(module):
    """`module` without the DDP wrapper the Brain gives it under torchrun (for saving:
    no `module.` key prefix); anything else (None included) as it is."""
    return module.module if isinstance(module, _ModelDDP) else module


@register_checkpoint_hooks
class ResumableBrain(sb.core.Brain):
    """Brain with exact kill-and-resume, non-finite skipping and loss-term averages."""

    TERMS = ("total",)  # the loss terms a subclass records, "total" last

    def __init__(
        self, modules=None, opt_class=None, hparams=None, run_opts=None, checkpointer=None
    ):
        super().__init__(modules, opt_class, hparams, run_opts, checkpointer)
        self.step_terms = {}
        self.term_sums, self.term_count = dict.fromkeys(self.TERMS, 0.0), 0
        self.nonfinite_skipped = 0  # updates skipped for a non-finite loss, whole run
        self._skip_update = False  # this accumulation window had a non-finite loss
        self._recovered_rng = None  # RNG states of a recovered checkpoint, applied late
        if self.checkpointer is not None:
            self.add_recoverables(
                {
                    name: getattr(self.hparams, name)
                    for name in ("lr_scheduler", "epoch_counter")
                    if hasattr(self.hparams, name)
                }
            )

    def add_recoverables(self, recoverables):
        """Register checkpoint recoverables not registered yet (None: nothing)."""
        for name, obj in recoverables.items():
            if obj is not None and name not in self.checkpointer.recoverables:
                self.checkpointer.add_recoverable(name, obj)

    def _wrap_distributed(self):
        """Brain's DDP wrapping (torchrun), with wrappers that expose the model's own
        attributes (`_ModelDDP`); the checkpointer keeps the bare modules."""
        super()._wrap_distributed()
        for module in self.modules.values():
            if type(module) is torch.nn.parallel.DistributedDataParallel:
                module.__class__ = _ModelDDP  # same object and state, more attributes

    def restore_rng_state(self):
        """Put back the RNG states of a recovered checkpoint (call it last in
        `on_fit_start`, after anything that draws random numbers)."""
        if self._recovered_rng is not None:
            set_rng_state(self._recovered_rng)
            self._recovered_rng = None

    def record_terms(self, terms):
        """Record one batch's loss terms {name: tensor} (keys: `TERMS`): kept as
        `step_terms` and, when all finite, added to the stage averages."""
        self.step_terms = {k: float(v.detach()) for k, v in terms.items()}
        if all(np.isfinite(v) for v in self.step_terms.values()):  # skipped ones stay out
            for k, v in self.step_terms.items():
                self.term_sums[k] += v
            self.term_count += 1

    def stage_terms(self, stage):
        """The stage's mean loss terms; `NonFiniteLossError` when no batch of the stage
        had finite terms (an average of nothing would read as a perfect 0.0)."""
        if not self.term_count:
            raise NonFiniteLossError(
                f"{stage.name} stage: no batch gave finite loss terms (last: {self.step_terms}); "
                "check the data of this split (bad_data, damaged audio) and the model"
            )
        return {k: v / self.term_count for k, v in self.term_sums.items()}

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
            with scaled_groups(self.optimizer):
                self.hparams.lr_scheduler(self.optimizer)
        super().optimizers_step()

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        """After each accumulation window: `on_optimizer_step(skipped)`."""
        if should_step:
            skipped, self._skip_update = self._skip_update, False
            self.on_optimizer_step(skipped)

    def on_optimizer_step(self, skipped):
        """Called after each accumulation window; `skipped`: it made no update."""

    def on_stage_start(self, stage, epoch=None):
        """Reset the term averages, unless a training epoch resumes mid-way from an
        intra-epoch checkpoint (Brain's `step` > 0)."""
        if stage != sb.Stage.TRAIN or self.step == 0:
            self.term_sums = dict.fromkeys(self.TERMS, 0.0)
            self.term_count = 0

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
        """Restore `_save`; the RNG states wait for `restore_rng_state`."""
        del end_of_epoch
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.step, self.optimizer_step = state["step"], state["optimizer_step"]
        self.avg_train_loss = state["avg_train_loss"]
        self.term_sums, self.term_count = state["term_sums"], state["term_count"]
        self.nonfinite_skipped = state["nonfinite_skipped"]
        self._recovered_rng = state["rng"]
