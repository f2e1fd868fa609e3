"""Valid-frame masks from the padding conventions used across the project.

Padding is always at the right. Lengths arrive as SpeechBrain relative lengths, a
boolean / 0-1 mask, or a Hugging Face additive mask (2-D or 4-D); every lobe turns
them into one boolean `(batch, time)` mask with this helper.
"""

import torch


def _mask_from_attention_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Boolean key-validity mask `(batch, time)` from any supported attention mask."""
    mask = attention_mask
    if mask.dtype == torch.bool:
        valid = mask
    elif mask.is_floating_point() and (mask < 0).any():
        valid = mask == 0  # HF additive: 0 attend, large negative masked
    elif mask.is_floating_point() and not (mask != 0).any():
        valid = torch.ones_like(mask, dtype=torch.bool)  # additive mask with nothing masked
    else:
        valid = mask != 0  # 0-1 mask: 1 = valid
    if valid.dim() == 4:
        # (batch, 1, q, time): a key is valid if any query may attend to it (this also
        # reads padding-only masks out of causal ones, whose last row sees every key).
        valid = valid[:, 0].any(dim=-2)
    if valid.dim() != 2:
        raise ValueError(
            "attention_mask must have shape (batch, time), (batch, 1, 1, time) or "
            f"(batch, 1, time, time); got {tuple(attention_mask.shape)}"
        )
    return valid


def valid_mask(
    batch: int,
    time: int,
    lengths: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Boolean mask `(batch, time)`, True on valid (non-padded) frames.

    Args:
        batch, time: shape of the sequence batch.
        lengths: SpeechBrain relative lengths `(batch,)` in (0, 1]; the valid length of
            utterance b is `round(lengths[b] * time)`.
        attention_mask: boolean or 0-1 mask `(batch, time)` with 1 = valid, or an HF
            additive mask (0 valid, large negative padded) of shape `(batch, time)`,
            `(batch, 1, 1, time)` or `(batch, 1, time, time)`.
        device: device of the result (default: that of `lengths` / `attention_mask`).

    With neither `lengths` nor `attention_mask`, every frame is valid.
    """
    if lengths is not None and attention_mask is not None:
        raise ValueError("give either lengths or attention_mask, not both")
    if attention_mask is not None:
        valid = _mask_from_attention_mask(attention_mask)
        if valid.shape != (batch, time):
            raise ValueError(
                f"attention_mask gives a ({tuple(valid.shape)}) mask, expected ({batch}, {time})"
            )
        return valid.to(device if device is not None else valid.device)
    if lengths is not None:
        device = device if device is not None else lengths.device
        n_valid = torch.round(lengths.to(device=device, dtype=torch.float64) * time).long()
        return torch.arange(time, device=device)[None, :] < n_valid[:, None]
    return torch.ones(batch, time, dtype=torch.bool, device=device)
