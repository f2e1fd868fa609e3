"""BiMamba2 and SharedProjectionBiMamba2: padding invariance under every mask convention,
the shared-projection lobe against a float64 per-step reference, init from attention."""

import random

import pytest
import torch
from test_ssd_mamba2 import RTOL, naive_norm_out, naive_scan_part, reference_config, rel_err
from torch import nn

from speechbrain_cald.lobes.bimamba2 import (
    BiMamba2,
    SharedProjectionBiMamba2,
    init_bimamba2_from_attention,
    mamba2_config_for_attention_init,
)
from speechbrain_cald.lobes.mamba2 import Mamba2Config
from speechbrain_cald.lobes.masking import valid_mask

pytestmark = pytest.mark.filterwarnings("ignore:Mamba2 in_proj width:UserWarning")

TIME, N_VALID = 23, [23, 17, 9]


def masks(kind: str) -> dict:
    """forward() keyword arguments for the batch N_VALID padded to TIME."""
    valid = torch.arange(TIME)[None, :] < torch.tensor(N_VALID)[:, None]  # (3, TIME)
    if kind == "lengths":
        return {"lengths": torch.tensor(N_VALID) / TIME}
    if kind == "bool":
        return {"attention_mask": valid}
    additive = (~valid).float() * torch.finfo(torch.float32).min  # HF style, 4-D
    return {"attention_mask": additive[:, None, None, :].expand(-1, 1, TIME, TIME)}


