"""What the benchmarks share about the machine: the line naming it (for the printed output
and the docs) and the glibc malloc settings every measured process runs under."""

import ctypes
import datetime
import gc
import os
import platform
import resource
import shlex
import sys
from collections.abc import Callable

import torch

# glibc malloc settings for every measured process (both models; `--plain-malloc` in the
# scripts to measure without): freed memory stays in the heap for reuse instead of going
# back to the kernel, so a long input's large tensors are not fresh pages (page faults) on
# every allocation, and the heap is backed by transparent huge pages (glibc >= 2.35; THP
# in "madvise" mode), so gigabytes of saved activations do not thrash the TLB. Measured
# on one BiMamba2 (d_model 768, 2 threads), forward+backward per frame at 30000 frames
# over that at 10000 (or 3000): 1.16x with default malloc, 1.12x with the first three,
# 0.95-1.06x with all four (docs/BENCHMARKS.md, BiMamba2 scan).
MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(2**34),
    "MALLOC_TRIM_THRESHOLD_": str(2**34),
    "MALLOC_TOP_PAD_": str(2**30),
    "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1",
}


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (platform's guess elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(device: str = "cpu", dtype: str = "fp32") -> str:
    """Date (UTC), CPU model, cores, torch threads, torch version, device, dtype, load."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{now}; {cpu_model()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch "
        f"threads, torch {torch.__version__}, device {device}, {dtype}; load average {load}"
    )


def append_section(path: str, title: str, body: str, argv: list[str], device: str = "cpu"):
    """Append a Markdown section to `path` (e.g. docs/BENCHMARKS.md): `## title`, the
    machine line, the command that produced it (script and `argv`, with the
    OMP_NUM_THREADS it ran under) and `body`."""
    script = os.path.relpath(sys.argv[0])
    threads = os.environ.get("OMP_NUM_THREADS", "(unset)")
    command = f"OMP_NUM_THREADS={threads} python {script} {shlex.join(argv)}"
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"\n## {title}\n\n{describe(device)}.\n\n    {command}\n\n{body}\n")


def use_malloc_env(plain: bool) -> str:
    """Re-execute this process under MALLOC_ENV unless `plain` or already under it (glibc
    reads it at start-up; child processes inherit it). Returns a line saying which."""
    if plain:
        return "glibc malloc: default"
    if any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
    return "glibc malloc: " + " ".join(f"{k}={v}" for k, v in MALLOC_ENV.items())


def _status_kib(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in KiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def start_peak_rss() -> Callable[[], float]:
    """Give the heap's free pages back (with MALLOC_ENV they would stay resident and hide
    what follows), reset the peak resident set (VmHWM), and return a function giving its
    growth since, in MiB. Where /proc cannot reset it, ru_maxrss: an underestimate in a
    child of a bigger process (Linux keeps the parent's peak across exec)."""
    gc.collect()
    ctypes.CDLL(None).malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_kib("VmRSS")
        return lambda: (_status_kib("VmHWM") - before) / 1024
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return lambda: (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


def add_keep_attention(parser, help_text):
    """The benchmarks' `--keep-attention LAYER ...` option (a hybrid student)."""
    parser.add_argument(
        "--keep-attention", nargs="*", type=int, default=[], metavar="LAYER", help=help_text
    )
