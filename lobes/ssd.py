"""Chunked SSD scan (Mamba2's state-space duality) in pure PyTorch.

Computes, for every head h (group g = h // (nheads // ngroups)),

    state_t = exp(dt_t * A_h) * state_{t-1} + dt_t * B_t x_t^T      (state: (n, p))
    y_t     = C_t state_t

in the style of Mamba2's minimal reference (`ssd_minimal_discrete`): the sequence is cut
into chunks; within a chunk the output is a masked "attention" product, and the states
entering the chunks are passed from chunk to chunk by one fused multiply-add each (as
mamba_ssm's state-passing kernel does; a loop over chunks, never over time steps). Unlike
the reference, B/C products are formed once per group (not repeated for every head), and
the chunks are processed in blocks that keep every (.., chunk, chunk) intermediate a few
MB at any length.
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
        return_final_state: also return the state after the last step. A sequence of one
            chunk that starts from zeros and is not asked for its state is step 1 alone
            (no chunk states to compute or pass on).

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

    non_causal = torch.ones(q, q, dtype=torch.bool, device=x.device).triu(1)
    if nchunks == 1 and initial_state is None and not return_final_state:
        y = _within_chunks(xdt, dA_cs, B, C, non_causal).transpose(3, 4)  # (b, 1, g, q, hpg, p)
        return y.permute(0, 1, 3, 2, 4, 5).reshape(b, q, nheads, p)[:, :seqlen]

    # Chunks are processed in blocks of `block` chunks, carrying the state between them:
    # the (.., q, q) intermediates then stay a few MB whatever the length, so they are
    # reused from the allocator's heap and the cache instead of being fresh mmap pages
    # (page faults) that made time grow faster than the length past ~10000 frames.
    block = max(1, BLOCK_ELEMENTS // (b * nheads * q * q))
    if initial_state is None:
        state = torch.zeros(b, g, n, hpg, p, dtype=torch.float32, device=x.device)
    else:  # (b, h, n, p) -> (b, g, n, hpg, p), the layout of the chunk states
        state = initial_state.float().view(b, g, hpg, n, p).transpose(2, 3)
    outputs = []
    # split (not slicing in the loop): its backward is one cat, not a full-size zero
    # tensor per block
    for blk in zip(*(t.split(block, dim=1) for t in (xdt, dA_cs, B, C))):
        y_blk, state = _ssd_block(*blk, state, non_causal)
        outputs.append(y_blk)
    y = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)  # (b, c, g, q, hpg, p)
    y = y.permute(0, 1, 3, 2, 4, 5).reshape(b, c * q, nheads, p)[:, :seqlen]
    if not return_final_state:
        return y
    return y, state.transpose(2, 3).reshape(b, nheads, n, p)


def _within_chunks(xdt, dA_cs, B, C, non_causal):
    """Step 1, each chunk on its own: y_i = sum_{j <= i} (C_i . B_j) exp(cs_i - cs_j) xdt_j
    (shapes as `_ssd_block`'s) -> `(b, c, g, hpg, q, p)`.

    The causal mask goes on CB, shared by the group's heads (hpg times fewer elements than
    the decays); cs_i - cs_j <= 0 for j <= i (the cumulative log-decay never grows), and
    above the diagonal, where CB is 0, clamping to 0 keeps exp finite. In place on fresh
    tensors: masked_fill_'s, clamp_max_'s and exp_'s backward need no saved input.
    """
    CB = (C @ B.transpose(-1, -2)).masked_fill_(non_causal, 0.0)  # (b, c, g, q, q)
    decay = (dA_cs[..., :, None] - dA_cs[..., None, :]).clamp_max_(0.0).exp_()
    scores = CB[:, :, :, None] * decay.to(xdt.dtype)  # (b, c, g, hpg, q, q)
    return scores @ xdt.transpose(3, 4)


def _ssd_block(xdt, dA_cs, B, C, state, non_causal):
    """One block of chunks of `ssd_chunked` (shapes there, with c the block's chunks).

    xdt `(b, c, g, q, hpg, p)`, dA_cs `(b, c, g, hpg, q)` (cumulative log-decays within
    each chunk), B, C `(b, c, g, q, n)`, state `(b, g, n, hpg, p)` float32 entering the
    block's first chunk, non_causal `(q, q)`: True above the diagonal.
    Returns (y `(b, c, g, q, hpg, p)`, state leaving the block's last chunk).
    """
    b, c, g, q, hpg, p = xdt.shape
    n, dtype = B.shape[-1], xdt.dtype

    # 1. Within chunks (the only step when the state enters and leaves no chunk).
    y = _within_chunks(xdt, dA_cs, B, C, non_causal)  # (b, c, g, hpg, q, p)

    # 2. State each chunk adds: s = sum_j exp(cs_end - cs_j) B_j xdt_j^T.
    decay_to_end = torch.exp(dA_cs[..., -1:] - dA_cs).transpose(-1, -2)  # (b, c, g, q, hpg)
    xdt_decayed = (xdt * decay_to_end[..., None].to(dtype)).reshape(b, c, g, q, hpg * p)
    chunk_states = (B.transpose(-1, -2) @ xdt_decayed).float()  # (b, c, g, n, hpg * p)

    # 3. States entering each chunk (Mamba2's state passing): E_{k+1} = exp(a_k) E_k + s_k,
    # a_k = chunk k's total log-decay; one fused multiply-add on (b, g, n, hpg, p) per chunk.
    # unbind, not indexing in the loop: its backward is one stack, not a zero tensor per chunk
    chunk_decay = torch.exp(dA_cs[..., -1])[:, :, :, None, :, None]  # (b, c, g, 1, hpg, 1)
    added = chunk_states.view(b, c, g, n, hpg, p).unbind(1)
    entering = []
    for s_k, decay_k in zip(added, chunk_decay.unbind(1)):
        entering.append(state)
        state = torch.addcmul(s_k, state, decay_k)
    entering = torch.stack(entering, dim=1).view(b, c, g, n, hpg * p).to(dtype)

    # 4. Contribution of the entering state: y_i += exp(cs_i) C_i S_c.
    y_off = (C @ entering).view(b, c, g, q, hpg, p)
    decay_from_start = torch.exp(dA_cs).transpose(-1, -2)[..., None].to(dtype)
    return torch.addcmul(y.transpose(3, 4), y_off, decay_from_start), state
