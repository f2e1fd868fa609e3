"""Mamba-1 mixer (selective SSM) with the parameter names and shapes of mamba_ssm.Mamba.

The pure-PyTorch path runs a chunked selective scan: inside a chunk all steps are
computed together by a doubling scan over log-decay sums, and only the state is
carried from chunk to chunk, so the Python loop runs `ceil(time / chunk_size)` times
rather than `time` times. On CUDA with mamba-ssm installed the fused kernels are used instead;
checkpoints are interchangeable between the two paths.
"""

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .backend import resolve_backend
from .mamba2 import causal_depthwise_conv1d


@dataclass
class MambaConfig:
    """Hyper-parameters of a Mamba-1 mixer (defaults as mamba_ssm.Mamba).

    `dt_rank="auto"` resolves to `ceil(d_model / 16)` on construction. `chunk_size` is
    the time-chunk of the PyTorch scan (see `selective_scan`); it does not change the
    result, only speed and memory. `backend`: "auto" | "torch" | "mamba_ssm".
    """

    d_model: int
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | str = "auto"
    dt_min: float = 1e-3
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    bias: bool = False
    chunk_size: int = 64
    backend: str = "auto"

    def __post_init__(self):
        if self.dt_rank == "auto":
            self.dt_rank = math.ceil(self.d_model / 16)
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {self.chunk_size}")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model


