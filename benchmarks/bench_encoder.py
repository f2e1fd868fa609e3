"""CPU benchmark: wav2vec2 teacher (HF, sdpa attention) vs its BiMamba2 CALD student.

Not a test. One run measures, on this machine, and prints (and writes as CSV + PNG):

1. Encoder inference, batch 1, random weights (weights do not change the cost), audio
   of --seconds lengths: total time, its split into CNN feature encoder / mixing layers
   (attention or BiMamba2) / FFN / the rest (feature projection, positional conv, layer
   norms), timed by forward hooks on those submodules: both models in one fresh subprocess
   per length, timed in turn for --repeats rounds (order alternating) after a full-length
   warm-up each, so that the machine's slow and fast spells hit both alike; each time is
   the median of its rounds. Peak memory: the growth of a fresh subprocess's peak resident
   set (VmHWM) during one model's first full-length forward over its resident set after
   building the model, a 1 s warm-up and malloc_trim (every byte touched, allocator caches
   included: an upper bound of the tensors' peak). Next to the measured
   student/teacher speed ratio (teacher time / student time) stands the ideal ratio
   predicted by counting the FLOPs of both models (`model_flops`), for the encoder stack
   (mixing + FFN) and for the whole model, and the length where the student starts to
   win (interpolated between measured lengths). Both models compute their CNN features
   as the inference interface does, in exact chunks of --cnn-chunk frames
   (`speechbrain_cald.speech_input.speech_model_forward`; 0 for the whole waveform at once).
2. One training step on the same batch (`CALDBrain.fit_batch`, CTC, AdamW, CNN frozen
   as in the recipes): teacher fine-tuning (guidance.Std), plain student fine-tuning
   (guidance.Unguided) and the CALD target-guided step (guidance.Target: frozen teacher
   forward + student forward/backward with KD and layerwise distillation), the three
   timed in turn for --repeats rounds after one warm-up step each (medians), beside
   their FLOP ideal (`training_flops`).
3. The SSD scan backends on BiMamba2 shapes: ours vs transformers' Mamba2 PyTorch path
   (`bench_bimamba2.py`'s measurement, reused).

Default: wav2vec2-base dims, 2 threads, audio of 3, 10, 30 and 60 s (the recipes'
utterances are 3-20 s), 5 rounds; `--full` sweeps 10 s to 10 min (a teacher forward on
10 min takes minutes: run it with `--repeats 1`); `--large` uses wav2vec2-large dims;
`--mixer bimamba2_shared` and `--mixer-config '{"d_state": 64}'` time a cheaper student
beside the same teacher.
Every process runs with machine.MALLOC_ENV (see there; `--plain-malloc` to measure without).

    OMP_NUM_THREADS=2 python benchmarks/bench_encoder.py
"""

import argparse
import csv
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC, Wav2Vec2Model

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_bimamba2  # noqa: E402  (sibling script: the SSD backend measurement)
import machine  # noqa: E402  (sibling module: the machine line)

from speechbrain_cald import speech_input  # noqa: E402
from speechbrain_cald.conversion import StudentConfig, convert_to_student  # noqa: E402
from speechbrain_cald.feature_encoder import CHUNK_FRAMES  # noqa: E402
from speechbrain_cald.lobes.mamba2 import Mamba2Config  # noqa: E402
from speechbrain_cald.speech_input import speech_model_forward  # noqa: E402

SAMPLE_RATE = 16000
DEFAULT_SECONDS = [3, 10, 30, 60]
FULL_SECONDS = [10, 30, 60, 120, 300, 600]
LARGE = dict(
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    feat_extract_norm="layer",
    do_stable_layer_norm=True,
)
PARTS = ("cnn", "mixing", "ffn", "other")
KINDS = ("teacher", "student")
VOCAB = ["<blank>", "|"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]


def wav2vec2_config(large: bool) -> Wav2Vec2Config:
    """wav2vec2-base (or -large-lv60) dimensions, dropout and masking off, sdpa."""
    config = Wav2Vec2Config(
        **(LARGE if large else {}),
        vocab_size=len(VOCAB),
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        final_dropout=0.0,
        layerdrop=0.0,
        mask_time_prob=0.0,
        pad_token_id=0,
    )
    config._attn_implementation = "sdpa"
    return config


