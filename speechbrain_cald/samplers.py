"""The training batch sampler of every recipe: an "epoch" is `eval_every_steps` batches
(`StepBatchSampler`), so dev evaluation and checkpoints come every `eval_every_steps`
optimizer steps."""

import torch
from speechbrain.dataio.sampler import DynamicBatchSampler, ReproducibleRandomSampler


class StepBatchSampler(torch.utils.data.Sampler):
    """Batches of `batch_sampler` cycled so that one epoch is exactly `steps` batches.

    Each pass over the data reshuffles (the inner sampler's `set_epoch`, seeded by
    the epoch and the pass), so a run is reproducible and a resumed one continues
    with the batches of its epoch.
    """

    def __init__(self, batch_sampler, steps):
        self.batch_sampler = batch_sampler
        self.steps = steps
        self.epoch = 0

    def set_epoch(self, epoch):
        """Called by the Brain at each epoch start."""
        self.epoch = epoch

    def __len__(self):
        return self.steps

    def __iter__(self):
        count, passes = 0, 0
        while True:
            for sampler in (self.batch_sampler, getattr(self.batch_sampler, "sampler", None)):
                if hasattr(sampler, "set_epoch"):
                    sampler.set_epoch(self.epoch * 1000 + passes)
            passes += 1
            for batch in self.batch_sampler:
                yield batch
                count += 1
                if count == self.steps:
                    return


def train_batch_sampler(train_set, hparams):
    """The train batch sampler: length-bucketed dynamic batches
    (`dynamic_batch_sampler` options, lengths in seconds) when `dynamic_batching`,
    else shuffled batches of `batch_size`; cycled per `eval_every_steps` when set."""
    seed = hparams["seed"]
    if hparams.get("dynamic_batching", False):
        sampler = DynamicBatchSampler(
            train_set,
            length_func=lambda x: float(x["duration"]),
            seed=seed,
            **hparams["dynamic_batch_sampler"],
        )
    else:
        sampler = torch.utils.data.BatchSampler(
            ReproducibleRandomSampler(train_set, seed=seed), hparams["batch_size"], False
        )
    steps = hparams.get("eval_every_steps")
    return StepBatchSampler(sampler, steps) if steps else sampler
