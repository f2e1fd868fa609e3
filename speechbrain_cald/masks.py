"""Padding masks: the one place lengths become masks and masked means are taken.

SpeechBrain batches carry relative lengths (fraction of the padded length); the HF
models take 0/1 masks over their inputs; losses, pooling and the lobes read boolean
`(batch, time)` masks, True on valid positions (padding always at the right).
"""

import torch


def lengths_to_mask(rel_lens, max_len):
    """(batch,) SpeechBrain relative lengths -> (batch, max_len) bool mask."""
    abs_lens = torch.round(rel_lens * max_len).long()
    return counts_to_mask(abs_lens, max_len)


def counts_to_mask(counts, max_len):
    """(batch,) numbers of valid positions -> (batch, max_len) bool mask."""
    return torch.arange(max_len, device=counts.device) < counts.unsqueeze(1)


def masked_mean(values, mask, dim):
    """Mean of `values` over `dim` counting only positions where `mask` is True.

    `mask` has the shape of `values` up to trailing dimensions, which it broadcasts
    over (e.g. a (batch, time) mask for (batch, time, features) values); a row with
    no valid position gives 0.
    """
    while mask.dim() < values.dim():
        mask = mask.unsqueeze(-1)
    weights = mask.to(values.dtype)
    return (values * weights).sum(dim) / weights.sum(dim).clamp(min=1)
