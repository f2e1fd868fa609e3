"""One prepared check of what CPU machines cannot test, for the first GPU we are lent.

    python tools/gpu_check.py --out OUT [--mamba-src DIR] [--sizes full|tiny]

Parts, each passed / failed / skipped with its reason:

1. kernel: our SSD scan (`lobes/ssd.py`, the exact pure-PyTorch path) against mamba-ssm's
   Triton chunk scan (`mamba_chunk_scan_combined`) on the same right-padded batch,
   outputs and the gradients of every input; then a BiMamba2 student encoder on a padded
   batch, backend "torch" vs "mamba_ssm", and each row padded vs alone on the kernel.
   mamba-ssm cannot be installed on the device machine: its Python sources are read
   from --mamba-src (a folder holding `mamba_ssm/`), its compiled extensions unused.
2. precision: `CALDBrain.fit_batch` (3 steps) for the teacher (std), the plain student
   (unguided) and the CALD step (target: frozen teacher + KD + layerwise distillation)
   under SpeechBrain's fp32, bf16 and fp16 autocast (GradScaler for fp16): losses and
   weights finite, the first step's loss within a tolerance of fp32's, step time and
   peak memory.
3. ddp: the TED-LIUM recipe on its tiny fixture under torchrun, 2 processes, NCCL: both
   ranks end with identical weights (`tests/recipes/ddp_worker.py`); needs 2 GPUs.
4. speed: teacher vs student (wav2vec2-base dims, random weights, batch 1) at 3 / 10 /
   30 / 60 s and 10 min: forward and training step (bf16 autocast on CUDA), median time
   and peak memory, student/teacher ratios.

Without CUDA, parts 2 and 4 run on the CPU at tiny sizes (`--sizes tiny`, the default
there) so that the test suite keeps the script working; 1, 3 and the fp16 rows are
skipped with their reasons. Writes OUT/gpu_check.md (the report) and OUT/gpu_check.json
(the same rows); exit status 1 if any part failed. How to run it on the device machine
(what to carry, the command, the time it takes): docs/ENVIRONMENT.md.
"""

import argparse
import importlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_encoder  # noqa: E402  (the benchmark's model configs and training batch)
import machine  # noqa: E402  (the machine line)

FULL_SECONDS = [3, 10, 30, 60, 600]
TINY_SECONDS = [1, 2]
PRECISIONS = {"fp32": 0.0, "bf16": 0.05, "fp16": 0.02}  # first-step loss tolerance vs fp32
TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(16, 16, 16),
    conv_kernel=(10, 3, 2),
    conv_stride=(5, 4, 2),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
)


class Skip(Exception):
    """A part that cannot run on this machine; the message says why."""


def cuda():
    return torch.cuda.is_available()


def device():
    return "cuda" if cuda() else "cpu"


def config(sizes):
    """wav2vec2-base dims (`bench_encoder.wav2vec2_config`) or a tiny model for CPU runs."""
    base = bench_encoder.wav2vec2_config(large=False)
    if sizes == "tiny":
        for key, value in TINY.items():
            setattr(base, key, value)
        base.num_feat_extract_layers = len(TINY["conv_dim"])
    return base


def models(sizes):
    """(teacher, student) encoders (Wav2Vec2Model and its BiMamba2 student), eval mode."""
    from transformers import Wav2Vec2Model

    from speechbrain_cald import speech_input
    from speechbrain_cald.conversion import StudentConfig, convert_to_student

    torch.manual_seed(0)
    teacher = Wav2Vec2Model(config(sizes)).eval()
    speech_input.attach_feature_extractor(teacher, speech_input.feature_extractor_for())
    student = convert_to_student(teacher, StudentConfig())[0].eval()
    return teacher, student


def timed(fn, repeats=3):
    """(median seconds of `repeats` calls after one warm-up, peak memory MiB, the last
    result). GPU: synchronised, peak of torch's allocator; CPU: growth of the peak
    resident set (`machine.start_peak_rss`)."""
    fn()
    times = []
    if cuda():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        cpu_peak = machine.start_peak_rss()
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        if cuda():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda() else cpu_peak()
    return statistics.median(times), peak, result


