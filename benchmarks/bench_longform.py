"""CPU benchmark: long-form inference memory and time, CALD student vs transformer.

Not a test. For each audio length (batch 1, random audio at 16 kHz, random weights)
a fresh subprocess builds the model, runs one forward pass without gradients and
reports its wall time and the growth of the process's peak resident set
(ru_maxrss) over its value after building the model and a 1 s warm-up. The student
(wav2vec2 with BiMamba2 mixers) computes its CNN features in exact chunks
(`speechbrain_cald.inference.chunked_feature_encoder`) and runs the encoder on the
whole sequence in one pass; the teacher (the same wav2vec2 with SDPA attention)
runs as usual. The teacher's lengths stop at its first failure (out of memory,
--time-limit or --mem-limit).

Default dims: wav2vec2-base (12 layers, width 768) but with feat_extract_norm="layer"
(as wav2vec2-large-lv60 / XLS-R): base's GroupNorm CNN cannot be chunked. Quick run:

    OMP_NUM_THREADS=1 python benchmarks/bench_longform.py --tiny --minutes 0.1 0.5 1
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from transformers import Wav2Vec2Config, Wav2Vec2Model

from speechbrain_cald.conversion import convert_to_student
from speechbrain_cald.inference import CHUNK_FRAMES, chunked_feature_encoder

SAMPLE_RATE = 16000
TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(16,) * 7,
    num_conv_pos_embeddings=8,
    num_conv_pos_embedding_groups=4,
)
TINY_MIXER = {"headdim": 8, "d_state": 8, "chunk_size": 64}


def build(kind, tiny):
    """Random-weight wav2vec2 (feat_extract_norm "layer") or its BiMamba2 student."""
    config = Wav2Vec2Config(feat_extract_norm="layer", **(TINY if tiny else {}))
    model = Wav2Vec2Model(config).eval()
    if kind == "student":
        model, _ = convert_to_student(model, {"mixer_config": TINY_MIXER if tiny else {}})
    return model.eval()


def child(kind, minutes, tiny):
    """Measure one (model, length) in this process; print a JSON line."""
    model = build(kind, tiny)
    chunk = CHUNK_FRAMES if kind == "student" else None
    with torch.no_grad(), chunked_feature_encoder(model, chunk):
        model(torch.randn(1, SAMPLE_RATE))
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        wav = torch.randn(1, int(minutes * 60 * SAMPLE_RATE))
        start = time.perf_counter()
        frames = model(wav).last_hidden_state.shape[1]
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"frames": frames, "seconds": seconds, "peak_mib": (peak - base) / 1024}))


def measure(kind, minutes, args):
    """Run `child` in a subprocess under the limits -> dict (or a failure reason)."""
    limit = f"ulimit -v {int(args.mem_limit * 2**20)}; " if args.mem_limit else ""
    cmd = f"{limit}{sys.executable} {__file__} --child {kind} {minutes}"
    cmd += " --tiny" if args.tiny else ""
    try:
        proc = subprocess.run(
            ["bash", "-c", cmd], capture_output=True, text=True, timeout=args.time_limit
        )
    except subprocess.TimeoutExpired:
        return {"failed": f"> {args.time_limit:.0f} s"}
    if proc.returncode != 0:
        oom = "MemoryError" in proc.stderr or "alloc" in proc.stderr or proc.returncode < 0
        return {"failed": "out of memory" if oom else proc.stderr.strip().splitlines()[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 30, 60])
    parser.add_argument("--tiny", action="store_true", help="2 layers, width 32")
    parser.add_argument("--time-limit", type=float, default=1800, help="seconds per run")
    parser.add_argument("--mem-limit", type=float, default=None, help="GiB of address space")
    parser.add_argument("--no-teacher", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "MINUTES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], float(args.child[1]), args.tiny)

    print(f"{'model':8} {'minutes':>8} {'frames':>8} {'time s':>8} {'peak MiB':>9} {'MiB/min':>8}")
    for kind in ["student"] + ([] if args.no_teacher else ["teacher"]):
        for minutes in args.minutes:
            r = measure(kind, minutes, args)
            if "failed" in r:
                print(f"{kind:8} {minutes:8g} failed: {r['failed']}", flush=True)
                break
            print(
                f"{kind:8} {minutes:8g} {r['frames']:8d} {r['seconds']:8.1f} "
                f"{r['peak_mib']:9.0f} {r['peak_mib'] / minutes:8.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
