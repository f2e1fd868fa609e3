"""Mamba-1 mixer: chunked scan against a per-step float64 recurrence and HF's MambaMixer."""

import math

import pytest
import torch
import torch.nn.functional as F

from speechbrain_cald.lobes import mamba
from speechbrain_cald.lobes.mamba import MambaConfig, MambaMixer, selective_scan

RTOL = 1e-4  # float32 chunked scan vs float64 reference, relative L2 error


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


def naive_scan(x, dt, A, B, C, D):
    """h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t; y_t = C_t h_t + D x_t, one step at a time."""
    batch, seq_len, d_inner = x.shape
    h = x.new_zeros(batch, d_inner, A.shape[1])
    ys = []
    for t in range(seq_len):
        dt_t = dt[:, t, :, None]  # (b, d, 1)
        h = torch.exp(dt_t * A) * h + dt_t * B[:, t, None, :] * x[:, t, :, None]
        ys.append((h * C[:, t, None, :]).sum(-1) + D * x[:, t])
    return torch.stack(ys, dim=1)


def naive_mixer(mixer: MambaMixer, hidden_states: torch.Tensor) -> torch.Tensor:
    """Mamba-1 forward written out from the paper / mamba_ssm, in float64, per step."""
    p = {name: value.double() for name, value in mixer.state_dict().items()}
    u = hidden_states.double()
    seq_len, d_conv = u.shape[1], mixer.config.d_conv
    xz = u @ p["in_proj.weight"].T
    x, z = xz.chunk(2, dim=-1)
    # causal depthwise convolution: out_t = sum_j w[j] * x_{t - (d_conv - 1) + j}
    x_pad = F.pad(x, (0, 0, d_conv - 1, 0))
    w = p["conv1d.weight"][:, 0]  # (d_inner, d_conv)
    conv = sum(x_pad[:, j : j + seq_len] * w[:, j] for j in range(d_conv)) + p["conv1d.bias"]
    x = F.silu(conv)
    dt, B, C = torch.split(
        x @ p["x_proj.weight"].T, [mixer.dt_rank, mixer.d_state, mixer.d_state], dim=-1
    )
    dt = F.softplus(dt @ p["dt_proj.weight"].T + p["dt_proj.bias"])
    A = -torch.exp(p["A_log"])
    y = naive_scan(x, dt, A, B, C, p["D"]) * F.silu(z)
    return y @ p["out_proj.weight"].T


def random_scan_inputs(batch, seq_len, d_inner, d_state, dtype):
    """Inputs in the ranges a trained mixer sees (dt = softplus of a pre-activation)."""
    x = torch.randn(batch, seq_len, d_inner, dtype=dtype)
    dt = F.softplus(torch.randn(batch, seq_len, d_inner, dtype=dtype) - 1.0)
    A = -torch.exp(torch.log(torch.arange(1, d_state + 1, dtype=dtype)).repeat(d_inner, 1))
    A = A * torch.empty(d_inner, 1, dtype=dtype).uniform_(0.5, 1.5)
    B = torch.randn(batch, seq_len, d_state, dtype=dtype)
    C = torch.randn(batch, seq_len, d_state, dtype=dtype)
    D = torch.randn(d_inner, dtype=dtype)
    return [x, dt, A, B, C, D]


@pytest.mark.parametrize("seq_len, chunk_size", [(50, 16), (64, 64), (37, 64), (130, 64), (9, 1)])
def test_chunked_scan_matches_recurrence_forward_and_gradients(seq_len, chunk_size):
    inputs = random_scan_inputs(2, seq_len, 6, 4, torch.float64)
    inputs32 = [t.float().requires_grad_() for t in inputs]
    inputs64 = [t.clone().requires_grad_() for t in inputs]

    y32 = selective_scan(*inputs32, chunk_size=chunk_size)
    y64 = naive_scan(*inputs64)
    assert y32.dtype == torch.float32
    assert rel_err(y32, y64) < RTOL

    cotangent = torch.randn_like(y64)
    grads32 = torch.autograd.grad(y32, inputs32, cotangent.float())
    grads64 = torch.autograd.grad(y64, inputs64, cotangent)
    for name, g32, g64 in zip("x dt A B C D".split(), grads32, grads64):
        assert torch.isfinite(g32).all(), name
        assert rel_err(g32, g64) < RTOL, name


def test_scan_is_safe_with_strong_decay():
    """Large dt * |A| (total log-decay far below float32's exp range) gives no inf / nan."""
    x, dt, A, B, C, D = random_scan_inputs(1, 100, 4, 16, torch.float64)
    dt = dt * 20.0  # per-step log-decay down to about -300
    xs = [t.float().requires_grad_() for t in (x, dt, A, B, C, D)]
    y = selective_scan(*xs, chunk_size=64)
    y.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in xs)
    assert rel_err(y, naive_scan(x, dt, A, B, C, D)) < RTOL


