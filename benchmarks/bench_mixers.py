#!/usr/bin/env python3
"""CPU benchmark: one wav2vec2 layer's attention vs the student mixers that replace it.

Not a test. The whole-model benchmark (`bench_encoder.py`) times teacher and student in
separate processes, one after the other; on a shared 2-core machine that moves a short
input's ratio by 15-25% between runs. Here every variant's attention slot of one layer
(wav2vec2-base dims: d_model 768, 12 heads; HF sdpa attention for the teacher) is timed
in turn within each round, so slow and fast spells hit all of them alike; each time is
the median over --rounds. Variants: the paper's BiMamba2 (d_state 128), BiMamba2 with
d_state 64, the shared-projection BiMamba2 (`bimamba2_shared`) with d_state 128 and 64.

Prints per length the inference time (batch 1) and the forward+backward time (batch 2,
the second utterance 80% long, as a padded training batch), and each as the attention's
time over the variant's (above 1: the mixer is faster than attention).

    OMP_NUM_THREADS=2 python benchmarks/bench_mixers.py [--frames 149 499 1499 2999] [--rounds 30]
"""

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import Wav2Vec2Config, Wav2Vec2Model

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402  (sibling module: the machine line)

from speechbrain_cald.conversion import StudentConfig, convert_to_student  # noqa: E402

VARIANTS = {  # name -> StudentConfig fields (None: the teacher's attention)
    "attention (sdpa)": None,
    "bimamba2 d_state 128": {"mixer": "bimamba2", "mixer_config": {"d_state": 128}},
    "bimamba2 d_state 64": {"mixer": "bimamba2", "mixer_config": {"d_state": 64}},
    "shared d_state 128": {"mixer": "bimamba2_shared", "mixer_config": {"d_state": 128}},
    "shared d_state 64": {"mixer": "bimamba2_shared", "mixer_config": {"d_state": 64}},
}


def attention_slots() -> dict:
    """{variant: the attention slot of layer 0} of one 1-layer wav2vec2-base model and
    its students, in eval mode (dropout off; the timing is the same in train mode)."""
    torch.manual_seed(0)
    config = Wav2Vec2Config(num_hidden_layers=1)
    config._attn_implementation = "sdpa"
    teacher = Wav2Vec2Model(config).eval()
    slots = {}
    for name, fields in VARIANTS.items():
        model = teacher
        if fields is not None:
            model = convert_to_student(copy.deepcopy(teacher), StudentConfig(**fields))[0]
        slots[name] = model.encoder.layers[0].attention.eval()
    return slots


def timed(fn, slot) -> float:
    start = time.perf_counter()
    fn(slot)
    return time.perf_counter() - start


def measure(slots: dict, frames: int, rounds: int) -> dict:
    """{variant: (inference s, forward+backward s)}, medians over interleaved rounds."""
    x = torch.randn(1, frames, 768)
    xb = torch.randn(2, frames, 768, requires_grad=True)
    mask = torch.ones(2, frames, dtype=torch.long)
    mask[1, int(0.8 * frames) :] = 0
    extended = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min

    def infer(slot):
        with torch.no_grad():
            slot(x)

    def train(slot):
        slot(xb, attention_mask=extended)[0].sum().backward()

    for slot in slots.values():  # warm-up
        infer(slot)
        train(slot)
    times = {name: ([], []) for name in slots}
    for _ in range(rounds):
        for name, slot in slots.items():
            times[name][0].append(timed(infer, slot))
            times[name][1].append(timed(train, slot))
    return {name: tuple(statistics.median(t) for t in pair) for name, pair in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[149, 499, 1499, 2999])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    malloc = machine.use_malloc_env(False)  # as bench_encoder: heap kept, huge pages
    torch.set_num_threads(args.threads)
    print(machine.describe())
    print(malloc)
    slots = attention_slots()
    reference = next(iter(VARIANTS))
    print(
        f"\n{'frames':>6} {'variant':<22} {'infer ms':>9} {'vs attn':>7}"
        f" {'fwd+bwd ms':>10} {'vs attn':>7}"
    )
    for frames in args.frames:
        result = measure(slots, frames, args.rounds)
        base_infer, base_train = result[reference]
        for name, (infer, train) in result.items():
            print(
                f"{frames:>6} {name:<22} {1e3 * infer:>9.1f} {base_infer / infer:>6.2f}x"
                f" {1e3 * train:>10.1f} {base_train / train:>6.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