def build(kind: str, args: argparse.Namespace) -> torch.nn.Module:
    """Random-weight Wav2Vec2Model ("teacher") or its converted student (`student_config`
    of args), in eval mode."""
    torch.manual_seed(0)
    model = Wav2Vec2Model(wav2vec2_config(args.large)).eval()
    speech_input.attach_feature_extractor(model, speech_input.feature_extractor_for())
    if kind == "student":
        model = convert_to_student(model, student_config(args))[0].eval()
    return model


# ---------------------------------------------------------------------------------
# FLOP counts (multiply-add = 2 FLOPs; matmuls and convolutions only).
# ---------------------------------------------------------------------------------


def mixer_flops(cfg: Mamba2Config, frames: int, mixer: str) -> float:
    """One bidirectional mixer layer on `frames` steps with the chunked SSD scan (chunk q):
    the in/out projections (two pairs for bimamba2, one wider in_proj and one out_proj for
    bimamba2_shared), and per direction the depthwise conv and per frame 2*q*n*g (C B^T)
    + 2*q*d_inner (scores @ x) + 4*n*d_inner (chunk states and their read-out). Up to
    `torch_single_chunk` frames the scan is one chunk: q = frames, no chunk states."""
    q, n = cfg.torch_chunk_size, cfg.d_state
    states = 4 * n * cfg.d_inner
    if frames <= cfg.torch_single_chunk:
        q, states = frames, 0
    if mixer == "bimamba2_shared":
        in_width = cfg.d_inner + cfg.conv_dim + 2 * cfg.nheads
        projections = 2 * cfg.d_model * in_width + 2 * cfg.d_inner * cfg.d_model
    else:
        projections = 2 * (2 * cfg.d_model * cfg.in_proj_width + 2 * cfg.d_inner * cfg.d_model)
    scan = 2 * cfg.conv_dim * cfg.d_conv
    scan += 2 * q * n * cfg.ngroups + 2 * q * cfg.d_inner + states
    return (projections + 2 * scan) * frames


def model_flops(
    config: Wav2Vec2Config, mixer: Mamba2Config | None, samples: int, mixer_name: str = ""
) -> dict:
    """FLOPs of one forward pass over `samples` of audio, split as PARTS (+ "frames").

    mixer None: the teacher (attention: Q/K/V/O projections 8*d^2 per frame and
    Q K^T + A V 4*L*d per frame, L frames, full non-causal attention as sdpa computes it);
    otherwise the student whose `mixer_name` layers have `mixer`'s config.
    """
    length, in_ch, cnn = samples, 1, 0.0
    for out_ch, k, s in zip(config.conv_dim, config.conv_kernel, config.conv_stride):
        length = (length - k) // s + 1
        cnn += 2 * length * k * in_ch * out_ch
        in_ch = out_ch
    frames, d, layers = length, config.hidden_size, config.num_hidden_layers
    pos_group = d // config.num_conv_pos_embedding_groups
    other = 2 * frames * in_ch * d + 2 * frames * d * pos_group * config.num_conv_pos_embeddings
    ffn = layers * 4 * frames * d * config.intermediate_size
    if mixer is None:
        mixing = layers * (8 * frames * d * d + 4 * frames * frames * d)
    else:
        mixing = layers * mixer_flops(mixer, frames, mixer_name)
    return {"cnn": cnn, "mixing": mixing, "ffn": ffn, "other": other, "frames": frames}


def student_config(args: argparse.Namespace) -> StudentConfig:
    """The default StudentConfig with --mixer, --mixer-config (e.g. {"d_state": 64}) and
    --keep-attention (layer indices that keep attention: a hybrid student)."""
    default = StudentConfig()
    mixer_config = {**default.mixer_config, **args.mixer_config}
    return StudentConfig(
        mixer=args.mixer, mixer_config=mixer_config, keep_attention=args.keep_attention
    )


def student_mixer_config(config: Wav2Vec2Config, args: argparse.Namespace) -> Mamba2Config:
    """The Mamba2Config `convert_to_student` gives this model's student."""
    return Mamba2Config(d_model=config.hidden_size, **student_config(args).mixer_config)


# ---------------------------------------------------------------------------------
# 1. Inference (per length: a subprocess timing both models in turn, one per model's peak).
# ---------------------------------------------------------------------------------