def _scan_chunk(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Selective scan over one chunk of T steps, all steps in parallel.

    A doubling (Hillis-Steele) scan: after the round with shift k, `states[t]` holds the
    inputs of the window (t - 2k, t] decayed to step t, and `log_decay[t]` the summed
    log-decay of that window. log2(T) rounds leave the intra-chunk states and the
    cumulative log-decay from the chunk start, by which the state carried in from the
    previous chunk is then decayed. Every exponent is a sum of `dt * A <= 0` (no exp of
    a positive number, no cancellation between large cumulative sums), and the work is
    O(T log T) per chunk rather than the O(T^2) of a (T, T) decay matrix.

    Args:
        x, dt: `(batch, T, d_inner)`; dt already positive (after softplus).
        A: `(d_inner, d_state)`, negative.
        B, C: `(batch, T, d_state)`.
        state: `(batch, d_inner, d_state)`, the SSM state before the chunk.

    Returns:
        y `(batch, T, d_inner)` (without the D skip) and the state after the chunk.
    """
    log_decay = dt[..., None] * A  # (b, T, d, n): log-decay of each single step
    states = (dt * x)[..., None] * B[:, :, None, :]  # (b, T, d, n): dt_t B_t x_t
    shift = 1
    while shift < x.shape[1]:
        earlier = (0, 0, 0, 0, shift, 0)  # value from `shift` steps back; 0 before the chunk
        states = states + torch.exp(log_decay) * F.pad(states[:, :-shift], earlier)
        log_decay = log_decay + F.pad(log_decay[:, :-shift], earlier)
        shift *= 2
    states = states + torch.exp(log_decay) * state[:, None]
    y = torch.einsum("btdn,btn->btd", states, C)
    return y, states[:, -1]


def selective_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    chunk_size: int = 64,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mamba-1 selective scan in pure PyTorch, chunked over time.

    Computes, from `h_0 = initial_state` (zeros when None), for every step t:
    `h_t = exp(dt_t A) * h_{t-1} + dt_t B_t x_t` and `y_t = C_t h_t + D x_t`
    (per channel d: `h` is `(d_state,)`, `A[d]`, `dt_t[d]` and `x_t[d]` scale it).

    Args:
        x, dt: `(batch, time, d_inner)`; dt positive (softplus already applied).
        A: `(d_inner, d_state)`, negative. B, C: `(batch, time, d_state)`. D: `(d_inner,)`.
        chunk_size: steps scanned in parallel (log2(chunk_size) rounds each). 64 is near
            the CPU optimum measured for forward + backward (width 256, state 16, 512
            steps: chunk 32-64 ~0.5 s, 512 ~2.2 s, a per-step loop ~1 s); autograd keeps
            about 2 log2(chunk_size) + 2 tensors the size of all states
            `(batch, time, d_inner, d_state)`, and a 2048-step sequence needs 32 chunk
            iterations. The result does not depend on it.

    Returns:
        y `(batch, time, d_inner)` in float32 (float64 for float64 inputs): the scan runs
        in at least float32, as mamba-ssm's kernels do; with `return_final_state` also
        the state after the last step `(batch, d_inner, d_state)`.
    """
    dtype = torch.promote_types(x.dtype, torch.float32)
    x, dt, A, B, C = (t.to(dtype) for t in (x, dt, A, B, C))
    batch, seq_len, d_inner = x.shape
    state = x.new_zeros(batch, d_inner, A.shape[-1])
    if initial_state is not None:
        state = initial_state.to(dtype)
    outputs = []
    for start in range(0, seq_len, chunk_size):
        chunk = slice(start, start + chunk_size)
        y, state = _scan_chunk(x[:, chunk], dt[:, chunk], A, B[:, chunk], C[:, chunk], state)
        outputs.append(y)
    y = torch.cat(outputs, dim=1) + x * D.to(dtype)
    return (y, state) if return_final_state else y


class MambaMixer(nn.Module):
    """Mamba-1 mixer `(batch, time, d_model) -> (batch, time, d_model)`, causal.

    Parameters as mamba_ssm.modules.mamba_simple.Mamba: `in_proj` (d_model -> 2 d_inner),
    `conv1d` (depthwise, causal, kernel d_conv), `x_proj` (d_inner -> dt_rank + 2 d_state),
    `dt_proj` (dt_rank -> d_inner), `A_log` `(d_inner, d_state)`, `D` `(d_inner,)`,
    `out_proj` (d_inner -> d_model).
    """

    def __init__(self, config: MambaConfig):
        super().__init__()
        self.config = config
        self.d_inner = config.d_inner
        self.d_state = config.d_state
        self.dt_rank = config.dt_rank

        self.in_proj = nn.Linear(config.d_model, 2 * self.d_inner, bias=config.bias)
        self.conv1d = nn.Conv1d(
            self.d_inner,
            self.d_inner,
            kernel_size=config.d_conv,
            groups=self.d_inner,
            padding=config.d_conv - 1,
            bias=config.conv_bias,
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * self.d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)

        A = torch.arange(1, self.d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        # Read by optimizers that exclude parameters from weight decay (as in mamba_ssm).
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True

        self.out_proj = nn.Linear(self.d_inner, config.d_model, bias=config.bias)
        self._init_dt_proj()

    @torch.no_grad()
    def _init_dt_proj(self):
        """mamba_ssm's dt init: softplus(bias) log-uniform in [dt_min, dt_max] (floored)."""
        c = self.config
        bound = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -bound, bound)
        log_range = math.log(c.dt_max) - math.log(c.dt_min)
        dt = torch.exp(torch.rand(self.d_inner) * log_range + math.log(c.dt_min))
        dt = dt.clamp(min=c.dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus

    def forward(self, hidden_states, attention_mask=None, state=None, return_state=False):
        """`hidden_states` `(batch, time, d_model)` -> `(batch, time, d_model)`.

        attention_mask, state, return_state: as `Mamba2Mixer.forward` (padded frames
        read as zeros and leave the state as it is; state = `(conv_context,
        ssm_state)`; with `return_state` the state after the last frame comes back).
        """
        backend = resolve_backend(self.config.backend, hidden_states.device, kind="mamba")
        stateless = state is None and not return_state and attention_mask is None
        if backend == "mamba_ssm" and _causal_conv1d_available() and stateless:
            return self._fused_forward(hidden_states)

        conv_context, ssm_state = state if state is not None else (None, None)
        valid = None if attention_mask is None else attention_mask[..., None]
        x, z = self.in_proj(hidden_states).chunk(2, dim=-1)  # (b, L, d_inner) each
        if valid is not None:  # padding: zero conv inputs, as before a sequence's start
            x = x * valid.to(x.dtype)
        keep = self.config.d_conv - 1
        if conv_context is None:
            conv_context = x.new_zeros(x.shape[0], keep, self.d_inner)
        next_context = torch.cat([conv_context, x[:, -keep:]], dim=1)[:, -keep:]
        x = F.silu(causal_depthwise_conv1d(x, self.conv1d.weight, self.conv1d.bias, conv_context))
        if valid is not None:  # padding: no input to the state ...
            x = x * valid.to(x.dtype)
        dt, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], -1)
        dt = F.linear(dt, self.dt_proj.weight)  # (b, L, d_inner); bias added in float32
        A = -torch.exp(self.A_log.float())  # (d_inner, d_state)

        if backend == "mamba_ssm" and stateless:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

            y = selective_scan_fn(
                x.transpose(1, 2),
                dt.transpose(1, 2),
                A,
                B.transpose(1, 2),
                C.transpose(1, 2),
                self.D.float(),
                z=z.transpose(1, 2),
                delta_bias=self.dt_proj.bias.float(),
                delta_softplus=True,
            ).transpose(1, 2)
        else:
            dt = F.softplus(dt.float() + self.dt_proj.bias.float())
            if valid is not None:  # ... and no decay of it (dt = 0)
                dt = dt * valid
            y, ssm_state = selective_scan(
                x, dt, A, B, C, self.D, self.config.chunk_size, ssm_state, return_final_state=True
            )
            y = y * F.silu(z.to(y.dtype))
        out = self.out_proj(y.to(x.dtype))
        return (out, (next_context, ssm_state)) if return_state else out

    def step(self, hidden_states, state):
        """One new token `(batch, 1, d_model)` after the tokens that left `state`
        (`(conv_context, ssm_state)`) -> (output `(batch, 1, d_model)`, the state after
        it): h = exp(dt A) h + dt B x, y = C h + D x, gated by silu(z); constant time and
        memory per token."""
        conv_context, ssm_state = state
        x, z = self.in_proj(hidden_states[:, 0]).chunk(2, dim=-1)  # (b, d_inner) each
        window = torch.cat([conv_context, x[:, None]], dim=1)  # (b, k, d_inner)
        conv = (window * self.conv1d.weight[:, 0].T).sum(1)
        if self.conv1d.bias is not None:
            conv = conv + self.conv1d.bias
        x = F.silu(conv)
        dt, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], -1)
        dt = F.softplus(F.linear(dt, self.dt_proj.weight).float() + self.dt_proj.bias.float())
        A = -torch.exp(self.A_log.float())
        ssm_state = torch.exp(dt[..., None] * A) * ssm_state.float()
        ssm_state = ssm_state + (dt * x.float())[..., None] * B.float()[:, None, :]
        y = torch.einsum("bdn,bn->bd", ssm_state, C.float()) + self.D.float() * x.float()
        y = y * F.silu(z.float())
        return self.out_proj(y.to(x.dtype))[:, None], (window[:, 1:], ssm_state)

    def _fused_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """mamba_ssm's fused conv + scan + out_proj kernel (CUDA, with causal-conv1d)."""
        from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn

        return mamba_inner_fn(
            self.in_proj(hidden_states).transpose(1, 2),  # (b, 2 d_inner, L)
            self.conv1d.weight,
            self.conv1d.bias,
            self.x_proj.weight,
            self.dt_proj.weight,
            self.out_proj.weight,
            self.out_proj.bias,
            -torch.exp(self.A_log.float()),
            None,  # B, C are input dependent: computed inside from x_proj
            None,
            self.D.float(),
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
        )


@functools.cache
def _causal_conv1d_available() -> bool:
    """True when causal-conv1d imports (mamba_inner_fn needs its CUDA kernel)."""
    try:
        import causal_conv1d  # noqa: F401
    except Exception:
        return False
    return True
