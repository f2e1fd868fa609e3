"""Mamba2 mixer with mamba_ssm.modules.mamba2.Mamba2's parameter names and shapes.

Two scan backends behind one module: "torch" (the chunked SSD scan of `ssd.py`, runs
anywhere) and "mamba_ssm" (its Triton kernel `mamba_chunk_scan_combined`, CUDA only).
Checkpoints move between them, and to mamba_ssm.Mamba2, unchanged.
"""

import functools
import math
import warnings
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .backend import resolve_backend
from .ssd import ssd_chunked


@dataclass
class Mamba2Config:
    """Hyper-parameters of one Mamba2 mixer (names as mamba_ssm.Mamba2's arguments).

    The defaults keep the input-projection width `2*d_inner + 2*ngroups*d_state + nheads`
    a multiple of 8, which mamba-ssm's fused CUDA path (causal_conv1d on a channel-last
    slice of the projection) requires. `headdim` None picks the first of 64 (the
    reference), 48 that divides d_inner with such a width, else 32: 48 for d_model 768
    (width 1808; 64 would give 1804) and 64 for d_model 1024 (width 2320), with d_state 128
    and expand 1. Fewer, wider heads are also faster on CPU (the (chunk, chunk) decay work is
    per head): headdim 48 vs 32 at d_model 768 took 0.90x the forward and 0.94x the
    forward+backward time of one BiMamba2, 64 vs 32 at d_model 1024 0.91x both
    (3000 frames, 2 threads; docs/BENCHMARKS.md).

    `chunk_size` is the mamba_ssm kernel's chunk; the pure-PyTorch scan uses
    `torch_chunk_size` (fastest on CPU; the result does not depend on it beyond rounding),
    and runs a whole input of up to `torch_single_chunk` frames whose final state is not
    needed as one chunk: the within-chunk product alone, no chunk states and no padding to
    a multiple of the chunk, which is faster for short inputs (docs/BENCHMARKS.md).
    The pure-PyTorch mixer runs long inputs in blocks of `torch_time_block` frames (whole
    mixer per block, conv context and SSM state carried over), so that its intermediates
    stay cache-sized at any length; the result does not depend on it beyond rounding.

    `max_timescale` (frames; None: plain Mamba2) caps every head's memory: the state decays
    by at least exp(-1 / max_timescale) per frame, its input unchanged (`cap_timescale`).
    A student trained on short inputs can hold heads whose memory far exceeds anything it
    saw; capping them at inference keeps long inputs within its training regime
    (docs/BENCHMARKS.md). It changes no parameter, so it can be set on a trained model
    (`INFERENCE_FIELDS`); the mamba_ssm backend has no cap and falls back to torch.
    """

    # Fields that change how the mixer computes, not its parameters: settable after training.
    INFERENCE_FIELDS: ClassVar[tuple[str, ...]] = ("max_timescale", "backend")

    d_model: int
    d_state: int = 128
    d_conv: int = 4
    expand: int = 1
    headdim: int | None = None
    ngroups: int = 1
    chunk_size: int = 256
    torch_chunk_size: int = 64
    torch_single_chunk: int = 160
    torch_time_block: int = 1024
    A_init_range: tuple[float, float] = (1.0, 16.0)
    dt_min: float = 1e-3
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    bias: bool = False
    norm_eps: float = 1e-5
    backend: str = "auto"
    max_timescale: float | None = None

    def __post_init__(self):
        if self.max_timescale is not None and not self.max_timescale > 0:
            raise ValueError(f"max_timescale {self.max_timescale}: a positive number of frames")
        if self.headdim is None:
            self.headdim = self._default_headdim()
        if self.d_inner % self.headdim:
            raise ValueError(f"d_inner {self.d_inner} is not a multiple of headdim {self.headdim}")
        if self.nheads % self.ngroups:
            raise ValueError(f"nheads {self.nheads} is not a multiple of ngroups {self.ngroups}")

    def _default_headdim(self) -> int:
        """64 or 48, whichever first divides d_inner into heads with a width that is a
        multiple of 8; 32 when neither does."""
        for headdim in (64, 48):
            nheads, rest = divmod(self.d_inner, headdim)
            if not rest and self._in_proj_width(nheads) % 8 == 0:
                return headdim
        return 32

    def _in_proj_width(self, nheads: int) -> int:
        return 2 * self.d_inner + 2 * self.ngroups * self.d_state + nheads

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim

    @property
    def conv_dim(self) -> int:
        """Channels of the convolved [x, B, C] block."""
        return self.d_inner + 2 * self.ngroups * self.d_state

    @property
    def in_proj_width(self) -> int:
        """Width of in_proj's output [z, x, B, C, dt]."""
        return self._in_proj_width(self.nheads)


