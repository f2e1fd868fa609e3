"""The lobes' performance paths compute what the plain paths compute.

- `ssd_chunked` processes chunks in blocks (state carried between blocks) once the
  per-block intermediates would pass `ssd.BLOCK_ELEMENTS`; with a small budget the test
  shapes span several blocks (also a last, partial one) and must still equal the float64
  step-by-step recurrence, forward and gradients.
- BiMamba2 without lengths or mask reverses with a flip instead of the per-utterance
  gather; it must give the gather path's output (all frames valid) and gradients.
- The Mamba2 mixer runs long inputs in time blocks (`torch_time_block`), carrying the
  conv context and the SSM state (`ssd_chunked(initial_state=...)`) from block to block;
  with blocks that do and do not divide the length (and a last block shorter than the
  conv's context) it must equal the float64 per-step mixer, forward and gradients.
"""

import random

import pytest
import torch
from test_ssd_mamba2 import (
    RTOL,
    assert_scan_matches_naive,
    naive_mixer,
    naive_scan,
    random_scan_inputs,
    reference_config,
    rel_err,
)

from speechbrain_cald.lobes import ssd
from speechbrain_cald.lobes.bimamba2 import BiMamba2
from speechbrain_cald.lobes.mamba2 import Mamba2Config, Mamba2Mixer

# Small test shapes do not keep in_proj's width a multiple of 8 (a CUDA-kernel constraint).
pytestmark = pytest.mark.filterwarnings("ignore:Mamba2 in_proj width:UserWarning")


@pytest.mark.parametrize("chunk_size, blocks", [(8, 2), (8, 3), (16, 1)])
def test_blocked_ssd_matches_naive_recurrence(monkeypatch, chunk_size, blocks):
    """length 37, batch 2, 4 heads: the budget gives `blocks` chunks per block."""
    monkeypatch.setattr(ssd, "BLOCK_ELEMENTS", blocks * 2 * 4 * chunk_size**2)
    assert_scan_matches_naive(chunk_size)


def test_bimamba2_flip_path_equals_gather_path():
    """No lengths (flip) vs all-valid lengths (gather): same output and input gradient."""
    torch.manual_seed(random.randrange(2**31))
    layer = BiMamba2(Mamba2Config(d_model=32, d_state=8, headdim=8, torch_chunk_size=8))
    x = torch.randn(2, 19, 32, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    y = layer(x)
    y_ref = layer(x_ref, lengths=torch.ones(2))
    torch.testing.assert_close(y, y_ref, rtol=1e-6, atol=1e-6)
    weight = torch.randn_like(y)
    (y * weight).sum().backward()
    (y_ref * weight).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-6, atol=1e-6)


def test_ssd_initial_state_continues_a_split_sequence():
    """Two calls chained through the final / initial state = the float64 recurrence on
    the whole sequence (split point random, not a multiple of the chunk)."""
    seed = random.randrange(2**31)
    inputs = random_scan_inputs(seed)
    split = random.Random(seed).randrange(1, inputs[0].shape[1])
    first = [t if t.dim() == 1 else t[:, :split] for t in inputs]
    rest = [t if t.dim() == 1 else t[:, split:] for t in inputs]
    y1, state = ssd.ssd_chunked(*first, 8, return_final_state=True)
    y2 = ssd.ssd_chunked(*rest, 8, initial_state=state)
    ref = naive_scan(*[t.double() for t in inputs])
    assert rel_err(torch.cat([y1, y2], dim=1), ref) < RTOL, f"seed {seed}, split {split}"


@pytest.mark.parametrize("time_block", [1, 5, 8, 13])
def test_time_blocked_mixer_matches_naive_float64_mixer(time_block):
    """Length 21: blocks of 1 (shorter than the conv context), 5 (last block 1 frame),
    8 (one chunk) and 13 (two blocks, partial chunks)."""
    torch.manual_seed(random.randrange(2**31))
    cfg = reference_config(torch_time_block=time_block)
    mixer = Mamba2Mixer(cfg)
    params64 = {k: v.detach().double().requires_grad_() for k, v in mixer.named_parameters()}
    u = torch.randn(2, 21, cfg.d_model, requires_grad=True)
    u64 = u.detach().double().requires_grad_()
    y, ref = mixer(u), naive_mixer(params64, u64, cfg)
    assert rel_err(y, ref) < RTOL

    weight = torch.randn_like(ref)
    (y * weight.float()).sum().backward()
    (ref * weight).sum().backward()
    assert rel_err(u.grad, u64.grad) < RTOL, "input"
    for name, p in mixer.named_parameters():
        assert rel_err(p.grad, params64[name].grad) < RTOL, name
