"""BiMamba2: padding invariance under every mask convention, and init from attention."""

import random

import pytest
import torch
from torch import nn

from speechbrain_cald.lobes.bimamba2 import (
    BiMamba2,
    init_bimamba2_from_attention,
    mamba2_config_for_attention_init,
)
from speechbrain_cald.lobes.mamba2 import Mamba2Config, Mamba2Mixer
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


@pytest.mark.parametrize("kind", ["lengths", "bool", "additive_4d"])
def test_padded_batch_matches_each_utterance_alone(kind):
    torch.manual_seed(random.randrange(2**31))
    cfg = Mamba2Config(d_model=32, d_state=8, headdim=8, torch_chunk_size=8)
    layer = BiMamba2(cfg)
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


def test_backward_mixer_reads_the_future():
    """Changing the last valid frame changes the first output (bidirectional), padding not."""
    cfg = Mamba2Config(d_model=32, d_state=8, headdim=8, torch_chunk_size=8)
    layer = BiMamba2(cfg)
    x = torch.randn(1, 10, cfg.d_model)
    lengths = torch.tensor([0.8])  # 8 valid frames
    y = layer(x, lengths=lengths)
    x_last, x_pad = x.clone(), x.clone()
    x_last[0, 7] += 1.0
    x_pad[0, 8:] += 1.0
    assert not torch.allclose(layer(x_last, lengths=lengths)[0, 0], y[0, 0])
    assert torch.equal(layer(x_pad, lengths=lengths), y)


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


@pytest.mark.parametrize("time_block, conv_bias", [(1024, True), (6, False)])
def test_fused_directions_equal_the_two_mixers_on_each_utterance(time_block, conv_bias):
    """The fused pure-PyTorch path (both directions as one batch) on a padded batch =
    per utterance, unpadded, `forward_mixer(x) + flip(backward_mixer(flip(x)))` run as
    two separate `Mamba2Mixer`s: outputs, input gradients and every parameter's gradient
    (summed over the utterances), 1e-5 relative; also in time blocks of 6 frames (not
    dividing the lengths), which carry both directions' conv context and state."""
    torch.manual_seed(random.randrange(2**31))
    cfg = Mamba2Config(
        d_model=32, d_state=8, headdim=8, ngroups=2, torch_chunk_size=8,
        torch_time_block=time_block, conv_bias=conv_bias, backend="torch",
    )  # fmt: skip
    layer = BiMamba2(cfg)
    with torch.no_grad():  # distinct directions: a swap of their parameters must show
        for p in layer.backward_mixer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(len(N_VALID), TIME, cfg.d_model, requires_grad=True)
    weight = torch.randn(len(N_VALID), TIME, cfg.d_model)
    y = layer(x, lengths=torch.tensor(N_VALID) / TIME)
    (y * weight).sum().backward()
    fused_grads = {name: p.grad.clone() for name, p in layer.named_parameters()}
    layer.zero_grad()
    for b, n in enumerate(N_VALID):
        alone = x[b : b + 1, :n].detach().requires_grad_()
        y_alone = layer.forward_mixer(alone) + layer.backward_mixer(alone.flip(1)).flip(1)
        (y_alone * weight[b : b + 1, :n]).sum().backward()
        assert rel_err(y[b, :n], y_alone[0]) < 1e-5
        assert rel_err(x.grad[b, :n], alone.grad[0]) < 1e-5
    for name, p in layer.named_parameters():
        assert rel_err(fused_grads[name], p.grad) < 1e-5, name


def test_state_dict_is_the_two_mixers():
    """The fused layer keeps two Mamba2Mixers' state dicts: each loads into a standalone
    mixer (mamba_ssm.Mamba2's names) and back, and the layer computes the same after."""
    cfg = Mamba2Config(d_model=32, d_state=8, headdim=8, torch_chunk_size=8)
    layer, other = BiMamba2(cfg), BiMamba2(cfg)
    x = torch.randn(2, 11, cfg.d_model)
    for direction in ("forward_mixer", "backward_mixer"):
        prefix = f"{direction}."
        own = {k[len(prefix) :]: v for k, v in layer.state_dict().items() if k.startswith(prefix)}
        standalone = Mamba2Mixer(cfg)
        standalone.load_state_dict(own)  # strict: the same keys and shapes
        getattr(other, direction).load_state_dict(standalone.state_dict())
    assert torch.equal(other(x), layer(x))


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