def cap_timescale(x, dt, A, max_timescale, valid=None):
    """The scan's inputs with every head's memory capped at `max_timescale` frames.

    x `(..., nheads, headdim)`, dt `(..., nheads)` (positive, zero on padding), A
    `(nheads,)` negative, valid `(..., 1)` or None -> (x', dt') with
    dt' = max(dt, 1 / (max_timescale |A|)) (the decay exp(dt' A) is at most
    exp(-1 / max_timescale)) and dt' x' = dt x (the state takes in what it took before);
    padding keeps dt' = 0 (no decay, no input). `max_timescale` None: (x, dt) unchanged.
    """
    if max_timescale is None:
        return x, dt
    dt_decay = torch.maximum(dt, 1.0 / (max_timescale * -A))
    gain = (dt / dt_decay)[..., None].to(x.dtype)  # 0 on padding (dt = 0), dt_decay > 0
    if valid is not None:
        dt_decay = dt_decay * valid
    return x * gain, dt_decay


@functools.cache
def _warn_timescale_once():
    warnings.warn(
        "Mamba2 max_timescale: mamba-ssm's kernels have no cap on a head's memory: "
        "running the pure-PyTorch path (same function, slower)",
        stacklevel=3,
    )


@functools.cache
def _warn_width_once(width):
    warnings.warn(
        f"Mamba2 in_proj width {width} (= 2*d_inner + 2*ngroups*d_state + nheads) is not a "
        "multiple of 8, which mamba-ssm's fused CUDA kernels need: running the pure-PyTorch "
        "path (same function, slower); pick d_state / headdim to make it a multiple of 8",
        stacklevel=3,
    )