class SplitTimer:
    """Wall time spent inside groups of submodules, via forward pre-/post-hooks."""

    def __init__(self, groups: dict[str, list[torch.nn.Module]]):
        self.seconds = dict.fromkeys(groups, 0.0)
        self._start = {}
        for name, modules in groups.items():
            for module in modules:
                module.register_forward_pre_hook(self._enter(module))
                module.register_forward_hook(self._leave(name, module))

    def _enter(self, module):
        def hook(*_):
            self._start[module] = time.perf_counter()

        return hook

    def _leave(self, name, module):
        def hook(*_):
            self.seconds[name] += time.perf_counter() - self._start.pop(module)

        return hook

    def reset(self):
        self.seconds = dict.fromkeys(self.seconds, 0.0)


def split_timer(model: torch.nn.Module) -> SplitTimer:
    """A SplitTimer on the model's CNN, mixing layers and FFNs."""
    layers = model.encoder.layers
    return SplitTimer(
        {
            "cnn": [model.feature_extractor],
            "mixing": [layer.attention for layer in layers],
            "ffn": [layer.feed_forward for layer in layers],
        }
    )


def encoder_input(seconds: float, args: argparse.Namespace):
    """(wav, encode): random audio of `seconds` and `encode(model, wav)`, the inference
    interfaces' path (input normalisation, CNN in exact chunks of --cnn-chunk frames)."""
    cnn_chunk = args.cnn_chunk or None

    def encode(model, wav):
        return speech_model_forward(model, wav, torch.ones(1), cnn_chunk)

    return torch.randn(1, int(seconds * SAMPLE_RATE)), encode


def peak_child(kind: str, seconds: float, args: argparse.Namespace) -> dict:
    """{"peak_mib"}: one model's peak memory during its first full-length forward, in
    this fresh process (after building it, a 1 s warm-up and malloc_trim)."""
    model = build(kind, args)
    wav, encode = encoder_input(seconds, args)
    with torch.no_grad():
        encode(model, torch.randn(1, SAMPLE_RATE))
        peak_mib = machine.start_peak_rss()  # (building the student freed a teacher copy)
        encode(model, wav)
        return {"peak_mib": peak_mib()}


def timing_child(seconds: float, args: argparse.Namespace) -> dict:
    """Both models in this process, timed in turn for --repeats rounds (the order
    alternating per round) after a full-length warm-up each, so that the machine's slow
    and fast spells hit both alike -> {f"{kind}_{key}"}: medians of total and per-part
    seconds."""
    models = {kind: build(kind, args) for kind in KINDS}
    timers = {kind: split_timer(model) for kind, model in models.items()}
    wav, encode = encoder_input(seconds, args)
    runs = {kind: [] for kind in KINDS}
    with torch.no_grad():
        for model in models.values():
            encode(model, wav)
        for round_ in range(args.repeats):
            for kind in KINDS if round_ % 2 == 0 else KINDS[::-1]:
                timers[kind].reset()
                start = time.perf_counter()
                encode(models[kind], wav)
                total = time.perf_counter() - start
                split = dict(timers[kind].seconds)
                split["other"] = total - sum(split.values())
                runs[kind].append({"total": total, **split})
    return {
        f"{kind}_{key}": statistics.median(run[key] for run in kind_runs)
        for kind, kind_runs in runs.items()
        for key in kind_runs[0]
    }


def run_child(args: argparse.Namespace, *child: str) -> dict:
    """This script with `--child ...` in a fresh process -> its JSON result."""
    cmd = [sys.executable, __file__, "--threads", str(args.threads), "--repeats"]
    cmd += [str(args.repeats), *(["--large"] if args.large else [])]
    cmd += ["--cnn-chunk", str(args.cnn_chunk), "--mixer-config", json.dumps(args.mixer_config)]
    cmd += ["--mixer", args.mixer, "--keep-attention", *map(str, args.keep_attention)]
    cmd += [*(["--plain-malloc"] if args.plain_malloc else []), "--child", *child]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def crossover(rows: list[dict]) -> str:
    """Audio length where the measured whole-model ratio crosses 1 (log-linear
    interpolation between measured lengths), as text."""
    points = [(r["seconds"], r["ratio_whole"]) for r in rows]
    if points[0][1] >= 1:
        return f"student faster at every measured length (from {points[0][0]:g} s)"
    for (s0, r0), (s1, r1) in zip(points, points[1:]):
        if r0 < 1 <= r1:
            t = (math.log(1) - math.log(r0)) / (math.log(r1) - math.log(r0))
            return f"student faster from about {s0 * (s1 / s0) ** t:.0f} s of audio"
    return f"student not faster up to {points[-1][0]:g} s"


