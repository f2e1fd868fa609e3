"""CPU benchmark: long-form inference memory and time, CALD student vs transformer.

Not a test. For each audio length (batch 1, random audio at 16 kHz, random weights)
a fresh subprocess builds the model, runs one forward pass without gradients and
reports its wall time and the growth of the process's peak resident set
(ru_maxrss) over its value after building the model and a 1 s warm-up. The student
(wav2vec2 with BiMamba2 mixers) computes its CNN features in exact chunks
(`speechbrain_cald.speech_input.speech_model_forward`) and runs the encoder on the
whole sequence in one pass; the teacher (the same wav2vec2 with SDPA attention)
runs as usual. The teacher's lengths stop at its first failure (out of memory,
--time-limit or --mem-limit).

Dims (--size): base = wav2vec2-base (12 layers, width 768, CNN 512 channels); small
= 6 layers, width 256, CNN 128 channels (the size of the committed CPU sweep, see
docs/BENCHMARKS.md for why not base); tiny = 2 layers, width 32. All use
feat_extract_norm="layer" (as wav2vec2-large-lv60 / XLS-R), as when the committed sweep
was run (base's GroupNorm CNN could not be chunked then; it can now). The header line
gives the dims, threads and the machine load (`os.getloadavg`), since the machine may be
shared. Quick run:

    OMP_NUM_THREADS=1 python benchmarks/bench_longform.py --size tiny --minutes 0.1 0.5 1
"""

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import time

import torch
from transformers import Wav2Vec2Config, Wav2Vec2Model

from speechbrain_cald import speech_input
from speechbrain_cald.conversion import convert_to_student
from speechbrain_cald.feature_encoder import CHUNK_FRAMES

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
SMALL = dict(
    hidden_size=256,
    num_hidden_layers=6,
    num_attention_heads=4,
    intermediate_size=1024,
    conv_dim=(128,) * 7,
)
# size -> (Wav2Vec2Config fields, student mixer config); {} = the defaults (base).
SIZES = {"base": ({}, {}), "small": (SMALL, {}), "tiny": (TINY, TINY_MIXER)}


def build(kind, size):
    """Random-weight wav2vec2 (feat_extract_norm "layer") or its BiMamba2 student."""
    fields, mixer = SIZES[size]
    model = Wav2Vec2Model(Wav2Vec2Config(feat_extract_norm="layer", **fields)).eval()
    speech_input.attach_feature_extractor(model, speech_input.feature_extractor_for())
    if kind == "student":
        model, _ = convert_to_student(model, {"mixer_config": mixer})
    return model.eval()


def child(kind, minutes, size, threads):
    """Measure one (model, length) in this process; print a JSON line."""
    torch.set_num_threads(threads)
    model = build(kind, size)
    chunk = CHUNK_FRAMES if kind == "student" else None

    def encode(wav):  # the inference interfaces' path: input normalisation, exact CNN
        return speech_input.speech_model_forward(model, wav, torch.ones(1), chunk)[0]

    with torch.no_grad():
        encode(torch.randn(1, SAMPLE_RATE))
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        wav = torch.randn(1, int(minutes * 60 * SAMPLE_RATE))
        start, start_cpu = time.perf_counter(), time.process_time()
        frames = encode(wav).last_hidden_state.shape[1]
        seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {"frames": frames, "seconds": seconds, "cpu_s": cpu, "peak_mib": (peak - base) / 1024}
    print(json.dumps(result))


def measure(kind, minutes, args):
    """Run `child` in a subprocess under the limits -> dict (or a failure reason).

    --time-limit caps the child's CPU time (soft `ulimit -t`: SIGXCPU), which, unlike
    wall time, does not depend on what else runs on a shared machine; the wall-clock
    backstop is 10 times that.
    """
    limit = f"ulimit -S -t {int(args.time_limit)}; "
    limit += f"ulimit -v {int(args.mem_limit * 2**20)}; " if args.mem_limit else ""
    cmd = f"{limit}{sys.executable} {__file__} --child {kind} {minutes}"
    cmd += f" --size {args.size} --threads {args.threads}"
    too_long = {"failed": f"> {args.time_limit:.0f} CPU s"}
    try:
        proc = subprocess.run(
            ["bash", "-c", cmd], capture_output=True, text=True, timeout=10 * args.time_limit
        )
    except subprocess.TimeoutExpired:
        return too_long
    if proc.returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
        return too_long
    if proc.returncode != 0:
        oom = "MemoryError" in proc.stderr or "alloc" in proc.stderr or proc.returncode < 0
        return {"failed": "out of memory" if oom else proc.stderr.strip().splitlines()[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 30, 60])
    parser.add_argument("--size", choices=sorted(SIZES), default="base", help="model dims")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--time-limit", type=float, default=1800, help="CPU seconds per run")
    parser.add_argument("--mem-limit", type=float, default=None, help="GiB of address space")
    parser.add_argument("--no-teacher", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "MINUTES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], float(args.child[1]), args.size, args.threads)

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"# size {args.size}: {SIZES[args.size]}; {args.threads} thread(s); load {load}")
    # CPU s/min and dMiB/min: growth per minute of audio since the previous length
    # (constant when linear; the first length's includes the fixed CNN chunk).
    print(
        f"{'model':8} {'minutes':>7} {'frames':>7} {'wall s':>7} {'CPU s':>7} "
        f"{'CPU s/min':>9} {'peak MiB':>8} {'dMiB/min':>8}  load"
    )
    for kind in ["student"] + ([] if args.no_teacher else ["teacher"]):
        last = {"minutes": 0, "cpu_s": 0.0, "peak_mib": 0.0}
        for minutes in args.minutes:
            r = measure(kind, minutes, args)
            load = os.getloadavg()[0]
            if "failed" in r:
                print(f"{kind:8} {minutes:7g} failed: {r['failed']}  {load:.2f}", flush=True)
                break
            span = minutes - last["minutes"]
            print(
                f"{kind:8} {minutes:7g} {r['frames']:7d} {r['seconds']:7.1f} {r['cpu_s']:7.1f} "
                f"{(r['cpu_s'] - last['cpu_s']) / span:9.2f} {r['peak_mib']:8.0f} "
                f"{(r['peak_mib'] - last['peak_mib']) / span:8.1f}  {load:.2f}",
                flush=True,
            )
            last = {"minutes": minutes, **r}


if __name__ == "__main__":
    main()
