"""Bidirectional Mamba2: a forward and a backward Mamba2 mixer, summed (`BiMamba2`, the
paper's), or one input projection shared by both directions' scans (`SharedProjectionBiMamba2`,
as in Hydra: half the projection FLOPs, a different function and state dict).

The backward direction reads each utterance reversed *within its own valid length*, so
padding (always at the right) stays at the end in both directions and a causal scan
never reads it: a padded utterance gives exactly the output it gives alone.
"""

import torch
from torch import nn

from .mamba2 import Mamba2Config, Mamba2Mixer, Mamba2Scan, RMSNormGated, scan_backend
from .masking import valid_mask


def time_reversal(hidden_states, lengths=None, attention_mask=None):
    """(valid, reverse) for a `(batch, time, ...)` input: `valid` `(batch, time)` bool
    (None when neither lengths nor attention_mask is given, see `masking.valid_mask`) and
    `reverse(t)`, which reverses each utterance of any `(batch, time, width)` tensor
    within its valid frames: frame t of the reversed utterance is frame n_valid - 1 - t,
    padding maps to itself. The map is its own inverse, so `reverse` also undoes it.
    Without padding it is a plain flip."""
    if lengths is None and attention_mask is None:
        return None, lambda t: t.flip(1)
    batch, time = hidden_states.shape[:2]
    device = hidden_states.device
    valid = valid_mask(batch, time, lengths, attention_mask, device=device)
    n_valid = valid.sum(dim=1, keepdim=True)  # (b, 1)
    pos = torch.arange(time, device=device)[None, :]  # (1, t)
    index = torch.where(pos < n_valid, n_valid - 1 - pos, pos)[..., None]  # (b, t, 1)
    return valid, lambda t: t.gather(1, index.expand(-1, -1, t.shape[-1]))


class BiMamba2(nn.Module):
    """`fw(x) + reverse(bw(reverse(x)))`, zeroed on padded frames.

    Submodules `forward_mixer` and `backward_mixer` are Mamba2Mixer(config).
    """

    def __init__(self, config: Mamba2Config):
        super().__init__()
        self.config = config
        self.forward_mixer = Mamba2Mixer(config)
        self.backward_mixer = Mamba2Mixer(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        lengths: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """hidden_states `(batch, time, d_model)` -> `(batch, time, d_model)`.

        lengths / attention_mask: see `masking.valid_mask` (relative lengths, boolean /
        0-1 mask, or HF additive 2-D / 4-D mask); none means every frame is valid.
        """
        valid, reverse = time_reversal(hidden_states, lengths, attention_mask)
        out = self.forward_mixer(hidden_states) + reverse(
            self.backward_mixer(reverse(hidden_states))
        )
        return out if valid is None else out * valid[..., None].to(out.dtype)


class SharedProjectionBiMamba2(nn.Module):
    """Both directions' scans on one input projection (Hydra's sharing, Hwang et al. 2024):
    `out_proj(norm(fw(xBC, dt_fw) + reverse(bw(reverse(xBC), reverse(dt_bw))), z))`,
    zeroed on padded frames.

    in_proj `d_model -> [z, xBC, dt_fw, dt_bw]` (one z, x, B, C for both directions;
    each its own dt) and one gated norm and out_proj: half the projection FLOPs of
    BiMamba2. Each direction keeps its own causal conv, dt_bias, A_log and D
    (`forward_scan`, `backward_scan`: Mamba2Scan); Hydra also shares the conv and A,
    which cost little. Not loadable into mamba_ssm's Mamba2.
    """

    def __init__(self, config: Mamba2Config):
        super().__init__()
        self.config = cfg = config
        width = cfg.d_inner + cfg.conv_dim + 2 * cfg.nheads
        self.in_proj = nn.Linear(cfg.d_model, width, bias=cfg.bias)
        self.forward_scan = Mamba2Scan(cfg)
        self.backward_scan = Mamba2Scan(cfg)
        self.norm = RMSNormGated(
            cfg.d_inner, group_size=cfg.d_inner // cfg.ngroups, eps=cfg.norm_eps
        )
        self.out_proj = nn.Linear(cfg.d_inner, cfg.d_model, bias=cfg.bias)

    def forward(
        self,
        hidden_states: torch.Tensor,
        lengths: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """hidden_states `(batch, time, d_model)` -> `(batch, time, d_model)`; lengths /
        attention_mask as BiMamba2's."""
        cfg = self.config
        backend = scan_backend(cfg, hidden_states.device, self.in_proj.out_features, "mamba2")
        split = [cfg.d_inner, cfg.conv_dim, cfg.nheads, cfg.nheads]
        z, xBC, dt_fw, dt_bw = self.in_proj(hidden_states).split(split, dim=-1)
        valid, reverse = time_reversal(hidden_states, lengths, attention_mask)
        y_fw = self.forward_scan.scan_sequence(xBC, dt_fw, backend)  # (b, l, d_inner)
        y_bw = self.backward_scan.scan_sequence(reverse(xBC), reverse(dt_bw), backend)
        out = self.out_proj(self.norm(y_fw + reverse(y_bw), z))
        return out if valid is None else out * valid[..., None].to(out.dtype)


def mamba2_config_for_attention_init(d_model: int, num_heads: int, **overrides) -> Mamba2Config:
    """Mamba2Config whose in_proj x / B / C blocks have the shapes of attention's V / K / Q.

    ngroups = nheads = num_heads and d_state = headdim = d_model // num_heads, expand 1.
    """
    head_dim = d_model // num_heads
    kwargs = dict(d_model=d_model, expand=1, headdim=head_dim, d_state=head_dim, ngroups=num_heads)
    return Mamba2Config(**(kwargs | overrides))


@torch.no_grad()
def init_bimamba2_from_attention(
    bimamba: BiMamba2 | SharedProjectionBiMamba2,
    q: nn.Linear,
    k: nn.Linear,
    v: nn.Linear,
    o: nn.Linear,
    num_heads: int,
) -> None:
    """Copy attention weights into each input / output projection (Mamba-in-the-Llama
    style): both mixers of a BiMamba2, the one shared pair of a SharedProjectionBiMamba2.

    In in_proj [z, x, B, C, dt...]: V -> x rows, K -> B rows, Q -> C rows, so per head
    C_t . B_s = q_t . k_s; O -> out_proj. The rest keeps its init; biases of q/k/v/o
    are not copied (the caller reports them).
    """
    cfg = bimamba.config
    head_dim = cfg.d_model // num_heads
    expected = (cfg.d_inner, cfg.ngroups, cfg.nheads, cfg.d_state, cfg.headdim)
    if expected != (cfg.d_model, num_heads, num_heads, head_dim, head_dim):
        raise ValueError(
            "config must come from mamba2_config_for_attention_init (expand 1, ngroups = "
            f"nheads = {num_heads}, d_state = headdim = {head_dim}); got {cfg}"
        )
    d, gn = cfg.d_inner, cfg.ngroups * cfg.d_state
    shared = isinstance(bimamba, SharedProjectionBiMamba2)
    for mixer in (bimamba,) if shared else (bimamba.forward_mixer, bimamba.backward_mixer):
        w = mixer.in_proj.weight  # (in_proj width, d_model)
        w[d : 2 * d].copy_(v.weight)
        w[2 * d : 2 * d + gn].copy_(k.weight)
        w[2 * d + gn : 2 * d + 2 * gn].copy_(q.weight)
        mixer.out_proj.weight.copy_(o.weight)
