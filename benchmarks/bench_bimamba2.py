"""CPU benchmark: BiMamba2 (our torch backend) vs transformers' Mamba2 PyTorch path.

Not a test. For each sequence length (batch 1, d_model 768) and each implementation a
fresh subprocess builds the layer, times forward (no grad) and forward+backward (median of
--repeats runs after one warm-up) and reports peak memory as the growth of the process's
peak resident set (`machine.start_peak_rss`) during the first full-length
forward+backward, after a 128-frame warm-up: every byte touched, allocator caching
included, so an upper bound on the tensors' peak. Every process runs under
machine.MALLOC_ENV (huge pages and no heap trimming for both implementations;
`--plain-malloc` to measure without).

"transformers" is two transformers.models.mamba2.modeling_mamba2.Mamba2Mixer with the
same shapes (forward on x and on flip(x), summed), i.e. the cost of the same BiMamba2 on
the reference PyTorch path (its mamba_ssm / causal_conv1d kernels absent on CPU).

GFLOP/s use one nominal count for both implementations: the matmul FLOPs of in_proj,
out_proj, the depthwise conv and the SSD scan at our chunk size (forward), x3 for
forward+backward; they are set against a measured fp32 matmul rate on this machine.

    OMP_NUM_THREADS=2 python benchmarks/bench_bimamba2.py --threads 2 --repeats 5
"""

import argparse
import json
import statistics
import subprocess
import sys
import time

import machine  # sibling module: the machine line and MALLOC_ENV
import torch

from speechbrain_cald.lobes.mamba2 import Mamba2Config

D_MODEL, D_STATE, CHUNK_HF = 768, 128, 256
HEADDIM = Mamba2Config(D_MODEL, d_state=D_STATE).headdim  # the default: 48


def build(impl: str):
    """(callable x -> y, torch chunk size) for one implementation."""
    if impl == "ours":
        from speechbrain_cald.lobes.bimamba2 import BiMamba2

        cfg = Mamba2Config(D_MODEL, d_state=D_STATE, headdim=HEADDIM, backend="torch")
        return BiMamba2(cfg), cfg.torch_chunk_size
    from transformers import Mamba2Config as HFConfig
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the "falling back to PyTorch" notices
    cfg = HFConfig(
        hidden_size=D_MODEL,
        num_heads=D_MODEL // HEADDIM,
        head_dim=HEADDIM,
        state_size=D_STATE,
        expand=1,
        n_groups=1,
        chunk_size=CHUNK_HF,
        conv_kernel=4,
        num_hidden_layers=1,
    )
    fw, bw = Mamba2Mixer(cfg, 0), Mamba2Mixer(cfg, 0)
    return (lambda x: fw(x) + bw(x.flip(1)).flip(1)), CHUNK_HF


def nominal_flops(length: int, chunk: int) -> float:
    """Forward matmul FLOPs of one BiMamba2 (two mixers), d_model 768, expand 1."""
    d, n, p = D_MODEL, D_STATE, HEADDIM
    h, width, conv_dim = d // p, 2 * d + 2 * n + d // p, d + 2 * n
    proj = 2 * length * d * width + 2 * length * d * d + 2 * length * conv_dim * 4
    scan = 2 * length * chunk * n + 2 * length * h * chunk * p + 2 * (2 * length * n * h * p)
    return 2 * (proj + scan)


