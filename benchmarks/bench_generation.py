"""Benchmark (not a test): generation after long prompts, transformer vs converted student.

Pythia-160m dimensions (12 layers, width 768, random weights: they do not change the
cost), CPU. For each prompt length, the GPT-NeoX teacher with its KV cache and its
CALD student (the LM recipe's Mamba-1 mixer, or `--mixer mamba2`) each process the
prompt once (prefill) and then generate `--new-tokens` tokens greedily, one at a time
through the HF cache, as `generate()` does. Each (model, length) runs in its own
process. Printed per model and length: prefill seconds, seconds per generated token,
the cache size after generation, and the process's peak memory growth during
generation (VmHWM reset after the prefill); then the student / teacher ratios and the targets
(student per-token time at the longest prompt within 1.2x its time at the shortest;
student memory flat in the prompt length; student faster per token than the teacher
from 2048 tokens on).

    OMP_NUM_THREADS=2 python benchmarks/bench_generation.py [--prompts 512 2048 8192] \\
        [--new-tokens 128] [--mixer mamba|mamba2] [--write docs/BENCHMARKS.md]
"""

import argparse
import json
import os
import subprocess
import sys
import time

import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import machine  # noqa: E402  (sibling module: the machine line, peak memory)

from speechbrain_cald.conversion import convert_to_student  # noqa: E402

MIXER_CONFIGS = {"mamba": {}, "mamba2": {"chunk_size": 64}}  # the lobes' defaults otherwise


def pythia_160m(max_positions):
    """Pythia-160m's GPT-NeoX config (rotary positions computed up to `max_positions`)."""
    return transformers.GPTNeoXConfig(
        vocab_size=50304, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, rotary_pct=0.25, max_position_embeddings=max_positions,
        use_parallel_residual=True, attn_implementation="sdpa",
    )  # fmt: skip


def cache_bytes(cache):
    """Bytes held by an HF cache: keys / values, or recurrent states."""
    total = 0
    for layer in cache.layers:
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            total += tensor.numel() * tensor.element_size() if tensor is not None else 0
        for tensor in getattr(layer, "state", None) or ():
            total += tensor.numel() * tensor.element_size()
    return total


def child(kind, prompt, new_tokens, mixer, keep_attention=()):
    """Measure one (model, prompt length) in this process; print a JSON line."""
    torch.manual_seed(0)
    model = transformers.GPTNeoXForCausalLM(pythia_160m(prompt + new_tokens + 1)).eval()
    if kind == "student":
        config = {
            "mixer": mixer,
            "mixer_config": MIXER_CONFIGS[mixer],
            "keep_attention": list(keep_attention),
        }
        model = convert_to_student(model, config)[0].eval()
    ids = torch.randint(0, 50304, (1, prompt))
    cache = transformers.DynamicCache()
    with torch.no_grad():
        start = time.perf_counter()
        logits = model(ids, cache=cache, use_cache=True).logits[:, -1]
        prefill = time.perf_counter() - start
        peak_mib = machine.start_peak_rss()
        start = time.perf_counter()
        for _ in range(new_tokens):
            token = logits.argmax(-1, keepdim=True)
            logits = model(token, cache=cache, use_cache=True).logits[:, -1]
        per_token = (time.perf_counter() - start) / new_tokens
    result = {
        "prefill_s": prefill,
        "per_token_ms": 1000 * per_token,
        "cache_mib": cache_bytes(cache) / 2**20,
        "peak_mib": peak_mib(),
    }
    print(json.dumps(result))


def measure(kind, prompt, args):
    """Run `child` in a fresh process; its result dict."""
    cmd = [sys.executable, __file__, "--child", kind, "--prompts", str(prompt)]
    cmd += ["--new-tokens", str(args.new_tokens), "--mixer", args.mixer]
    cmd += ["--keep-attention", *map(str, args.keep_attention)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", nargs="+", type=int, default=[512, 2048, 8192])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--mixer", default="mamba", choices=list(MIXER_CONFIGS))
    machine.add_keep_attention(
        parser,
        "layers whose attention the student keeps (a hybrid: its cache holds their keys "
        "and values beside the other layers' states)",
    )
    parser.add_argument("--child", choices=["teacher", "student"], help=argparse.SUPPRESS)
    parser.add_argument("--write", help="append the table to this markdown file")
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, args.prompts[0], args.new_tokens, args.mixer, args.keep_attention)
    print(machine.describe(), flush=True)
    head = "| prompt | model | prefill s | ms / token | cache MiB | memory growth MiB |"
    lines = [head, "|---|---|---|---|---|---|"]
    results = {}
    for prompt in args.prompts:
        for kind in ("teacher", "student"):
            r = results[kind, prompt] = measure(kind, prompt, args)
            lines.append(
                f"| {prompt} | {kind} | {r['prefill_s']:.2f} | {r['per_token_ms']:.1f} | "
                f"{r['cache_mib']:.2f} | {r['peak_mib']:.0f} |"
            )
            print(lines[-1], flush=True)
    first, last = args.prompts[0], args.prompts[-1]
    student = [results["student", p] for p in args.prompts]
    flat_time = student[-1]["per_token_ms"] / student[0]["per_token_ms"]
    flat_cache = student[-1]["cache_mib"] / student[0]["cache_mib"]
    lines += ["", "| prompt | teacher / student time per token | cache teacher / student |"]
    lines += ["|---|---|---|"]
    for p in args.prompts:
        t, s = results["teacher", p], results["student", p]
        lines.append(
            f"| {p} | {t['per_token_ms'] / s['per_token_ms']:.2f}x | "
            f"{t['cache_mib'] / s['cache_mib']:.0f}x |"
        )
    faster_from = [p for p in args.prompts if p >= 2048]
    faster = all(
        results["teacher", p]["per_token_ms"] > results["student", p]["per_token_ms"]
        for p in faster_from
    )
    lines += [
        "",
        f"- student per-token time at {last} / at {first}: {flat_time:.2f} (target <= 1.2)",
        f"- student cache at {last} / at {first}: {flat_cache:.2f} (flat: 1.00); peak memory "
        f"{student[0]['peak_mib']:.0f} -> {student[-1]['peak_mib']:.0f} MiB",
        f"- student faster per token than the teacher from 2048 tokens on: "
        f"{'yes' if faster else 'NO'}",
    ]
    body = "\n".join(lines)
    print("\n" + body)
    if args.write:
        title = f"Generation: Pythia-160m dims, GPT-NeoX + KV cache vs {args.mixer} student"
        machine.append_section(args.write, title, body, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