def causal_depthwise_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    left_context: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal depthwise convolution over time, channels last.

    x `(batch, time, channels)`, weight `(channels, 1, k)` (nn.Conv1d's), bias `(channels,)`
    -> `(batch, time, channels)` with out_t = bias + sum_j weight[:, 0, j] * x_{t - k + 1 + j}.
    The k - 1 frames before x are zeros, or `left_context` `(batch, k - 1, channels)` (the
    end of the preceding part of the sequence). As k shifted multiply-adds it keeps the
    (b, l, c) layout of the rest of the mixer, which on CPU is faster than F.conv1d and the
    transposes around it.
    """
    k, seqlen = weight.shape[-1], x.shape[1]
    if left_context is None:
        padded = F.pad(x, (0, 0, k - 1, 0))  # (b, k - 1 + l, c)
    else:
        padded = torch.cat([left_context, x], dim=1)
    first = padded[:, :seqlen]
    out = first * weight[:, 0, 0] if bias is None else torch.addcmul(bias, first, weight[:, 0, 0])
    for j in range(1, k):  # in place: addcmul's backward needs its operands, not `out`
        out = out.addcmul_(padded[:, j : j + seqlen], weight[:, 0, j])
    return out


class RMSNormGated(nn.Module):
    """Grouped RMSNorm of `x * silu(z)` (mamba_ssm's RMSNormGated, norm_before_gate=False)."""

    def __init__(self, hidden_size: int, group_size: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.group_size = group_size
        self.eps = eps

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x, z: `(..., hidden_size)` -> `(..., hidden_size)`, computed in float32."""
        gated = x.float() * F.silu(z.float())
        grouped = gated.unflatten(-1, (-1, self.group_size))
        normed = grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed.flatten(-2) * self.weight.float()).to(x.dtype)


def scan_backend(cfg: Mamba2Config, device, width: int, kind: str) -> str:
    """The scan backend for a module of `cfg` on `device` whose input projection is
    `width` wide: mamba_ssm where it runs (width a multiple of 8, no `max_timescale`),
    else torch."""
    backend = resolve_backend(cfg.backend, device, kind=kind)
    if backend == "mamba_ssm" and width % 8:
        # mamba-ssm's fused kernels fail on it: the exact torch path instead
        _warn_width_once(width)
        backend = "torch"
    if backend == "mamba_ssm" and cfg.max_timescale is not None:
        _warn_timescale_once()
        backend = "torch"
    return backend


def in_time_blocks(block_fn, inputs, block_size, mask=None, state=None):
    """Run a causal computation over consecutive blocks of `block_size` frames,
    carrying its state: `block_fn(blocks, block_mask, conv_context, ssm_state) -> (out,
    conv_context, ssm_state)`, `blocks` the block of each tensor in `inputs` (all
    `(batch, time, ...)`). Returns (out over the whole time, the last state)."""
    conv_context, ssm_state = state if state is not None else (None, None)
    n_blocks = -(-inputs[0].shape[1] // block_size)
    masks = [None] * n_blocks if mask is None else mask.split(block_size, dim=1)
    outputs = []
    for *blocks, block_mask in zip(*(t.split(block_size, dim=1) for t in inputs), masks):
        out, conv_context, ssm_state = block_fn(blocks, block_mask, conv_context, ssm_state)
        outputs.append(out)
    out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
    return out, (conv_context, ssm_state)


class Mamba2Scan(nn.Module):
    """The part of a Mamba2 mixer between its two projections: causal depthwise conv +
    SiLU on [x, B, C], the selective scan with dt = softplus(dt + dt_bias) and
    A = -exp(A_log), and the D skip. Parameters `conv1d`, `dt_bias`, `A_log`, `D`
    (mamba_ssm's names and shapes)."""

    def __init__(self, config: Mamba2Config):
        super().__init__()
        self.config = config
        self._add_scan_parameters()
        self.reset_ssm_parameters()

    def _add_scan_parameters(self):
        cfg = self.config
        self.conv1d = nn.Conv1d(
            cfg.conv_dim,
            cfg.conv_dim,
            kernel_size=cfg.d_conv,
            groups=cfg.conv_dim,
            padding=cfg.d_conv - 1,
            bias=cfg.conv_bias,
        )
        self.dt_bias = nn.Parameter(torch.empty(cfg.nheads))
        self.A_log = nn.Parameter(torch.empty(cfg.nheads))
        self.D = nn.Parameter(torch.empty(cfg.nheads))

    @torch.no_grad()
    def reset_ssm_parameters(self):
        """mamba_ssm's init: dt log-uniform in [dt_min, dt_max] (stored as inverse softplus),
        A uniform in A_init_range (stored as log), D = 1."""
        cfg = self.config
        log_dt = torch.rand(cfg.nheads) * (math.log(cfg.dt_max) - math.log(cfg.dt_min))
        dt = torch.exp(log_dt + math.log(cfg.dt_min)).clamp(min=cfg.dt_init_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_log.copy_(torch.empty(cfg.nheads).uniform_(*cfg.A_init_range).log())
        self.D.fill_(1.0)

    def scan(self, xBC, dt, backend, conv_context=None, state=None, mask=None, need_state=True):
        """xBC `(batch, time, conv_dim)` and dt `(batch, time, nheads)` (in_proj's
        blocks) of frames that follow a part of the sequence whose last k - 1 conv inputs
        are `conv_context` and whose SSM state is `state` (None: the sequence starts
        here); `mask` `(batch, time)` marks valid frames. Returns (y `(batch, time,
        d_inner)`, conv_context, state) for the next frames (the last two None with the
        mamba_ssm backend, which takes whole inputs, and without `need_state`: no frames
        follow).
        """
        cfg = self.config
        batch, seqlen, _ = xBC.shape
        valid = None if mask is None else mask[..., None].to(xBC.dtype)  # (b, l, 1)
        if valid is not None:  # padding: zero conv inputs, as before a sequence's start
            xBC = xBC * valid
        if conv_context is None:  # the sequence starts here: zeros before it
            conv_context = xBC.new_zeros(batch, cfg.d_conv - 1, cfg.conv_dim)
        keep = cfg.d_conv - 1  # conv inputs carried over: this block's last ones, or
        # (a block shorter than that) the end of the context before it; no full-block copy
        next_context = torch.cat([conv_context, xBC[:, -keep:]], dim=1)[:, -keep:]
        xBC = F.silu(
            causal_depthwise_conv1d(xBC, self.conv1d.weight, self.conv1d.bias, conv_context)
        )
        if valid is not None:  # padding: no input to the state (x = B = 0) ...
            xBC = xBC * valid
        x, B, C = xBC.split([cfg.d_inner, cfg.ngroups * cfg.d_state, cfg.ngroups * cfg.d_state], -1)
        x = x.view(batch, seqlen, cfg.nheads, cfg.headdim)
        B = B.view(batch, seqlen, cfg.ngroups, cfg.d_state)
        C = C.view(batch, seqlen, cfg.ngroups, cfg.d_state)
        A = -torch.exp(self.A_log.float())  # (h,)

        if backend == "mamba_ssm":
            from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

            y = mamba_chunk_scan_combined(
                x, dt, A, B, C, cfg.chunk_size, D=self.D, dt_bias=self.dt_bias, dt_softplus=True
            )
            next_context = state = None
        else:
            dt = F.softplus(dt + self.dt_bias)  # (b, l, h)
            if valid is not None:  # ... and no decay of it (dt = 0)
                dt = dt * valid
            x_in, dt = cap_timescale(x, dt, A, cfg.max_timescale, valid)
            chunk = cfg.torch_chunk_size
            if need_state:
                y, state = ssd_chunked(x_in, dt, A, B, C, chunk, state, return_final_state=True)
            else:  # a short input is one chunk: no chunk states to compute or pass on
                chunk = seqlen if seqlen <= cfg.torch_single_chunk else chunk
                y = ssd_chunked(x_in, dt, A, B, C, chunk, state)
                next_context = state = None
            y = torch.addcmul(y, x, self.D[:, None].to(x.dtype))  # y + D x, (b, l, h, p)
        return y.reshape(batch, seqlen, cfg.d_inner), next_context, state

    def scan_sequence(self, xBC, dt, backend):
        """`scan` over whole sequences (no state in or out), on the torch backend in
        blocks of `torch_time_block` frames so that intermediates stay cache-sized."""
        if backend == "mamba_ssm" or xBC.shape[1] <= self.config.torch_time_block:
            return self.scan(xBC, dt, backend, need_state=False)[0]

        def block_fn(blocks, mask, conv_context, ssm_state):
            return self.scan(*blocks, "torch", conv_context, ssm_state)

        return in_time_blocks(block_fn, [xBC, dt], self.config.torch_time_block)[0]


class Mamba2Mixer(Mamba2Scan):
    """Causal Mamba2 mixer `(batch, time, d_model) -> (batch, time, d_model)`.

    in_proj -> [z, xBC, dt]; xBC -> depthwise causal conv + SiLU -> [x, B, C];
    y = SSD(x, softplus(dt + dt_bias), -exp(A_log), B, C) + D x; out_proj(norm(y, z)).
    """

    def __init__(self, config: Mamba2Config):
        # Not Mamba2Scan.__init__: the scan's parameters go between in_proj and norm, so
        # parameters register (state-dict order) and draw their random init in the order
        # of mamba_ssm's Mamba2 and of this class before Mamba2Scan existed.
        nn.Module.__init__(self)
        self.config = config
        cfg = config
        self.in_proj = nn.Linear(cfg.d_model, cfg.in_proj_width, bias=cfg.bias)
        self._add_scan_parameters()
        self.norm = RMSNormGated(
            cfg.d_inner, group_size=cfg.d_inner // cfg.ngroups, eps=cfg.norm_eps
        )
        self.out_proj = nn.Linear(cfg.d_inner, cfg.d_model, bias=cfg.bias)
        self.reset_ssm_parameters()

    def forward(self, hidden_states, attention_mask=None, state=None, return_state=False):
        """hidden_states `(batch, time, d_model)` -> `(batch, time, d_model)`.

        attention_mask: optional boolean `(batch, time)`, True on valid frames; padded
        frames (left or right) are read as zeros and leave the state as it is, so a
        left-padded prompt gives what it gives alone. state: the `(conv_context,
        ssm_state)` after the preceding tokens (None: the sequence starts here);
        with `return_state`, returns (output, state after the last frame), what `step`
        continues from (prompt processing for generation).
        """
        cfg = self.config
        backend = scan_backend(cfg, hidden_states.device, cfg.in_proj_width, "mamba2")
        stateless = state is None and not return_state
        if backend == "mamba_ssm" and stateless and attention_mask is None:
            return self._forward_block(hidden_states, "mamba_ssm", need_state=False)[0]
        if stateless and hidden_states.shape[1] <= cfg.torch_time_block:
            return self._forward_block(
                hidden_states, "torch", mask=attention_mask, need_state=False
            )[0]

        def block_fn(blocks, mask, conv_context, ssm_state):
            return self._forward_block(blocks[0], "torch", conv_context, ssm_state, mask)

        out, state = in_time_blocks(
            block_fn, [hidden_states], cfg.torch_time_block, attention_mask, state
        )
        return (out, state) if return_state else out

    def _forward_block(
        self, hidden_states, backend, conv_context=None, state=None, mask=None, need_state=True
    ):
        """The whole mixer on a block of frames (see `scan`): (output, conv_context, state)."""
        cfg = self.config
        z, xBC, dt = self.in_proj(hidden_states).split([cfg.d_inner, cfg.conv_dim, cfg.nheads], -1)
        y, conv_context, state = self.scan(xBC, dt, backend, conv_context, state, mask, need_state)
        return self.out_proj(self.norm(y, z)), conv_context, state

    def step(self, hidden_states, state):
        """One new token `(batch, 1, d_model)` after the tokens that left `state`
        (`(conv_context, ssm_state)`, from `forward(..., return_state=True)` or a
        previous step) -> (output `(batch, 1, d_model)`, the state after it).

        The recurrence itself, in constant time and memory per token:
        conv over the last k inputs; state = exp(dt A) state + dt B x^T; y = C state + D x
        (with `max_timescale`, the decay's dt is `cap_timescale`'s).
        """
        cfg = self.config
        conv_context, ssm_state = state
        batch = hidden_states.shape[0]
        z, xBC, dt = self.in_proj(hidden_states[:, 0]).split(
            [cfg.d_inner, cfg.conv_dim, cfg.nheads], dim=-1
        )
        window = torch.cat([conv_context, xBC[:, None]], dim=1)  # (b, k, conv_dim)
        conv = (window * self.conv1d.weight[:, 0].T).sum(1)
        if self.conv1d.bias is not None:
            conv = conv + self.conv1d.bias
        x, B, C = F.silu(conv).split(
            [cfg.d_inner, cfg.ngroups * cfg.d_state, cfg.ngroups * cfg.d_state], -1
        )
        hpg = cfg.nheads // cfg.ngroups
        x = x.view(batch, cfg.nheads, cfg.headdim)
        B = (
            B.view(batch, cfg.ngroups, 1, cfg.d_state)
            .expand(-1, -1, hpg, -1)
            .reshape(batch, cfg.nheads, cfg.d_state)
        )
        C = (
            C.view(batch, cfg.ngroups, 1, cfg.d_state)
            .expand(-1, -1, hpg, -1)
            .reshape(batch, cfg.nheads, cfg.d_state)
        )
        dt = F.softplus(dt + self.dt_bias).float()  # (b, h)
        A = -torch.exp(self.A_log.float())  # (h,)
        x_in, dt = cap_timescale(x.float(), dt, A, cfg.max_timescale)
        decay = torch.exp(dt * A)  # (b, h)
        update = (dt[..., None] * B.float())[..., None] * x_in[:, :, None, :]  # (b, h, n, p)
        ssm_state = decay[..., None, None] * ssm_state + update
        y = torch.einsum("bhnp,bhn->bhp", ssm_state, C.float()).to(x.dtype)
        y = torch.addcmul(y, x, self.D[:, None].to(x.dtype)).reshape(batch, 1, cfg.d_inner)
        out = self.out_proj(self.norm(y, z[:, None]))
        return out, (window[:, 1:], ssm_state)
