"""Chunked SSD scan and Mamba2Mixer against naive float64 step-by-step references."""

import logging
import random
import warnings

import pytest
import torch
import torch.nn.functional as F

from speechbrain_cald.lobes import backend as backend_mod
from speechbrain_cald.lobes.backend import mamba_ssm_available, resolve_backend
from speechbrain_cald.lobes.mamba2 import Mamba2Config, Mamba2Mixer
from speechbrain_cald.lobes.ssd import ssd_chunked

# Small test shapes do not keep in_proj's width a multiple of 8 (a CUDA-kernel constraint).
pytestmark = pytest.mark.filterwarnings("ignore:Mamba2 in_proj width:UserWarning")

RTOL = 1e-4  # float32 chunked scan vs float64 recurrence, relative Frobenius error


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def naive_scan(x, dt, A, B, C, max_timescale=None):
    """h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T, y_t = h_t C_t, one step at a time;
    with `max_timescale` the decay rate dt_t |A| is at least 1 / max_timescale."""
    batch, length, nheads, headdim = x.shape
    hpg = nheads // B.shape[2]
    B, C = B.repeat_interleave(hpg, dim=2), C.repeat_interleave(hpg, dim=2)  # (b, l, h, n)
    state = x.new_zeros(batch, nheads, headdim, B.shape[-1])
    ys = []
    for t in range(length):
        rate = dt[:, t] * -A  # (b, h)
        if max_timescale is not None:
            rate = rate.clamp(min=1.0 / max_timescale)
        decay = torch.exp(-rate)[:, :, None, None]
        state = decay * state + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]
        ys.append((state * C[:, t, :, None, :]).sum(-1))
    return torch.stack(ys, dim=1)


def random_scan_inputs(seed, batch=2, length=37, nheads=4, headdim=8, ngroups=2, dstate=16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, nheads, headdim, generator=g)
    dt = F.softplus(torch.randn(batch, length, nheads, generator=g) - 1.0)
    A = -torch.exp(torch.rand(nheads, generator=g) * 2.5)  # in [-12, -1]
    B = torch.randn(batch, length, ngroups, dstate, generator=g)
    C = torch.randn(batch, length, ngroups, dstate, generator=g)
    return [x, dt, A, B, C]


def assert_scan_matches_naive(chunk_size):
    """ssd_chunked in float32 vs the float64 recurrence on fresh random inputs: shape,
    dtype, output and the gradients of x, dt, A, B, C (relative error under RTOL)."""
    seed = random.randrange(2**31)
    inputs = [t.requires_grad_() for t in random_scan_inputs(seed)]
    inputs64 = [t.detach().double().requires_grad_() for t in inputs]
    y = ssd_chunked(*inputs, chunk_size)
    ref = naive_scan(*inputs64)
    assert y.shape == ref.shape and y.dtype == torch.float32
    assert rel_err(y, ref) < RTOL, f"seed {seed}"

    weight = torch.randn_like(ref)
    (y * weight.float()).sum().backward()
    (ref * weight).sum().backward()
    for name, ours, theirs in zip("x dt A B C".split(), inputs, inputs64):
        assert rel_err(ours.grad, theirs.grad) < RTOL, f"grad {name}, seed {seed}"


@pytest.mark.parametrize("chunk_size", [8, 16, 37, 64])
def test_ssd_chunked_matches_naive_recurrence(chunk_size):
    assert_scan_matches_naive(chunk_size)


def test_ssd_chunked_bfloat16_close_to_float32():
    x, dt, A, B, C = random_scan_inputs(random.randrange(2**31), length=50)
    y32 = ssd_chunked(x, dt, A, B, C, 16)
    y16 = ssd_chunked(x.bfloat16(), dt.bfloat16(), A, B.bfloat16(), C.bfloat16(), 16)
    assert y16.dtype == torch.bfloat16
    assert rel_err(y16, y32) < 3e-2  # bf16 inputs carry 8 mantissa bits


def naive_scan_part(m: dict, xBC: torch.Tensor, dt: torch.Tensor, cfg: Mamba2Config, prefix=""):
    """conv + SiLU, scan and D skip per time step (Mamba2Scan), from (float64) parameters
    `m[prefix + name]`: xBC `(b, l, conv_dim)`, dt `(b, l, h)` -> y `(b, l, d_inner)`."""
    d, gn, h = cfg.d_inner, cfg.ngroups * cfg.d_state, cfg.nheads
    w, k = m[prefix + "conv1d.weight"][:, 0], cfg.d_conv  # (conv_dim, k)
    conv = []
    for t in range(xBC.shape[1]):  # out_t = bias + sum_j w[:, j] xBC_{t - k + 1 + j}
        taps = [w[:, j] * xBC[:, t - k + 1 + j] for j in range(k) if t - k + 1 + j >= 0]
        conv.append(m[prefix + "conv1d.bias"] + sum(taps))
    xBC = F.silu(torch.stack(conv, dim=1))
    b, l = xBC.shape[:2]
    x = xBC[..., :d].reshape(b, l, h, cfg.headdim)
    B = xBC[..., d : d + gn].reshape(b, l, cfg.ngroups, cfg.d_state)
    C = xBC[..., d + gn :].reshape(b, l, cfg.ngroups, cfg.d_state)
    dt = F.softplus(dt + m[prefix + "dt_bias"])
    A = -torch.exp(m[prefix + "A_log"])
    y = naive_scan(x, dt, A, B, C, cfg.max_timescale) + m[prefix + "D"][:, None] * x
    return y.reshape(b, l, d)