def inference_section(args) -> list[dict]:
    """Section 1: measure, print and return one row per audio length."""
    config = wav2vec2_config(args.large)
    mixer = student_mixer_config(config, args)
    rows = []
    header = (
        f"{'seconds':>7} {'frames':>6} {'model':>7} {'total s':>8} {'cnn s':>7} {'mixing s':>8}"
        f" {'ffn s':>7} {'other s':>7} {'peak MiB':>8} {'GFLOP/s':>7}"
    )
    print("\n1. inference, batch 1\n" + header, flush=True)
    for seconds in args.seconds:
        row = {"seconds": seconds, **run_child(args, "both", str(seconds))}
        for kind in KINDS:
            row[f"{kind}_peak_mib"] = run_child(args, kind, str(seconds))["peak_mib"]
            samples = int(seconds * SAMPLE_RATE)
            flops = model_flops(config, None if kind == "teacher" else mixer, samples, args.mixer)
            row["frames"] = flops["frames"]
            for part in PARTS:
                row[f"{kind}_{part}_gflop"] = flops[part] / 1e9
            total_gflop = sum(flops[p] for p in PARTS) / 1e9
            m = {key: row[f"{kind}_{key}"] for key in ("total", *PARTS, "peak_mib")}
            print(
                f"{seconds:>7g} {flops['frames']:>6} {kind:>7} {m['total']:>8.2f}"
                f" {m['cnn']:>7.2f} {m['mixing']:>8.2f} {m['ffn']:>7.2f}"
                f" {m['other']:>7.2f} {m['peak_mib']:>8.0f}"
                f" {total_gflop / m['total']:>7.1f}",
                flush=True,
            )
        for scope, parts in (("stack", ("mixing", "ffn")), ("whole", PARTS)):
            measured = [sum(row[f"{k}_{p}"] for p in parts) for k in KINDS]
            ideal = [sum(row[f"{k}_{p}_gflop"] for p in parts) for k in KINDS]
            row[f"ratio_{scope}"] = measured[0] / measured[1]
            row[f"ideal_{scope}"] = ideal[0] / ideal[1]
        rows.append(row)

    print(
        "\nstudent/teacher speed ratio (teacher time / student time) vs FLOP ideal"
        f"\n{'seconds':>7} {'stack':>7} {'ideal':>7} {'% ideal':>7} {'whole':>7} {'ideal':>7}"
        f" {'% ideal':>7} {'mem ratio':>9}"
    )
    for r in rows:
        print(
            f"{r['seconds']:>7g} {r['ratio_stack']:>6.2f}x {r['ideal_stack']:>6.2f}x"
            f" {100 * r['ratio_stack'] / r['ideal_stack']:>6.0f}% {r['ratio_whole']:>6.2f}x"
            f" {r['ideal_whole']:>6.2f}x {100 * r['ratio_whole'] / r['ideal_whole']:>6.0f}%"
            f" {r['teacher_peak_mib'] / max(r['student_peak_mib'], 1.0):>8.2f}x"
        )
    print(crossover(rows))
    by_seconds = {r["seconds"]: r for r in rows}
    for a, b in ((60, 600), (60, 120)):
        if a in by_seconds and b in by_seconds:
            ra, rb = by_seconds[a], by_seconds[b]
            print(
                f"student scaling {b:g} s / {a:g} s (linear = {b / a:g}): time"
                f" {rb['student_total'] / ra['student_total']:.2f}, peak memory"
                f" {rb['student_peak_mib'] / max(ra['student_peak_mib'], 1e-9):.2f}"
            )
    return rows


# ---------------------------------------------------------------------------------
# 2. Training step (CALDBrain.fit_batch), in this process.
# ---------------------------------------------------------------------------------


