"""Linformer self-attention: identity projections reduce it to softmax attention."""

import math

import pytest
import torch
from transformers import RobertaConfig
from transformers.models.roberta.modeling_roberta import RobertaSelfAttention

from speechbrain_cald.lobes.linformer import (
    LinformerConfig,
    LinformerProjections,
    LinformerSelfAttention,
)

HIDDEN, HEADS = 16, 4


def softmax_attention(attn: LinformerSelfAttention, hidden: torch.Tensor) -> torch.Tensor:
    """Ordinary multi-head softmax attention in float64 on attn's q/k/v weights."""
    h = hidden.double()
    batch, time, _ = h.shape

    def heads(layer):
        out = h @ layer.weight.double().T + layer.bias.double()
        return out.view(batch, time, HEADS, -1).transpose(1, 2)

    q, k, v = heads(attn.query), heads(attn.key), heads(attn.value)
    probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(HIDDEN // HEADS), dim=-1)
    return (probs @ v).transpose(1, 2).reshape(batch, time, HIDDEN)


def identity_attention(time: int) -> LinformerSelfAttention:
    """k = L = max_len and E = F = sqrt(L) * I, so E[:L]^T K / sqrt(L) = K exactly."""
    config = LinformerConfig(HIDDEN, HEADS, k=time, max_len=time, attention_dropout=0.0)
    attn = LinformerSelfAttention(config).eval()
    with torch.no_grad():
        attn.projections.E.copy_(torch.eye(time) * math.sqrt(time))
        attn.projections.F.copy_(torch.eye(time) * math.sqrt(time))
    return attn


def tiny_roberta_attention() -> RobertaSelfAttention:
    config = RobertaConfig(
        hidden_size=HIDDEN,
        num_attention_heads=HEADS,
        intermediate_size=32,
        num_hidden_layers=1,
        attention_probs_dropout_prob=0.0,
    )
    config._attn_implementation = "eager"
    return RobertaSelfAttention(config).eval()


def test_identity_projections_give_softmax_attention():
    attn = identity_attention(time=12)
    hidden = torch.randn(3, 12, HIDDEN)
    out = attn(hidden)
    torch.testing.assert_close(out.double(), softmax_attention(attn, hidden), rtol=1e-5, atol=1e-6)


def test_identity_projections_match_roberta_self_attention():
    roberta = tiny_roberta_attention()
    attn = identity_attention(time=10)
    missing, unexpected = attn.load_state_dict(roberta.state_dict(), strict=False)
    assert sorted(missing) == ["projections.E", "projections.F"] and unexpected == []
    hidden = torch.randn(2, 10, HIDDEN)
    with torch.no_grad():
        expected = roberta(hidden)[0]
        torch.testing.assert_close(attn(hidden), expected, rtol=1e-5, atol=1e-6)


def test_roberta_qkv_state_dict_loads_with_strict_names():
    roberta = tiny_roberta_attention()
    attn = LinformerSelfAttention(LinformerConfig(HIDDEN, HEADS, k=8, max_len=20))
    state = {**roberta.state_dict(), **attn.projections.state_dict(prefix="projections.")}
    attn.load_state_dict(state, strict=True)
    for name in ("query", "key", "value"):
        torch.testing.assert_close(getattr(attn, name).weight, getattr(roberta, name).weight)


@pytest.mark.parametrize("mask_kind", ["bool", "hf_additive_4d"])
def test_padded_sequence_matches_unpadded(mask_kind):
    config = LinformerConfig(HIDDEN, HEADS, k=6, max_len=30)
    attn = LinformerSelfAttention(config).eval()
    lengths = [17, 9, 30]
    hidden = torch.randn(3, 30, HIDDEN)
    valid = torch.arange(30)[None, :] < torch.tensor(lengths)[:, None]
    if mask_kind == "bool":
        mask = valid
    else:
        mask = (~valid)[:, None, None, :].float() * torch.finfo(torch.float32).min
    with torch.no_grad():
        padded = attn(hidden, attention_mask=mask)
        for b, length in enumerate(lengths):
            alone = attn(hidden[b : b + 1, :length])
            torch.testing.assert_close(padded[b : b + 1, :length], alone, rtol=1e-5, atol=1e-6)
            assert (padded[b, length:] == 0).all()


def test_projection_formula_uses_valid_length():
    """K' = E[:L]^T K[:L] / sqrt(L): checked through the output of one short sequence."""
    config = LinformerConfig(HIDDEN, HEADS, k=5, max_len=12, attention_dropout=0.0)
    attn = LinformerSelfAttention(config)
    hidden = torch.randn(1, 7, HIDDEN).double()
    attn.double()
    E, F = attn.projections.E[:7], attn.projections.F[:7]

    def heads(x):
        return x.view(1, 7, HEADS, -1).transpose(1, 2)

    q, k, v = heads(attn.query(hidden)), heads(attn.key(hidden)), heads(attn.value(hidden))
    k_proj = E.T @ k / math.sqrt(7)
    v_proj = F.T @ v / math.sqrt(7)
    probs = torch.softmax(q @ k_proj.transpose(-1, -2) / math.sqrt(HIDDEN // HEADS), dim=-1)
    expected = (probs @ v_proj).transpose(1, 2).reshape(1, 7, HIDDEN)
    torch.testing.assert_close(attn(hidden), expected)


def test_sharing_modes():
    none = LinformerSelfAttention(LinformerConfig(HIDDEN, HEADS, k=4, max_len=8))
    assert none.projections.E is not none.projections.F
    assert {n for n, _ in none.named_parameters() if n.startswith("projections")} == {
        "projections.E",
        "projections.F",
    }

    key_value = LinformerSelfAttention(LinformerConfig(HIDDEN, HEADS, k=4, sharing="key_value"))
    assert key_value.projections.F is key_value.projections.E
    assert tuple(key_value.projections.E.shape) == (514, 4)
    assert sum(1 for n, _ in key_value.named_parameters() if n.startswith("projections")) == 1

    config = LinformerConfig(HIDDEN, HEADS, k=4, max_len=8, sharing="layer")
    shared = LinformerProjections(config)
    layers = torch.nn.ModuleList(LinformerSelfAttention(config, shared) for _ in range(3))
    assert all(
        layer.projections.E is shared.E and layer.projections.F is shared.E for layer in layers
    )
    out = sum(layer(torch.randn(1, 5, HIDDEN)).sum() for layer in layers)
    out.backward()
    assert shared.E.grad is not None
    assert sum(p.numel() for p in layers.parameters()) == 3 * 3 * (HIDDEN * HIDDEN + HIDDEN) + 8 * 4

    with pytest.raises(ValueError, match="sharing"):
        LinformerConfig(HIDDEN, HEADS, sharing="heads")


def test_projections_init_standard_normal():
    projections = LinformerProjections(LinformerConfig(HIDDEN, HEADS, k=256, max_len=514))
    for p in (projections.E, projections.F):
        assert tuple(p.shape) == (514, 256)
        assert abs(p.mean().item()) < 0.01 and abs(p.std().item() - 1.0) < 0.01


def test_too_long_sequence_names_the_shape():
    attn = LinformerSelfAttention(LinformerConfig(HIDDEN, HEADS, k=4, max_len=8))
    with pytest.raises(ValueError, match=r"length 9 exceeds max_len 8.*\(8, 4\)"):
        attn(torch.randn(1, 9, HIDDEN))


def test_attention_dropout_only_in_training():
    attn = LinformerSelfAttention(
        LinformerConfig(HIDDEN, HEADS, k=4, max_len=8, attention_dropout=0.5)
    )
    hidden = torch.randn(2, 8, HIDDEN)
    attn.train()
    assert not torch.allclose(attn(hidden), attn(hidden))
    attn.eval()
    torch.testing.assert_close(attn(hidden), attn(hidden))
