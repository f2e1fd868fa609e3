"""LR schedules of the recipes, called once per optimizer step as scheduler(optimizer).

- `WarmupExpDecayHold` (speech, ref): linear warm-up, exponential decay to
  lr * decay_factor, then held there (ref: 3e-4, 5k warm-up, 75k decay to 1.5e-6,
  held for the last 10k of 90k steps).
- `WarmupCosineLRSchedule` (LM, ref): linear warm-up, cosine decay to lr * final_ratio.
- GLUE uses SpeechBrain's `LinearWarmupScheduler` (linear warm-up and decay to 0, ref).

Each sets one LR for every parameter group; `param_groups.scaled_groups` gives groups
with an `lr_scale` their multiple of it.
"""

import logging
import math

import torch
from speechbrain.nnet.schedulers import WarmAndExpDecayLRSchedule
from speechbrain.utils import checkpoints

logger = logging.getLogger(__name__)


@checkpoints.register_checkpoint_hooks
class WarmupExpDecayHold(WarmAndExpDecayLRSchedule):
    """SpeechBrain's WarmAndExpDecayLRSchedule (linear warm-up over `n_warmup_steps`,
    exponential decay to lr * `decay_factor` at `total_steps`), held at that floor
    from `total_steps` on instead of decaying further."""

    def __init__(self, lr, n_warmup_steps, total_steps, decay_factor=0.1):
        steps_ok = all(isinstance(n, int) for n in (n_warmup_steps, total_steps))
        if not steps_ok or not 0 <= n_warmup_steps < total_steps:
            raise ValueError(
                f"WarmupExpDecayHold needs integers 0 <= n_warmup_steps < total_steps; got "
                f"n_warmup_steps={n_warmup_steps!r}, total_steps={total_steps!r} (is "
                "warmup_steps larger than max_steps, or decay_steps negative?)"
            )
        super().__init__(lr, n_warmup_steps, total_steps, decay_factor)

    def __call__(self, opt):
        past_decay = self.current_step >= self.n_warmup_steps + self.decay_steps
        super().__call__(opt)
        if past_decay:
            self.current_lr = self.base_lr * self.decay_factor
            for group in opt.param_groups:
                group["lr"] = self.current_lr


@checkpoints.register_checkpoint_hooks
class WarmupCosineLRSchedule:
    """Linear warm-up over `n_warmup_steps`, then cosine decay to `lr * final_ratio`
    at `total_steps`; called once per optimizer step (as the Brain's lr_scheduler)."""

    def __init__(self, lr, n_warmup_steps, total_steps, final_ratio=0.1):
        self.lr, self.n_warmup_steps, self.total_steps = lr, n_warmup_steps, total_steps
        self.final_ratio = final_ratio
        self.step = 0

    def __call__(self, opt):
        self.step += 1
        if self.step <= self.n_warmup_steps:
            lr = self.lr * self.step / max(self.n_warmup_steps, 1)
        else:
            span = max(self.total_steps - self.n_warmup_steps, 1)
            progress = min((self.step - self.n_warmup_steps) / span, 1.0)
            cosine = 0.5 * (1 + math.cos(math.pi * progress))
            lr = self.lr * (self.final_ratio + (1 - self.final_ratio) * cosine)
        for group in opt.param_groups:
            group["lr"] = lr
        return lr

    @checkpoints.mark_as_saver
    def _save(self, path):
        torch.save({"step": self.step}, path)

    @checkpoints.mark_as_loader
    def _load(self, path, end_of_epoch=False):
        del end_of_epoch
        self.step = torch.load(path, weights_only=True)["step"]


def size_schedule(hparams, n_train):
    """Size the `warmup_ratio` LR schedules (speechbrain's LinearWarmupScheduler: the
    student's `lr_scheduler` and the trajectory teacher's `trajectory_lr_scheduler`)
    from the run length: training steps = epochs * batches per epoch
    (`eval_every_steps`, else the train set in `batch_size` batches), warm-up that
    fraction of them (reference: linear schedule, 6% warm-up, 10 epochs)."""
    ratio = hparams.get("warmup_ratio")
    if ratio is None:
        return
    per_epoch = hparams.get("eval_every_steps") or math.ceil(n_train / hparams["batch_size"])
    for name in ("lr_scheduler", "trajectory_lr_scheduler"):
        scheduler = hparams.get(name)
        if scheduler is None:
            continue
        scheduler.num_training_steps = hparams["number_of_epochs"] * per_epoch
        scheduler.num_warmup_steps = int(ratio * scheduler.num_training_steps)
        logger.info(
            "%s: %d steps, %d warm-up",
            name,
            scheduler.num_training_steps,
            scheduler.num_warmup_steps,
        )