def rel_err(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


# ---------------------------------------------------------------------------------
# 1. Our SSD scan vs mamba-ssm's Triton kernel.
# ---------------------------------------------------------------------------------


def use_mamba_sources(src):
    """Make `import mamba_ssm.ops.triton.ssd_combined` read the Python sources under
    `src`/mamba_ssm without running `mamba_ssm/__init__.py` (it imports the compiled CUDA
    extensions, which the device machine lacks): empty parent packages pointing there."""
    root = Path(src) / "mamba_ssm"
    if not (root / "ops" / "triton" / "ssd_combined.py").is_file():
        raise Skip(f"--mamba-src {src}: no mamba_ssm/ops/triton/ssd_combined.py there")
    for name, path in (
        ("mamba_ssm", root),
        ("mamba_ssm.ops", root / "ops"),
        ("mamba_ssm.ops.triton", root / "ops" / "triton"),
        ("mamba_ssm.utils", root / "utils"),
    ):
        module = types.ModuleType(name)
        module.__path__ = [str(path)]
        sys.modules[name] = module
    return importlib.import_module("mamba_ssm.ops.triton.ssd_combined")


def check_kernel(args):
    if not cuda():
        raise Skip("needs CUDA (mamba-ssm's Triton kernels run on GPUs only)")
    if not args.mamba_src:
        raise Skip("no --mamba-src: give a folder holding mamba-ssm's Python sources")
    kernel = use_mamba_sources(args.mamba_src).mamba_chunk_scan_combined
    from speechbrain_cald.lobes import backend
    from speechbrain_cald.lobes.ssd import ssd_chunked

    backend.mamba_ssm_available.cache_clear()
    rows = []
    gen = torch.Generator(device="cuda").manual_seed(0)
    batch, length, heads, headdim, groups, state, chunk = 3, 1500, 12, 64, 1, 64, 256
    lengths = torch.tensor([length, length * 3 // 5, length // 4], device="cuda")
    valid = (torch.arange(length, device="cuda")[None] < lengths[:, None]).float()

    def randn(*shape):
        return torch.randn(*shape, device="cuda", generator=gen)

    x = randn(batch, length, heads, headdim) * valid[..., None, None]
    B = randn(batch, length, groups, state) * valid[..., None, None]
    C = randn(batch, length, groups, state)
    dt = torch.nn.functional.softplus(randn(batch, length, heads) - 2) * valid[..., None]
    A = -torch.exp(randn(heads) * 0.5)
    inputs = {"x": x, "dt": dt, "A": A, "B": B, "C": C}
    grad_out = randn(batch, length, heads, headdim)
    results = {}
    for name, scan in (
        ("ours (torch)", lambda t: ssd_chunked(t["x"], t["dt"], t["A"], t["B"], t["C"], chunk)),
        ("mamba-ssm", lambda t: kernel(t["x"], t["dt"], t["A"], t["B"], t["C"], chunk)),
    ):
        leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
        y = scan(leaves)
        (y * grad_out).sum().backward()
        results[name] = (y.detach(), {k: v.grad for k, v in leaves.items()})
    (y_ours, g_ours), (y_kernel, g_kernel) = results["ours (torch)"], results["mamba-ssm"]
    rows.append({"compared": "scan output", "rel_err": rel_err(y_kernel, y_ours), "max": 2e-3})
    for k in inputs:
        rows.append({"compared": f"d{k}", "rel_err": rel_err(g_kernel[k], g_ours[k]), "max": 1e-2})

    # The student encoder on a padded batch, backend torch vs mamba_ssm.
    teacher, student = models(args.sizes)
    student = student.cuda()
    wavs = torch.randn(3, 16000 * 4, device="cuda")
    rel = torch.tensor([1.0, 0.6, 0.35], device="cuda")
    outputs = {}
    for name in ("torch", "mamba_ssm"):
        set_backend(student, name)
        with torch.no_grad():
            outputs[name] = encode(student, wavs, rel)
    rows.append(
        {
            "compared": "student encoder, padded batch",
            "rel_err": rel_err(outputs["mamba_ssm"], outputs["torch"]),
            "max": 2e-3,
        }
    )
    for i in (1, 2):
        n = int(rel[i] * wavs.shape[1])
        with torch.no_grad():
            alone = encode(student, wavs[i : i + 1, :n], torch.ones(1, device="cuda"))
        frames = alone.shape[1]
        rows.append(
            {
                "compared": f"kernel: row {i} padded vs alone",
                "rel_err": rel_err(outputs["mamba_ssm"][i, :frames], alone[0]),
                "max": 2e-3,
            }
        )
    failed = [r["compared"] for r in rows if not r["rel_err"] <= r["max"]]
    return rows, f"beyond tolerance: {failed}" if failed else None, bool(failed)


def set_backend(model, name):
    for module in model.modules():
        if hasattr(module, "config") and hasattr(module.config, "backend"):
            module.config.backend = name


def encode(model, wavs, rel):
    from speechbrain_cald.speech_input import speech_model_forward

    return speech_model_forward(model, wavs, rel, None)[0].last_hidden_state


# ---------------------------------------------------------------------------------
# 2. Training steps under autocast; 4. the speed table.
# ---------------------------------------------------------------------------------


def brains(folder, precision):
    """{kind: a CALDBrain ready for fit_batch} for std / unguided / CALD target."""
    import speechbrain as sb

    from speechbrain_cald import guidance as g
    from speechbrain_cald.brain import CALDBrain
    from speechbrain_cald.conversion import StudentConfig
    from speechbrain_cald.losses import CALDLossWeights
    from speechbrain_cald.tasks import CTCASR

    modes = {
        "teacher (std)": g.Std(folder),
        "student (unguided)": g.Unguided(folder, StudentConfig()),
        "CALD step (target)": g.Target(
            folder, StudentConfig(), CALDLossWeights(task=1.0, kd=1.0, ld=15.0)
        ),
    }
    made = {}
    for kind, guidance in modes.items():
        torch.manual_seed(0)
        brain = CALDBrain(
            opt_class=lambda params: torch.optim.AdamW(params, lr=1e-5),
            hparams={
                "task": CTCASR(bench_encoder.VOCAB, freeze_feature_encoder=True),
                "guidance": guidance,
            },
            run_opts={"device": device(), "precision": precision, "noprogressbar": True},
        )
        brain.on_fit_start()
        brain.modules.train()
        brain.on_stage_start(sb.Stage.TRAIN)
        made[kind] = brain
    return made


def teacher_folder(tmp, sizes):
    """A saved random-weight Wav2Vec2ForCTC (the std run's starting point)."""
    from transformers import Wav2Vec2ForCTC

    from speechbrain_cald import speech_input

    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(config(sizes))
    speech_input.attach_feature_extractor(model, speech_input.feature_extractor_for())
    model.save_pretrained(tmp)
    return tmp


def check_precision(args):
    seconds = 4 if args.sizes == "full" else 1
    batch = bench_encoder.training_batch(4 if args.sizes == "full" else 2, seconds)
    rows, skipped, first = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = teacher_folder(tmp, args.sizes)
        for precision, tolerance in PRECISIONS.items():
            if precision == "fp16" and not cuda():
                skipped.append("fp16 (CUDA autocast with GradScaler; CPU runs fp32 or bf16)")
                continue
            for kind, brain in brains(folder, precision).items():
                losses = []

                def step(brain=brain, losses=losses):
                    brain.step += 1
                    losses.append(float(brain.fit_batch(batch)))

                seconds_per_step, peak, _ = timed(step, repeats=2)
                weights_finite = all(torch.isfinite(p).all() for p in brain.modules.parameters())
                first.setdefault(kind, losses[0])
                drift = abs(losses[0] - first[kind]) / abs(first[kind])
                ok = weights_finite and all(math.isfinite(v) for v in losses)
                rows.append(
                    {
                        "step": kind,
                        "precision": precision,
                        "first loss": losses[0],
                        "vs fp32": drift,
                        "max": tolerance,
                        "s/step": seconds_per_step,
                        "peak MiB": peak,
                        "finite": ok,
                        "passed": ok and drift <= tolerance,
                    }
                )
    failed = [f"{r['step']} {r['precision']}" for r in rows if not r["passed"]]
    note = "; ".join(([f"failed: {failed}"] if failed else []) + [f"skipped {s}" for s in skipped])
    return rows, note or None, bool(failed)


def check_speed(args):
    from speechbrain_cald.lobes import backend

    lengths = FULL_SECONDS if args.sizes == "full" else TINY_SECONDS
    teacher, student = models(args.sizes)
    autocast = (
        torch.autocast("cuda", torch.bfloat16) if cuda() else torch.autocast("cpu", enabled=False)
    )
    rows = []
    for seconds in lengths:
        wav = torch.randn(1, int(seconds * 16000), device=device())
        one = torch.ones(1, device=device())
        row = {"seconds": seconds}
        for kind, model in (("teacher", teacher), ("student", student)):
            model.to(device())

            def forward(model=model, wav=wav, one=one):
                with torch.no_grad(), autocast:
                    return encode(model, wav, one)

            def train_step(model=model, wav=wav, one=one):
                model.train()
                with autocast:
                    loss = encode(model, wav, one).float().pow(2).mean()
                loss.backward()
                model.zero_grad(set_to_none=True)
                model.eval()

            row[f"{kind} forward s"], row[f"{kind} forward MiB"], _ = timed(forward)
            row[f"{kind} train s"], row[f"{kind} train MiB"], _ = timed(train_step, repeats=1)
            model.cpu()
        row["forward ratio"] = row["teacher forward s"] / row["student forward s"]
        row["train ratio"] = row["teacher train s"] / row["student train s"]
        rows.append(row)
    used = "mamba_ssm" if cuda() and backend.mamba_ssm_available() else "torch"
    return rows, f"student scan backend: {used}; ratio = teacher time / student time", False


def check_ddp(args):
    gpus = torch.cuda.device_count() if cuda() else 0
    if gpus < 2:
        raise Skip(
            f"needs 2 GPUs ({gpus} here); the 2-process CPU (gloo) run is "
            "tests/recipes/test_recipe_reliability.py::test_ddp_two_cpu_processes"
        )
    import csv
    import shlex

    with open(ROOT / "tests" / "recipes" / "recipes.csv", encoding="utf-8") as f:
        row = next(r for r in csv.DictReader(f) if r["Recipe"] == "TEDLIUM/ASR")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, str(ROOT / "tools" / "make_fixtures.py"), "--out", tmp],
            check=True,
            capture_output=True,
        )
        recipe = ROOT / "recipes" / "TEDLIUM" / "ASR"
        audit = Path(tmp) / "audit"
        audit.mkdir()
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            str(ROOT / "tests" / "recipes" / "ddp_worker.py"), "train.py", row["Hparam_file"],
            *shlex.split(row["test_flags"]),
            "--data_folder", os.path.join(tmp, row["Fixture_root"]),
            "--output_root", os.path.join(tmp, "out"), "--distributed_backend", "nccl",
            "--device", "cuda", "--noprogressbar",
        ]  # fmt: skip
        done = subprocess.run(
            command,
            cwd=recipe,
            env={**os.environ, "CALD_DDP_AUDIT": str(audit), "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
        )
        if done.returncode:
            return [], f"torchrun failed: {done.stderr[-800:]}", True
        weights = [torch.load(audit / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
        differ = [k for k, v in weights[0].items() if not torch.equal(v, weights[1][k])]
    rows = [{"tensors": len(weights[0]), "differing between ranks": len(differ)}]
    return rows, f"differ: {differ[:5]}" if differ else None, bool(differ)


PARTS = {
    "kernel": check_kernel,
    "precision": check_precision,
    "ddp": check_ddp,
    "speed": check_speed,
}


def run_part(name, args):
    """{part, status, note, rows, seconds} of one part. A part returns (rows, note,
    failed) or raises Skip; any other exception is its failure (with the traceback)."""
    start = time.perf_counter()
    try:
        rows, note, failed = PARTS[name](args)
        status = "failed" if failed else "passed"
    except Skip as reason:
        rows, note, status = [], str(reason), "skipped"
    except Exception:  # a check that breaks is a finding, reported with its traceback
        rows, note, status = [], traceback.format_exc(limit=8), "failed"
    return {
        "part": name,
        "status": status,
        "note": note,
        "rows": rows,
        "seconds": round(time.perf_counter() - start, 1),
    }


def markdown(results, line):
    """The report: the machine line, then per part its status, note and table."""
    out = ["# GPU check (tools/gpu_check.py)", "", line, ""]
    for result in results:
        out += [f"## {result['part']}: {result['status']} ({result['seconds']} s)", ""]
        if result["note"]:
            out += ["    " + n for n in result["note"].strip().splitlines()] + [""]
        if result["rows"]:
            keys = list(result["rows"][0])
            out += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            for row in result["rows"]:
                out.append("| " + " | ".join(fmt(row[k]) for k in keys) + " |")
            out.append("")
    return "\n".join(out)


def fmt(value):
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.3f}"
    return "-" if value is None else str(value)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for gpu_check.md / .json")
    parser.add_argument("--mamba-src", help="folder holding mamba-ssm's mamba_ssm/ sources")
    parser.add_argument(
        "--sizes",
        choices=("full", "tiny"),
        default="full" if cuda() else "tiny",
        help="model and input sizes (default: full on CUDA, tiny on CPU)",
    )
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    name = torch.cuda.get_device_name() if cuda() else "no CUDA"
    line = f"{machine.describe(device())}; GPU: {name}; sizes {args.sizes}"
    print(line, flush=True)
    results = []
    for part in args.parts:
        results.append(run_part(part, args))
        print(f"{part}: {results[-1]['status']} ({results[-1]['seconds']} s)", flush=True)
    with open(os.path.join(args.out, "gpu_check.json"), "w", encoding="utf-8") as f:
        json.dump({"machine": line, "parts": results}, f, indent=1)
    report = markdown(results, line)
    with open(os.path.join(args.out, "gpu_check.md"), "w", encoding="utf-8") as f:
        f.write(report + "\n")
    print(report)
    return int(any(r["status"] == "failed" for r in results))


if __name__ == "__main__":
    sys.exit(main())