@pytest.mark.parametrize("max_timescale", [None, 4.0], ids=["plain", "capped"])
@pytest.mark.parametrize("lobe", [BiMamba2, SharedProjectionBiMamba2])
@pytest.mark.parametrize("kind", ["lengths", "bool", "additive_4d"])
def test_padded_batch_matches_each_utterance_alone(kind, lobe, max_timescale):
    torch.manual_seed(random.randrange(2**31))
    cfg = Mamba2Config(
        d_model=32, d_state=8, headdim=8, torch_chunk_size=8, max_timescale=max_timescale
    )
    layer = lobe(cfg)
    x = torch.randn(len(N_VALID), TIME, cfg.d_model, requires_grad=True)
    weight = torch.randn(len(N_VALID), TIME, cfg.d_model)
    y = layer(x, **masks(kind))
    (y * weight).sum().backward()
    for b, n in enumerate(N_VALID):
        assert torch.all(y[b, n:] == 0) and torch.all(x.grad[b, n:] == 0)
        alone = x[b : b + 1, :n].detach().requires_grad_()
        y_alone = layer(alone)
        (y_alone * weight[b : b + 1, :n]).sum().backward()
        torch.testing.assert_close(y[b, :n], y_alone[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(x.grad[b, :n], alone.grad[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("lobe", [BiMamba2, SharedProjectionBiMamba2])
def test_backward_mixer_reads_the_future(lobe):
    """Changing the last valid frame changes the first output (bidirectional), padding not."""
    cfg = Mamba2Config(d_model=32, d_state=8, headdim=8, torch_chunk_size=8)
    layer = lobe(cfg)
    x = torch.randn(1, 10, cfg.d_model)
    lengths = torch.tensor([0.8])  # 8 valid frames
    y = layer(x, lengths=lengths)
    x_last, x_pad = x.clone(), x.clone()
    x_last[0, 7] += 1.0
    x_pad[0, 8:] += 1.0
    assert not torch.allclose(layer(x_last, lengths=lengths)[0, 0], y[0, 0])
    assert torch.equal(layer(x_pad, lengths=lengths), y)


def naive_shared_bimamba2(m: dict, u: torch.Tensor, cfg: Mamba2Config) -> torch.Tensor:
    """SharedProjectionBiMamba2 on whole (unpadded) sequences, per time step in float64:
    one in_proj, the forward scan on the sequence, the backward scan on it reversed."""
    split = [cfg.d_inner, cfg.conv_dim, cfg.nheads, cfg.nheads]
    z, xBC, dt_fw, dt_bw = (u @ m["in_proj.weight"].T).split(split, dim=-1)
    y_fw = naive_scan_part(m, xBC, dt_fw, cfg, "forward_scan.")
    y_bw = naive_scan_part(m, xBC.flip(1), dt_bw.flip(1), cfg, "backward_scan.").flip(1)
    return naive_norm_out(m, y_fw + y_bw, z, cfg)


@pytest.mark.parametrize("time_block, single_chunk", [(5, 160), (1024, 0), (1024, 160)])
def test_shared_projection_matches_float64_reference_padded(time_block, single_chunk):
    """A padded batch (time blocks dividing and not dividing the lengths; one block in
    chunks of 8 or as one chunk) against the float64 per-step reference on each
    utterance alone: outputs, input and every parameter gradient (relative Frobenius
    error < RTOL)."""
    torch.manual_seed(random.randrange(2**31))
    cfg = reference_config(torch_time_block=time_block, torch_single_chunk=single_chunk)
    layer = SharedProjectionBiMamba2(cfg)
    with torch.no_grad():  # non-trivial norm weights and D
        layer.norm.weight.uniform_(0.5, 1.5)
        for scan in (layer.forward_scan, layer.backward_scan):
            scan.D.uniform_(0.5, 1.5)
    params64 = {k: v.detach().double().requires_grad_() for k, v in layer.named_parameters()}
    x = torch.randn(len(N_VALID), TIME, cfg.d_model, requires_grad=True)
    weight = torch.randn(len(N_VALID), TIME, cfg.d_model, dtype=torch.float64)
    y = layer(x, **masks("lengths"))
    (y * weight.float()).sum().backward()
    x64 = x.detach().double().requires_grad_()
    refs = [naive_shared_bimamba2(params64, x64[b : b + 1, :n], cfg) for b, n in enumerate(N_VALID)]
    sum((r * weight[b : b + 1, :n]).sum() for b, (r, n) in enumerate(zip(refs, N_VALID))).backward()
    for b, n in enumerate(N_VALID):
        assert rel_err(y[b, :n], refs[b][0]) < RTOL and torch.all(y[b, n:] == 0)
    assert rel_err(x.grad, x64.grad) < RTOL, "input"
    for name, p in layer.named_parameters():
        assert rel_err(p.grad, params64[name].grad) < RTOL, name


def test_valid_mask_conventions():
    expected = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    additive = (~expected).float() * -1e9
    assert torch.equal(valid_mask(2, 4, lengths=torch.tensor([1.0, 0.5])), expected)
    assert torch.equal(valid_mask(2, 4, attention_mask=expected.long()), expected)
    assert torch.equal(valid_mask(2, 4, attention_mask=expected.float()), expected)
    assert torch.equal(valid_mask(2, 4, attention_mask=additive), expected)
    assert torch.equal(valid_mask(2, 4, attention_mask=additive[:, None, None]), expected)
    assert torch.equal(valid_mask(2, 4).all(), torch.tensor(True))
    causal = torch.full((4, 4), -1e9).triu(1)  # causal + padding, (batch, 1, time, time)
    assert torch.equal(valid_mask(2, 4, attention_mask=causal + additive[:, None, None]), expected)


def test_attention_init_shapes_and_weights():
    d_model, heads = 64, 4
    cfg = mamba2_config_for_attention_init(d_model, heads, d_conv=3)
    assert (cfg.ngroups, cfg.nheads, cfg.d_state, cfg.headdim, cfg.d_inner, cfg.d_conv) == (
        4, 4, 16, 16, 64, 3,
    )  # fmt: skip
    layer = BiMamba2(cfg)
    q, k, v, o = (nn.Linear(d_model, d_model) for _ in range(4))
    before = {name: p.detach().clone() for name, p in layer.named_parameters()}
    init_bimamba2_from_attention(layer, q, k, v, o, heads)
    d, gn = cfg.d_inner, cfg.ngroups * cfg.d_state
    for mixer in ("forward_mixer", "backward_mixer"):
        m = getattr(layer, mixer)
        w = m.in_proj.weight
        assert w.shape == (2 * d + 2 * gn + cfg.nheads, d_model)
        assert torch.equal(w[d : 2 * d], v.weight)
        assert torch.equal(w[2 * d : 2 * d + gn], k.weight)
        assert torch.equal(w[2 * d + gn : 2 * d + 2 * gn], q.weight)
        assert torch.equal(m.out_proj.weight, o.weight)
        old = before[f"{mixer}.in_proj.weight"]
        assert torch.equal(w[:d], old[:d]) and torch.equal(w[-cfg.nheads :], old[-cfg.nheads :])
    with pytest.raises(ValueError):
        init_bimamba2_from_attention(BiMamba2(Mamba2Config(64, headdim=16)), q, k, v, o, heads)

    shared = SharedProjectionBiMamba2(cfg)
    before = shared.in_proj.weight.detach().clone()
    init_bimamba2_from_attention(shared, q, k, v, o, heads)
    w = shared.in_proj.weight  # [z | x | B | C | dt_fw | dt_bw]
    assert w.shape == (2 * d + 2 * gn + 2 * cfg.nheads, d_model)
    assert torch.equal(w[d : 2 * d], v.weight) and torch.equal(w[2 * d : 2 * d + gn], k.weight)
    assert torch.equal(w[2 * d + gn : 2 * d + 2 * gn], q.weight)
    assert torch.equal(shared.out_proj.weight, o.weight)
    assert torch.equal(w[:d], before[:d]) and torch.equal(
        w[-2 * cfg.nheads :], before[-2 * cfg.nheads :]
    )
