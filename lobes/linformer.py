"""Linformer self-attention with BERT-compatible query/key/value projections.

Keys and values are projected along time, from the valid length L_b of each sequence
down to k rows, by E and F (`(max_len, k)`): K' = E[:L_b]^T K[:L_b] / sqrt(L_b),
V' = F[:L_b]^T V[:L_b] / sqrt(L_b); then ordinary softmax attention of every query on
the k projected keys. Cost is linear in time. The `query`, `key` and `value` layers
keep the names of BertSelfAttention / RobertaSelfAttention so their weights load.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn

from .masking import valid_mask

SHARING_MODES = ("none", "key_value", "layer")


@dataclass
class LinformerConfig:
    """Hyper-parameters of a Linformer self-attention.

    `k`: projected length; `max_len`: longest sequence E/F can project.
    `sharing`: "none" (separate E and F per layer), "key_value" (F is E, per layer) or
    "layer" (F is E, one projection shared by every layer).
    """

    hidden_size: int
    num_attention_heads: int
    k: int = 256
    max_len: int = 514
    sharing: str = "none"
    attention_dropout: float = 0.1

    def __post_init__(self):
        if self.sharing not in SHARING_MODES:
            raise ValueError(f"sharing must be one of {SHARING_MODES}, got {self.sharing!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_attention_heads}"
            )


class LinformerProjections(nn.Module):
    """The time projections E and F, each `(max_len, k)`, N(0, 1) init.

    With sharing "key_value" or "layer", `F` is the same Parameter as `E` (one tensor,
    listed once by `parameters()` but under both names in `state_dict()`).
    """

    def __init__(self, config: LinformerConfig):
        super().__init__()
        self.E = nn.Parameter(torch.randn(config.max_len, config.k))
        if config.sharing == "none":
            self.F = nn.Parameter(torch.randn(config.max_len, config.k))
        else:
            self.F = self.E


class LinformerSelfAttention(nn.Module):
    """Multi-head Linformer attention; drop-in for BERT's self-attention core.

    Args:
        config: LinformerConfig.
        projections: a LinformerProjections to share (sharing "layer": pass the same
            object to every layer); by default the module creates its own.
    """

    def __init__(self, config: LinformerConfig, projections: LinformerProjections | None = None):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.projections = projections if projections is not None else LinformerProjections(config)
        self.dropout = nn.Dropout(config.attention_dropout)

    def _split_heads(self, states: torch.Tensor) -> torch.Tensor:
        """`(batch, time, hidden)` -> `(batch, heads, time, head_dim)`."""
        batch, time, _ = states.shape
        return states.view(batch, time, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Attention context `(batch, time, hidden)`, before BERT's SelfOutput dense.

        Args:
            hidden_states: `(batch, time, hidden)`, right-padded.
            attention_mask: any mask `valid_mask` reads (boolean / 0-1 `(batch, time)`,
                or an HF additive mask, 2-D or 4-D); None = no padding.

        Padded positions get a zero context (the caller ignores them).
        """
        batch, time, _ = hidden_states.shape
        E, F = self.projections.E, self.projections.F
        if time > E.shape[0]:
            raise ValueError(
                f"sequence length {time} exceeds max_len {E.shape[0]}: the Linformer "
                f"projections E/F have shape {tuple(E.shape)} (max_len, k)"
            )
        valid = valid_mask(batch, time, attention_mask=attention_mask, device=E.device)
        # (batch, time, 1): zeroes E/F rows beyond each L_b and applies 1 / sqrt(L_b)
        lengths = valid.sum(dim=1).clamp(min=1)
        row_weight = valid.to(hidden_states.dtype) / lengths.to(hidden_states.dtype).sqrt()[:, None]
        row_weight = row_weight[..., None]
        E_b = E[:time].to(hidden_states.dtype) * row_weight  # (batch, time, k)
        F_b = F[:time].to(hidden_states.dtype) * row_weight

        query = self._split_heads(self.query(hidden_states))  # (batch, heads, time, head_dim)
        key = torch.einsum("btp,bhtd->bhpd", E_b, self._split_heads(self.key(hidden_states)))
        value = torch.einsum("btp,bhtd->bhpd", F_b, self._split_heads(self.value(hidden_states)))

        scores = query @ key.transpose(-1, -2) / math.sqrt(self.head_dim)  # (b, h, time, k)
        probs = self.dropout(torch.softmax(scores, dim=-1))
        context = (probs @ value).transpose(1, 2).reshape(batch, time, -1)
        return context * valid[..., None].to(context.dtype)