def training_batch(utterances: int, seconds: float):
    """A PaddedBatch of random audio with random CTC targets (the recipes' keys)."""
    from speechbrain.dataio.batch import PaddedBatch

    gen = torch.Generator().manual_seed(1)
    items = [
        {
            "id": f"u{u}",
            "sig": torch.randn(int(seconds * SAMPLE_RATE), generator=gen),
            "tokens": torch.randint(1, len(VOCAB), (int(seconds * 10),), generator=gen),
            "words": "a b",
        }
        for u in range(utterances)
    ]
    return PaddedBatch(items)


def training_section(args) -> list[dict]:
    """Section 2: median fit_batch time of the three kinds of step on one batch."""
    import speechbrain as sb

    from speechbrain_cald import guidance as g
    from speechbrain_cald.brain import CALDBrain
    from speechbrain_cald.losses import CALDLossWeights
    from speechbrain_cald.tasks import CTCASR

    batch = training_batch(args.train_batch, args.train_seconds)
    print(
        f"\n2. training step: batch {args.train_batch} x {args.train_seconds:g} s, CTC,"
        " AdamW, CNN frozen; the three steps in turn, median of fit_batch after 1 warm-up",
        flush=True,
    )
    transformers.utils.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = Wav2Vec2ForCTC(wav2vec2_config(args.large))
        speech_input.attach_feature_extractor(model, speech_input.feature_extractor_for())
        model.save_pretrained(tmp)
        modes = {
            "teacher fine-tuning (std)": g.Std(tmp),
            "student fine-tuning (unguided)": g.Unguided(tmp, student_config(args)),
            "CALD target-guided": g.Target(
                tmp,
                student_config(args),
                CALDLossWeights(task=1.0, kd=1.0, ld=15.0),
            ),
        }
        brains = {}
        for name, guidance in modes.items():
            brain = CALDBrain(
                opt_class=lambda params: torch.optim.AdamW(params, lr=1e-5),
                hparams={"task": CTCASR(VOCAB, freeze_feature_encoder=True), "guidance": guidance},
                run_opts={"device": "cpu", "noprogressbar": True},
            )
            brain.on_fit_start()  # optimizer, layer-map check
            brain.modules.train()
            brain.on_stage_start(sb.Stage.TRAIN)
            brains[name] = brain
        times = {name: [] for name in brains}
        names = list(brains)
        for round_ in range(1 + args.repeats):  # round 0: the warm-up step of each
            turn = round_ % len(names)  # the order rotates
            for name in names[turn:] + names[:turn]:
                brains[name].step += 1
                start = time.perf_counter()
                brains[name].fit_batch(batch)
                times[name].append(time.perf_counter() - start)
        rows = [{"step": name, "seconds": statistics.median(t[1:])} for name, t in times.items()]
        del brains
    plain = rows[1]["seconds"]
    ideal = training_flops(args)
    print(f"  {'':<32} {'time':>9}  {'ratio':>5}  FLOP ideal (ratio)")
    for row, flops in zip(rows, ideal):
        row["vs_student_step"] = row["seconds"] / plain
        row["ideal_vs_student_step"] = flops / ideal[1]
        print(
            f"  {row['step']:<32} {row['seconds']:7.2f} s  {row['vs_student_step']:5.2f}x"
            f"  {row['ideal_vs_student_step']:5.2f}x"
        )
    return rows


def training_flops(args) -> list[float]:
    """FLOPs of the teacher step, the plain student step and the CALD step on the
    training batch: the frozen CNN's forward once, the rest forward + backward (3x its
    forward); the CALD step adds the teacher's forward without the CNN (shared)."""
    config = wav2vec2_config(args.large)
    samples = int(args.train_seconds * SAMPLE_RATE)
    mixer = student_mixer_config(config, args)
    teacher, student = (model_flops(config, m, samples, args.mixer) for m in (None, mixer))
    trained = ("mixing", "ffn", "other")

    def step(flops):
        return args.train_batch * (flops["cnn"] + 3 * sum(flops[p] for p in trained))

    teacher_forward = args.train_batch * sum(teacher[p] for p in trained)
    return [step(teacher), step(student), step(student) + teacher_forward]


# ---------------------------------------------------------------------------------
# 3. SSD backends, output files, machine.
# ---------------------------------------------------------------------------------


