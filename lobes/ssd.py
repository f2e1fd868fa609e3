"""Chunked SSD scan (Mamba2's state-space duality) in pure PyTorch.

Computes, for every head h (group g = h // (nheads // ngroups)),

    state_t = exp(dt_t * A_h) * state_{t-1} + dt_t * B_t x_t^T      (state: (n, p))
    y_t     = C_t state_t

in the style of Mamba2's minimal reference (`ssd_minimal_discrete`): the sequence is cut
into chunks; within a chunk the output is a masked "attention" product, and the states
entering the chunks come from one decay-weighted matmul over the chunks' own states
(Mamba2's `segsum` of chunk decays). Unlike the reference, B/C products are formed once
per group (not repeated for every head), and the chunks are processed in blocks that keep
every (.., chunk, chunk) intermediate a few MB at any length, the state carried from block
to block by a short loop over blocks (not over chunks or time steps).
"""

import torch
import torch.nn.functional as F

# Elements of the largest per-block intermediate, (b, c, g, hpg, q, q): 2^21 floats = 8 MB,
# below glibc's largest mmap threshold (32 MB) and within a server CPU's L2/L3 share.
BLOCK_ELEMENTS = 2**21


def ssd_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective state-space scan, chunked.

    Args:
        x: inputs `(batch, seqlen, nheads, headdim)`.
        dt: step sizes `(batch, seqlen, nheads)`, already positive (softplus applied).
        A: decay rates `(nheads,)`, negative.
        B, C: input / output projections `(batch, seqlen, ngroups, dstate)`; ngroups
            divides nheads and head h uses group `h // (nheads // ngroups)`.
        chunk_size: chunk length; any seqlen works (padded internally, sliced off).
        initial_state: `(batch, nheads, dstate, headdim)` float32 state before step 0
            (zeros when None), e.g. the final state of the preceding part of a sequence.

    Returns:
        y `(batch, seqlen, nheads, headdim)` in x's dtype, and with `return_final_state`
        the state after the last step, `(batch, nheads, dstate, headdim)` float32 (the
        zero-input, zero-decay padding steps leave it unchanged). Decays (cumulative
        sums and their exponentials) and the carried states are float32 whatever x's dtype.
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

    # Chunks are processed in blocks of `block` chunks, carrying the state between them:
    # the (.., q, q) intermediates then stay a few MB whatever the length, so they are
    # reused from the allocator's heap and the cache instead of being fresh mmap pages
    # (page faults) that made time grow faster than the length past ~10000 frames.
    block = max(1, BLOCK_ELEMENTS // (b * nheads * q * q))
    causal = torch.ones(q, q, dtype=torch.bool, device=x.device).tril()
    if initial_state is None:
        state = torch.zeros(b, g, hpg, n * p, dtype=torch.float32, device=x.device)  # per head
    else:
        state = initial_state.float().reshape(b, g, hpg, n * p)
    outputs = []
    # split (not slicing in the loop): its backward is one cat, not a full-size zero
    # tensor per block
    for blk in zip(*(t.split(block, dim=1) for t in (xdt, dA_cs, B, C))):
        y_blk, state = _ssd_block(*blk, state, causal)
        outputs.append(y_blk)
    y = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)  # (b, c, g, q, hpg, p)
    y = y.permute(0, 1, 3, 2, 4, 5).reshape(b, c * q, nheads, p)[:, :seqlen]
    return (y, state.view(b, nheads, n, p)) if return_final_state else y


def _ssd_block(xdt, dA_cs, B, C, state, causal):
    """One block of chunks of `ssd_chunked` (shapes there, with c the block's chunks).

    xdt `(b, c, g, q, hpg, p)`, dA_cs `(b, c, g, hpg, q)` (cumulative log-decays within
    each chunk), B, C `(b, c, g, q, n)`, state `(b, g, hpg, n * p)` float32 entering the
    block's first chunk, causal `(q, q)` lower-triangular mask.
    Returns (y `(b, c, g, q, hpg, p)`, state leaving the block's last chunk).
    """
    b, c, g, q, hpg, p = xdt.shape
    n, dtype = B.shape[-1], xdt.dtype

    # 1. Within chunks: y_i = sum_{j <= i} (C_i . B_j) exp(cs_i - cs_j) xdt_j.
    CB = C @ B.transpose(-1, -2)  # (b, c, g, q, q), shared by the group's heads
    seg = (dA_cs[..., :, None] - dA_cs[..., None, :]).masked_fill(~causal, -torch.inf)
    scores = CB[:, :, :, None] * torch.exp(seg).to(dtype)  # (b, c, g, hpg, q, q)
    y = scores @ xdt.transpose(3, 4)  # (b, c, g, hpg, q, p)

    # 2. State each chunk adds: s = sum_j exp(cs_end - cs_j) B_j xdt_j^T.
    decay_to_end = torch.exp(dA_cs[..., -1:] - dA_cs).transpose(-1, -2)  # (b, c, g, q, hpg)
    xdt_decayed = (xdt * decay_to_end[..., None].to(dtype)).reshape(b, c, g, q, hpg * p)
    chunk_states = B.transpose(-1, -2) @ xdt_decayed  # (b, c, g, n, hpg * p)

    # 3. States entering each chunk, and leaving the block, without a loop over chunks:
    # E_c = exp(a_0 + .. + a_{c-1}) S_in + sum_{k < c} exp(a_{k+1} + .. + a_{c-1}) s_k,
    # c = 0..C (E_C leaves the block), a_k = the log-decay of chunk k. The exponents are
    # sums of the terms in range (not differences of running sums), as in Mamba2's segsum.
    chunk_log_decay = dA_cs[..., -1].permute(0, 2, 3, 1)  # (b, g, hpg, c)
    in_range = torch.ones(c + 1, c, dtype=torch.bool, device=xdt.device).tril(-1)
    terms = chunk_log_decay[..., None, :].masked_fill(~in_range, 0.0)  # (b, g, hpg, c+1, c)
    suffix = terms.flip(-1).cumsum(-1).flip(-1)  # [.., c, k] = a_k + .. + a_{c-1}
    weights = torch.exp(F.pad(suffix[..., 1:], (0, 1))).masked_fill(~in_range, 0.0)
    from_start = torch.exp(suffix[..., 0])  # (b, g, hpg, c+1): decay of S_in to chunk c
    # (b, g, hpg, c, n * p) per head: states added by each chunk
    added = chunk_states.float().view(b, c, g, n, hpg, p).permute(0, 2, 4, 1, 3, 5)
    entering = weights @ added.reshape(b, g, hpg, c, n * p)  # (b, g, hpg, c+1, n * p)
    entering = entering + from_start[..., None] * state[..., None, :]
    state = entering[..., -1, :]
    entering = entering[..., :-1, :].reshape(b, g, hpg, c, n, p).permute(0, 3, 1, 4, 2, 5)
    entering = entering.reshape(b, c, g, n, hpg * p).to(dtype)

    # 4. Contribution of the entering state: y_i += exp(cs_i) C_i S_c.
    y_off = (C @ entering).view(b, c, g, q, hpg, p)
    y_off = y_off * torch.exp(dA_cs).transpose(-1, -2)[..., None].to(dtype)
    return y.transpose(3, 4) + y_off, state