def matmul_gflops(size: int = 2048, reps: int = 7) -> float:
    """Measured fp32 matmul rate (GFLOP/s) of a size^3 product on this machine: the fastest
    of `reps` timed products after 3 warm-up ones (the first ones pay for page faults and
    clock ramp-up)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    times = []
    for rep in range(3 + reps):
        start = time.perf_counter()
        a @ b
        if rep >= 3:
            times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times) / 1e9


def run_one(impl: str, length: int, repeats: int) -> dict:
    """Time and measure one (implementation, length) in this process."""
    torch.manual_seed(0)
    layer, _ = build(impl)
    x = torch.randn(1, length, D_MODEL, requires_grad=True)
    layer(x[:, :128]).sum().backward()  # loads kernels, allocates gradients
    peak_mib = machine.start_peak_rss()
    layer(x).sum().backward()  # the measured peak, and the warm-up of the timed runs
    peak = peak_mib()
    with torch.no_grad():
        layer(x)
    fwd, fwd_bwd = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.no_grad():
            layer(x)
        fwd.append(time.perf_counter() - start)
    for _ in range(repeats):
        start = time.perf_counter()
        layer(x).sum().backward()
        fwd_bwd.append(time.perf_counter() - start)
    return {
        "fwd_s": statistics.median(fwd),
        "fwd_bwd_s": statistics.median(fwd_bwd),
        "mem_mib": peak,
    }


def measure(impl: str, length: int, threads: int, repeats: int) -> dict:
    """`run_one` in a fresh subprocess (its own peak RSS) -> the result dict."""
    cmd = [sys.executable, __file__, "--threads", str(threads)]
    cmd += ["--repeats", str(repeats), "--child", impl, str(length)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def report(results: dict, peak: float) -> None:
    """Print the table, the speed-ups and the 30000/3000 scaling of `results`
    ({(impl, length): run_one dict}) against the matmul rate `peak` (GFLOP/s)."""
    impls = list(dict.fromkeys(impl for impl, _ in results))
    lengths = list(dict.fromkeys(length for _, length in results))
    chunk = build("ours")[1]
    print(
        f"\n{'impl':<13}{'length':>7}{'fwd s':>9}{'fwd+bwd s':>11}{'peak MiB':>10}"
        f"{'GFLOP/s fb':>12}{'% matmul':>10}"
    )
    for (impl, length), r in results.items():
        gflops = 3 * nominal_flops(length, chunk) / r["fwd_bwd_s"] / 1e9
        print(
            f"{impl:<13}{length:>7}{r['fwd_s']:>9.3f}{r['fwd_bwd_s']:>11.3f}"
            f"{r['mem_mib']:>10.0f}{gflops:>12.1f}{100 * gflops / peak:>9.0f}%"
        )

    if set(impls) == {"ours", "transformers"}:
        print("\nspeed-up ours vs transformers (time_transformers / time_ours):")
        for length in lengths:
            o, t = results["ours", length], results["transformers", length]
            print(
                f"  {length:>6}: fwd {t['fwd_s'] / o['fwd_s']:.2f}x, "
                f"fwd+bwd {t['fwd_bwd_s'] / o['fwd_bwd_s']:.2f}x, "
                f"memory {t['mem_mib'] / max(o['mem_mib'], 1e-9):.2f}x"
            )
    if {3000, 30000} <= set(lengths):
        print("\nscaling 30000 / 3000 frames (linear = 10):")
        for impl in impls:
            a, b = results[impl, 3000], results[impl, 30000]
            print(
                f"  {impl:<13} fwd+bwd time {b['fwd_bwd_s'] / a['fwd_bwd_s']:.1f}, "
                f"peak memory {b['mem_mib'] / max(a['mem_mib'], 1e-9):.1f}"
            )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[500, 1000, 3000, 10000, 30000])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--impls", nargs="+", default=["ours", "transformers"])
    parser.add_argument("--plain-malloc", action="store_true", help="no machine.MALLOC_ENV")
    parser.add_argument("--child", nargs=2, metavar=("IMPL", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    malloc = machine.use_malloc_env(args.plain_malloc)
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(run_one(args.child[0], int(args.child[1]), args.repeats)))
        return

    peak = matmul_gflops()
    print(f"{machine.describe()}\n{malloc}")
    print(f"threads {args.threads}; fp32 matmul 2048^3: {peak:.1f} GFLOP/s")
    results = {
        (impl, length): measure(impl, length, args.threads, args.repeats)
        for length in args.lengths
        for impl in args.impls
    }
    report(results, peak)


if __name__ == "__main__":
    main()
