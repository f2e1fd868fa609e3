"""One line naming the machine, for a benchmark's printed output and the docs."""

import datetime
import os
import platform
import shlex
import sys

import torch


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
