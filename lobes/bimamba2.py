"""Bidirectional Mamba2: a forward and a backward Mamba2 mixer, summed.

The backward mixer reads each utterance reversed *within its own valid length*, so
padding (always at the right) stays at the end in both directions and a causal scan
never reads it: a padded utterance gives exactly the output it gives alone.

On the pure-PyTorch path both directions run fused, as one mixer over a batch of
twice the size: the two input projections stacked, then one depthwise conv, one
scan (each sequence with its own direction's decays), one gated norm, each with the
two directions' parameters stacked; the backward output is reversed back and summed.
At short lengths, where the mixer's cost is per-operation overhead more than
arithmetic, that halves the number of operations. Parameters stay the two
`Mamba2Mixer`s (state dicts as mamba_ssm's, loadable in either form).
"""

import torch
from torch import nn

from .backend import resolve_backend
from .mamba2 import Mamba2Config, Mamba2Mixer, Mamba2Params, in_time_blocks, mix_projected
from .masking import valid_mask


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
        batch, time, d_model = hidden_states.shape
        if lengths is None and attention_mask is None:  # no padding: a plain flip, no mask
            valid = None

            def reverse(x):
                return x.flip(-2)
        else:
            valid = valid_mask(batch, time, lengths, attention_mask, device=hidden_states.device)
            n_valid = valid.sum(dim=1, keepdim=True)  # (b, 1)
            pos = torch.arange(time, device=hidden_states.device)[None, :]  # (1, t)
            # Frame t of the reversed utterance is frame n_valid - 1 - t; padding maps to
            # itself. The map is its own inverse, so the same gather undoes it.
            index = torch.where(pos < n_valid, n_valid - 1 - pos, pos)  # (b, t)
            index = index[..., None].expand(batch, time, d_model)

            def reverse(x):
                return x.gather(-2, index)

        backend = resolve_backend(self.config.backend, hidden_states.device, kind="mamba2")
        if backend == "torch" or self.config.in_proj_width % 8:
            forward_out, backward_out = self._fused(hidden_states, reverse(hidden_states))
        else:  # mamba_ssm's kernels, one mixer at a time
            forward_out = self.forward_mixer(hidden_states)
            backward_out = self.backward_mixer(reverse(hidden_states))
        out = forward_out + reverse(backward_out)
        return out if valid is None else out * valid[..., None].to(out.dtype)

    def _fused(self, forward_in: torch.Tensor, backward_in: torch.Tensor):
        """Both mixers at once (pure PyTorch, in time blocks as `Mamba2Mixer`):
        `(batch, time, d_model)` inputs, each in its own reading order -> the two
        mixers' outputs, in those orders."""
        mixers = (self.forward_mixer, self.backward_mixer)
        stacked = [  # each parameter of both mixers, (2, 1, 1, ...): broadcasts on (2, b, l, ...)
            None if pair[0] is None else torch.stack(pair)[:, None, None]
            for pair in zip(*(m.ssm_parameters() for m in mixers))
        ]
        params = Mamba2Params(*stacked)

        def block_fn(block, mask, conv_context, ssm_state):
            del mask  # padding stays at the end in both reading orders: no valid frame reads it
            zxbcdt = torch.stack([m.in_proj(x) for m, x in zip(mixers, block)])  # (2, b, l, w)
            y, conv_context, ssm_state = mix_projected(
                zxbcdt, params, self.config, conv_context, ssm_state
            )
            out = torch.stack([m.out_proj(y_m) for m, y_m in zip(mixers, y)])  # (2, b, l, d)
            return out, conv_context, ssm_state

        both = torch.stack([forward_in, backward_in])  # (2, b, t, d)
        out, _ = in_time_blocks(block_fn, both, self.config.torch_time_block)
        return out.unbind(0)


def mamba2_config_for_attention_init(d_model: int, num_heads: int, **overrides) -> Mamba2Config:
    """Mamba2Config whose in_proj x / B / C blocks have the shapes of attention's V / K / Q.

    ngroups = nheads = num_heads and d_state = headdim = d_model // num_heads, expand 1.
    """
    head_dim = d_model // num_heads
    kwargs = dict(d_model=d_model, expand=1, headdim=head_dim, d_state=head_dim, ngroups=num_heads)
    return Mamba2Config(**(kwargs | overrides))


@torch.no_grad()
def init_bimamba2_from_attention(
    bimamba: BiMamba2, q: nn.Linear, k: nn.Linear, v: nn.Linear, o: nn.Linear, num_heads: int
) -> None:
    """Copy attention weights into both mixers (Mamba-in-the-Llama style).

    In each mixer's in_proj [z, x, B, C, dt]: V -> x rows, K -> B rows, Q -> C rows, so per
    head C_t . B_s = q_t . k_s; O -> out_proj. The rest keeps its init; biases of q/k/v/o
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
    for mixer in (bimamba.forward_mixer, bimamba.backward_mixer):
        w = mixer.in_proj.weight  # (in_proj_width, d_model)
        w[d : 2 * d].copy_(v.weight)
        w[2 * d : 2 * d + gn].copy_(k.weight)
        w[2 * d + gn : 2 * d + 2 * gn].copy_(q.weight)
        mixer.out_proj.weight.copy_(o.weight)