def naive_norm_out(m: dict, y: torch.Tensor, z: torch.Tensor, cfg: Mamba2Config) -> torch.Tensor:
    """out_proj(grouped RMSNorm(y * silu(z)) * norm.weight)."""
    b, l, d = y.shape
    gated = (y * F.silu(z)).reshape(b, l, cfg.ngroups, d // cfg.ngroups)
    normed = gated / torch.sqrt(gated.pow(2).mean(-1, keepdim=True) + cfg.norm_eps)
    return (normed.reshape(b, l, d) * m["norm.weight"]) @ m["out_proj.weight"].T


def naive_mixer(m: dict, u: torch.Tensor, cfg: Mamba2Config) -> torch.Tensor:
    """The whole Mamba2 mixer per time step, from a dict of (float64) parameters."""
    z, xBC, dt = (u @ m["in_proj.weight"].T).split([cfg.d_inner, cfg.conv_dim, cfg.nheads], -1)
    return naive_norm_out(m, naive_scan_part(m, xBC, dt, cfg), z, cfg)


def reference_config(**overrides) -> Mamba2Config:
    """The small mixer config of the float64-reference tests: 4 heads of 4 in 2 groups,
    d_state 8, chunks of 8 (`overrides`: time blocks, the one-chunk limit)."""
    return Mamba2Config(
        d_model=16, d_state=8, headdim=4, ngroups=2, torch_chunk_size=8, **overrides
    )


def head_timescales(mixer: Mamba2Mixer, u: torch.Tensor) -> torch.Tensor:
    """Each head's memory 1 / (dt |A|) in frames, `(batch, time, nheads)`, on input u."""
    cfg = mixer.config
    with torch.no_grad():
        dt = mixer.in_proj(u)[..., -cfg.nheads :]
        return 1 / (F.softplus(dt + mixer.dt_bias) * torch.exp(mixer.A_log))


@pytest.mark.parametrize("capped", [False, True], ids=["plain", "capped"])
@pytest.mark.parametrize("single_chunk", [0, 160], ids=["chunks", "one_chunk"])
def test_mamba2_mixer_matches_naive_float64_mixer(single_chunk, capped):
    """Length 21 in chunks of 8 (state passed between them), or as one chunk (inputs of
    up to `torch_single_chunk` frames), with or without a cap on the heads' memory (at
    the median of this input's 1 / (dt |A|): half the steps capped, half not): outputs
    and every parameter gradient."""
    torch.manual_seed(random.randrange(2**31))
    cfg = reference_config(torch_single_chunk=single_chunk)
    mixer = Mamba2Mixer(cfg)
    with torch.no_grad():  # non-trivial norm weights and D
        mixer.norm.weight.uniform_(0.5, 1.5)
        mixer.D.uniform_(0.5, 1.5)
    params64 = {k: v.detach().double().requires_grad_() for k, v in mixer.named_parameters()}
    u = torch.randn(2, 21, cfg.d_model)
    if capped:  # between the two middle values: no step sits on the cap's kink
        spans = head_timescales(mixer, u).flatten().sort().values
        half = len(spans) // 2
        cfg.max_timescale = spans[half - 1 : half + 1].mean().item()
    y, ref = mixer(u), naive_mixer(params64, u.double(), cfg)
    assert rel_err(y, ref) < RTOL

    weight = torch.randn_like(ref)
    (y * weight.float()).sum().backward()
    (ref * weight).sum().backward()
    for name, p in mixer.named_parameters():
        assert rel_err(p.grad, params64[name].grad) < RTOL, name


def test_mamba2_mixer_bfloat16_close_to_float32():
    cfg = Mamba2Config(d_model=32, d_state=16, headdim=8, torch_chunk_size=8)
    mixer = Mamba2Mixer(cfg)
    u = torch.randn(2, 30, cfg.d_model)
    y32 = mixer(u)
    y16 = mixer.to(torch.bfloat16)(u.bfloat16())
    assert y16.dtype == torch.bfloat16
    assert rel_err(y16, y32) < 5e-2


def test_mamba2_mixer_parameter_shapes_and_init():
    cfg = Mamba2Config(d_model=64, d_state=16, headdim=16, ngroups=2)
    mixer = Mamba2Mixer(cfg)
    shapes = {k: tuple(v.shape) for k, v in mixer.state_dict().items()}
    assert shapes == {
        "in_proj.weight": (2 * 64 + 2 * 2 * 16 + 4, 64),
        "conv1d.weight": (64 + 2 * 2 * 16, 1, 4),
        "conv1d.bias": (64 + 2 * 2 * 16,),
        "dt_bias": (4,),
        "A_log": (4,),
        "D": (4,),
        "norm.weight": (64,),
        "out_proj.weight": (64, 64),
    }
    A = torch.exp(mixer.A_log)
    dt = F.softplus(mixer.dt_bias)
    assert ((A >= 1.0) & (A <= 16.0)).all()
    assert ((dt >= 1e-3 * (1 - 1e-5)) & (dt <= 0.1 * (1 + 1e-5))).all()
    assert torch.equal(mixer.D, torch.ones(4))


def test_mamba2_config_in_proj_width_multiple_of_8():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Mamba2Config(d_model=768).in_proj_width == 1808
        assert Mamba2Config(d_model=1024).in_proj_width == 2320
        assert Mamba2Config(d_model=768, headdim=64).in_proj_width == 1804  # no CUDA here


@pytest.mark.parametrize(
    "config, warn_once, message",
    [  # in_proj width 2*d_inner + 2*d_state + nheads: 82 (not a multiple of 8), 88
        (dict(d_state=7), "_warn_width_once", "not a multiple of 8.*pure-PyTorch path"),
        (dict(d_state=10, max_timescale=5.0), "_warn_timescale_once", "max_timescale.*PyTorch"),
    ],
    ids=["width", "max_timescale"],
)
def test_the_torch_path_runs_where_mamba_ssm_kernels_cannot(
    monkeypatch, config, warn_once, message
):
    """mamba-ssm's fused kernels fail on widths that are not a multiple of 8 and have no
    cap on a head's memory: the mixer warns (once) and runs the exact pure-PyTorch path
    instead; nothing is said where mamba-ssm never runs."""
    import speechbrain_cald.lobes.mamba2 as mamba2_module

    mixer = Mamba2Mixer(Mamba2Config(d_model=32, headdim=8, **config))
    x = torch.randn(1, 5, 32)
    expected = mixer(x)
    monkeypatch.setattr(mamba2_module, "resolve_backend", lambda *args, **kwargs: "mamba_ssm")
    getattr(mamba2_module, warn_once).cache_clear()
    with pytest.warns(UserWarning, match=message):
        assert torch.equal(mixer(x), expected)


def test_max_timescale_changes_long_memory_only():
    """The cap binds (the output changes) but leaves heads with short memory alone: a
    cap above every head's 1 / (dt |A|) gives the plain mixer's output exactly; a
    non-positive cap is refused."""
    torch.manual_seed(random.randrange(2**31))
    cfg = reference_config()
    mixer = Mamba2Mixer(cfg)
    u = torch.randn(2, 30, cfg.d_model)
    plain = mixer(u)
    timescale = head_timescales(mixer, u)
    mixer.config.max_timescale = timescale.max().item() * 1.01
    assert torch.equal(mixer(u), plain)
    mixer.config.max_timescale = timescale.min().item() / 2
    assert rel_err(mixer(u), plain) > 1e-3
    with pytest.raises(ValueError, match="max_timescale 0"):
        reference_config(max_timescale=0)


def test_resolve_backend_on_cpu(caplog, monkeypatch):
    monkeypatch.setattr(backend_mod, "_logged", set())
    with caplog.at_level(logging.INFO, logger=backend_mod.__name__):
        assert resolve_backend("auto", torch.device("cpu"), kind="mamba2") == "torch"
        assert resolve_backend("torch", "cpu", kind="mamba2") == "torch"
    assert len(caplog.records) == 1  # logged once per (kind, backend)
    with pytest.raises(RuntimeError):
        resolve_backend("mamba_ssm", "cpu")
    with pytest.raises(ValueError):
        resolve_backend("triton", "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not mamba_ssm_available(), reason="mamba_ssm is not importable here")
def test_state_dict_round_trip_and_backend_agreement_with_mamba_ssm():
    from mamba_ssm.modules.mamba2 import Mamba2

    cfg = Mamba2Config(d_model=256, d_state=64, headdim=32, ngroups=1)
    ours = Mamba2Mixer(cfg).cuda()
    ref = Mamba2(
        d_model=256, d_state=64, d_conv=4, expand=1, headdim=32, ngroups=1, chunk_size=256,
        rmsnorm=True, norm_before_gate=False, bias=False, conv_bias=True,
    ).cuda()  # fmt: skip
    ref.load_state_dict(ours.state_dict())
    ours.load_state_dict(ref.state_dict())
    u = torch.randn(2, 300, 256, device="cuda")
    ours.config.backend = "torch"
    y_torch = ours(u)
    ours.config.backend = "mamba_ssm"
    y_kernel = ours(u)
    assert rel_err(y_kernel, y_torch) < 1e-3
    assert rel_err(ref(u), y_torch) < 1e-3