def test_scan_loops_over_chunks_not_time_steps(monkeypatch):
    calls = []
    scan_chunk = mamba._scan_chunk

    def counting_scan_chunk(x, *args):
        calls.append(x.shape[1])
        return scan_chunk(x, *args)

    monkeypatch.setattr(mamba, "_scan_chunk", counting_scan_chunk)
    mixer = MambaMixer(MambaConfig(d_model=8, chunk_size=64, backend="torch"))
    mixer(torch.randn(2, 150, 8))
    assert calls == [64, 64, 22]  # ceil(150 / 64) iterations, one per chunk


def test_mixer_matches_float64_reference_and_is_chunk_invariant():
    mixer = MambaMixer(MambaConfig(d_model=12, d_state=8, chunk_size=16, backend="torch"))
    hidden = torch.randn(2, 45, 12)
    expected = naive_mixer(mixer, hidden)
    assert rel_err(mixer(hidden), expected) < RTOL
    mixer.config.chunk_size = 5
    assert rel_err(mixer(hidden), expected) < RTOL


def test_mixer_is_causal():
    mixer = MambaMixer(MambaConfig(d_model=8, chunk_size=8, backend="torch"))
    hidden = torch.randn(1, 30, 8)
    changed = hidden.clone()
    changed[:, 20:] = torch.randn(1, 10, 8)
    torch.testing.assert_close(mixer(hidden)[:, :20], mixer(changed)[:, :20])


def test_mixer_matches_transformers_mamba_mixer():
    from transformers import MambaConfig as HFMambaConfig
    from transformers.models.mamba.modeling_mamba import MambaMixer as HFMambaMixer

    config = MambaConfig(d_model=16, d_state=4, d_conv=3, expand=2, chunk_size=8, backend="torch")
    mixer = MambaMixer(config)
    hf_config = HFMambaConfig(
        hidden_size=16,
        state_size=4,
        conv_kernel=3,
        expand=2,
        intermediate_size=config.d_inner,
        time_step_rank=config.dt_rank,
        use_conv_bias=True,
        use_bias=False,
        num_hidden_layers=1,
    )
    hf_mixer = HFMambaMixer(hf_config, layer_idx=0).eval()
    hf_mixer.load_state_dict(mixer.state_dict(), strict=True)  # identical names and shapes

    hidden = torch.randn(2, 21, 16)
    with torch.no_grad():
        assert rel_err(mixer(hidden), hf_mixer(hidden)) < RTOL


def test_parameters_and_init_follow_mamba_ssm():
    config = MambaConfig(d_model=40, d_state=16, d_conv=4, expand=2)
    mixer = MambaMixer(config)
    d_inner, dt_rank = 80, math.ceil(40 / 16)
    assert config.dt_rank == dt_rank
    shapes = {name: tuple(p.shape) for name, p in mixer.named_parameters()}
    assert shapes == {
        "A_log": (d_inner, 16),
        "D": (d_inner,),
        "in_proj.weight": (2 * d_inner, 40),
        "conv1d.weight": (d_inner, 1, 4),
        "conv1d.bias": (d_inner,),
        "x_proj.weight": (dt_rank + 32, d_inner),
        "dt_proj.weight": (d_inner, dt_rank),
        "dt_proj.bias": (d_inner,),
        "out_proj.weight": (40, d_inner),
    }
    torch.testing.assert_close(mixer.A_log.exp(), torch.arange(1.0, 17.0).expand(d_inner, 16))
    torch.testing.assert_close(mixer.D, torch.ones(d_inner))
    assert mixer.dt_proj.weight.abs().max() <= dt_rank**-0.5
    dt = F.softplus(mixer.dt_proj.bias)
    assert (dt >= config.dt_min * (1 - 1e-5)).all() and (dt <= config.dt_max * (1 + 1e-5)).all()
    with_bias = MambaMixer(MambaConfig(d_model=8, bias=True, conv_bias=False))
    assert with_bias.in_proj.bias is not None and with_bias.out_proj.bias is not None
    assert with_bias.conv1d.bias is None


def test_bfloat16_forward_and_backward():
    mixer = MambaMixer(MambaConfig(d_model=16, chunk_size=8, backend="torch"))
    hidden = torch.randn(2, 20, 16)
    expected = mixer(hidden).detach()
    mixer_bf16 = mixer.to(torch.bfloat16)
    hidden_bf16 = hidden.to(torch.bfloat16).requires_grad_()
    out = mixer_bf16(hidden_bf16)
    assert out.dtype == torch.bfloat16
    out.float().square().sum().backward()
    assert torch.isfinite(hidden_bf16.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in mixer_bf16.parameters())
    assert rel_err(out, expected) < 5e-2  # bfloat16 weights and activations


@pytest.mark.gpu
def test_mamba_ssm_backend_matches_torch_backend():
    pytest.importorskip("mamba_ssm", reason="mamba-ssm (optional CUDA extra) is not installed")
    config = MambaConfig(d_model=32, backend="mamba_ssm")
    mixer = MambaMixer(config).cuda()
    reference = MambaMixer(MambaConfig(d_model=32, backend="torch")).cuda()
    reference.load_state_dict(mixer.state_dict())
    hidden = torch.randn(2, 100, 32, device="cuda")
    assert rel_err(mixer(hidden), reference(hidden)) < 1e-3