def ssd_section(args) -> dict:
    """Section 3: bench_bimamba2's per-subprocess measurement at --ssd-frames."""
    print(
        f"\n3. SSD backends, one BiMamba2 (d_model {bench_bimamba2.D_MODEL}), batch 1, "
        f"{args.threads} threads",
        flush=True,
    )
    peak = bench_bimamba2.matmul_gflops()
    print(f"fp32 matmul 2048^3: {peak:.1f} GFLOP/s")
    results = {
        (impl, frames): bench_bimamba2.measure(impl, frames, args.threads, args.repeats)
        for frames in args.ssd_frames
        for impl in ("ours", "transformers")
    }
    bench_bimamba2.report(results, peak)
    return results


def write_outputs(rows: list[dict], train: list[dict], out: Path) -> None:
    """CSV of sections 1-2 and a PNG: time vs audio length, measured vs ideal ratio."""
    out.mkdir(parents=True, exist_ok=True)
    if rows:
        with open(out / "bench_encoder_inference.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    if train:
        with open(out / "bench_encoder_training.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(train[0]))
            writer.writeheader()
            writer.writerows(train)
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seconds = [r["seconds"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for kind, style in (("teacher", "-"), ("student", "--")):
        left.plot(seconds, [r[f"{kind}_total"] for r in rows], "k" + style, label=f"{kind} total")
        for part, color in zip(PARTS[:3], ("tab:gray", "tab:red", "tab:blue")):
            values = [r[f"{kind}_{part}"] for r in rows]
            left.plot(seconds, values, style, color=color, label=f"{kind} {part}")
    left.set(xscale="log", yscale="log", xlabel="audio (s)", ylabel="time (s)")
    left.legend(fontsize=7)
    for scope, color in (("stack", "tab:red"), ("whole", "k")):
        right.plot(seconds, [r[f"ratio_{scope}"] for r in rows], "o-", color=color,
                   label=f"{scope} measured")  # fmt: skip
        right.plot(seconds, [r[f"ideal_{scope}"] for r in rows], ":", color=color,
                   label=f"{scope} FLOP ideal")  # fmt: skip
    right.axhline(1.0, color="gray", lw=0.5)
    right.set(xscale="log", xlabel="audio (s)", ylabel="teacher time / student time")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "bench_encoder.png", dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=None)
    parser.add_argument("--full", action="store_true", help=f"audio lengths {FULL_SECONDS}")
    parser.add_argument("--large", action="store_true", help="wav2vec2-large dims")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds")
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--train-seconds", type=float, default=4.0)
    parser.add_argument("--ssd-frames", type=int, nargs="+", default=[3000])
    parser.add_argument("--sections", default="123", help="which sections to run")
    parser.add_argument("--out", type=Path, default=Path("bench_encoder_out"))
    parser.add_argument(
        "--cnn-chunk",
        type=int,
        default=CHUNK_FRAMES,
        help="CNN feature chunk in frames for both models (0: whole waveform)",
    )
    parser.add_argument("--plain-malloc", action="store_true", help="no MALLOC_ENV")
    parser.add_argument(
        "--mixer-config",
        type=json.loads,
        default={},
        help="student mixer overrides as JSON, e.g. '{\"d_state\": 64}' (a cheaper student)",
    )
    parser.add_argument(
        "--mixer",
        default="bimamba2",
        choices=["bimamba2", "bimamba2_shared"],
        help="the student's mixer: the paper's BiMamba2 or the shared-projection one",
    )
    machine.add_keep_attention(
        parser, "layers whose attention the student keeps (a hybrid student; default none)"
    )
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    malloc = machine.use_malloc_env(args.plain_malloc)
    torch.set_num_threads(args.threads)
    if args.child:
        kind, seconds = args.child[0], float(args.child[1])
        result = timing_child(seconds, args) if kind == "both" else peak_child(kind, seconds, args)
        print(json.dumps(result))
        return
    args.seconds = args.seconds or (FULL_SECONDS if args.full else DEFAULT_SECONDS)
    print(machine.describe())
    print(f"dims: wav2vec2-{'large' if args.large else 'base'}; command: {' '.join(sys.argv)}")
    print(malloc)
    start = time.perf_counter()
    rows = inference_section(args) if "1" in args.sections else []
    train = training_section(args) if "2" in args.sections else []
    if "3" in args.sections:
        ssd_section(args)
    write_outputs(rows, train, args.out)
    print(f"\nwrote {args.out}/; {time.perf_counter() - start:.0f} s; {machine.describe()}")


if __name__ == "__main__":
    main()
