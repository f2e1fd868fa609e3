"""Chunked SSD scan (Mamba2's state-space duality) in pure PyTorch.

Computes, for every head h (group g = h // (nheads // ngroups)),

    state_t = exp(dt_t * A_h) * state_{t-1} + dt_t * B_t x_t^T      (state: (n, p))
    y_t     = C_t state_t

in the style of Mamba2's minimal reference (`ssd_minimal_discrete`): the sequence is cut
into chunks; within a chunk the output is a masked "attention" product, and the states
are carried between chunks by a short loop over chunks (not over time steps). Unlike the
reference, B/C products are formed once per group (not repeated for every head), and no
tensor larger than (batch, chunks, heads, chunk, chunk) is built.
"""

import torch
import torch.nn.functional as F


def ssd_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
) -> torch.Tensor:
    """Selective state-space scan, chunked.

    Args:
        x: inputs `(batch, seqlen, nheads, headdim)`.
        dt: step sizes `(batch, seqlen, nheads)`, already positive (softplus applied).
        A: decay rates `(nheads,)`, negative.
        B, C: input / output projections `(batch, seqlen, ngroups, dstate)`; ngroups
            divides nheads and head h uses group `h // (nheads // ngroups)`.
        chunk_size: chunk length; any seqlen works (padded internally, sliced off).

    Returns:
        y `(batch, seqlen, nheads, headdim)` in x's dtype. Decays (cumulative sums and
        their exponentials) and the carried states are float32 whatever x's dtype.
    """
    batch, seqlen, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    hpg = nheads // ngroups  # heads per group
    dtype = x.dtype
    pad = (-seqlen) % chunk_size
    nchunks = (seqlen + pad) // chunk_size
    b, c, q, g, p, n = batch, nchunks, chunk_size, ngroups, headdim, dstate

    # Discretise: dt_t x_t enters the state, dt_t * A is the log-decay of step t.
    xdt = x * dt[..., None].to(dtype)  # (b, l, h, p)
    dA = dt.float() * A.float()  # (b, l, h)
    if pad:  # zero steps at the end: no input, decay 1, outputs sliced off below
        xdt = F.pad(xdt, (0, 0, 0, 0, 0, pad))
        dA = F.pad(dA, (0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, 0, 0, pad))
    xdt = xdt.view(b, c, q, g, hpg, p).permute(0, 1, 3, 2, 4, 5)  # (b, c, g, q, hpg, p)
    B = B.to(dtype).view(b, c, q, g, n).transpose(2, 3)  # (b, c, g, q, n)
    C = C.to(dtype).view(b, c, q, g, n).transpose(2, 3)  # (b, c, g, q, n)
    dA_cs = dA.view(b, c, q, g, hpg).permute(0, 1, 3, 4, 2).cumsum(-1)  # (b, c, g, hpg, q)

    # 1. Within chunks: y_i = sum_{j <= i} (C_i . B_j) exp(cs_i - cs_j) xdt_j.
    CB = C @ B.transpose(-1, -2)  # (b, c, g, q, q), shared by the group's heads
    causal = torch.ones(q, q, dtype=torch.bool, device=x.device).tril()
    seg = (dA_cs[..., :, None] - dA_cs[..., None, :]).masked_fill(~causal, -torch.inf)
    scores = CB[:, :, :, None] * torch.exp(seg).to(dtype)  # (b, c, g, hpg, q, q)
    y = scores @ xdt.transpose(3, 4)  # (b, c, g, hpg, q, p)

    # 2. State each chunk adds: s = sum_j exp(cs_end - cs_j) B_j xdt_j^T.
    decay_to_end = torch.exp(dA_cs[..., -1:] - dA_cs).transpose(-1, -2)  # (b, c, g, q, hpg)
    xdt_decayed = (xdt * decay_to_end[..., None].to(dtype)).reshape(b, c, g, q, hpg * p)
    chunk_states = B.transpose(-1, -2) @ xdt_decayed  # (b, c, g, n, hpg * p)

    # 3. Carry states across chunks: S_c = exp(sum dA over chunk c - 1) S_{c-1} + s_{c-1}.
    chunk_decay = torch.exp(dA_cs[..., -1]).repeat_interleave(p, dim=-1)  # (b, c, g, hpg * p)
    state = torch.zeros(b, g, n, hpg * p, dtype=torch.float32, device=x.device)
    entering = []
    # unbind (not indexing in the loop): its backward is one stack, not c full-size scatters
    for decay, added in zip(chunk_decay.unbind(1), chunk_states.float().unbind(1)):
        entering.append(state)
        state = state * decay[:, :, None] + added
    entering = torch.stack(entering, dim=1).to(dtype)  # (b, c, g, n, hpg * p)

    # 4. Contribution of the entering state: y_i += exp(cs_i) C_i S_c.
    y_off = (C @ entering).view(b, c, g, q, hpg, p)
    y_off = y_off * torch.exp(dA_cs).transpose(-1, -2)[..., None].to(dtype)

    y = y.transpose(3, 4) + y_off  # (b, c, g, q, hpg, p)
    return y.permute(0, 1, 3, 2, 4, 5).reshape(b, c * q, nheads, p)[:, :seqlen]
