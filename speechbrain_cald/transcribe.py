"""Transcribe (or classify) audio files with an exported CALD inference folder.

    python -m speechbrain_cald.transcribe <folder> <audio>... [--device cuda]

Prints one tab-separated line per file: the path, then the transcript (ASR folder)
or, for each head of a classifier folder, ``head=label (p=0.93)`` followed by the
next ``--top-k`` - 1 labels with their probabilities. Files longer than
``--progress-after`` seconds show a progress bar over the CNN feature chunks.
Unreadable, empty, damaged (NaN/inf) or silent files are reported on stderr, and
the exit status is 1 if any file failed; a bad folder or device is an error (status 2).
The folder loads without executing anything from it (`inference.load_exported`); a
changed or foreign file in it is refused (status 2). ``--trust-yaml`` loads it through
its hyperparams.yaml instead.
"""

import argparse
import sys

from speechbrain_cald import inference


def predict(interface, path, progress_after, top_k=1):
    """One output line (without the path) for the audio file `path`."""
    wav = interface.load_audio(path)
    interface.mods.encoder.progress = (
        len(wav) > progress_after * interface.audio_normalizer.sample_rate
    )
    if isinstance(interface, inference.ASR):
        return interface.transcribe_batch(wav.unsqueeze(0), wav.new_ones(1))[0][0]
    fields = []
    for head in interface.hparams.label_encoders:
        best = interface.top_k(wav, head=head, k=top_k)[0]
        fields.append(f"{head}={best[0][0]} (p={best[0][1]:.2f})")
        fields += [f"{label} (p={prob:.2f})" for label, prob in best[1:]]
    return "\t".join(fields)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="folder written by export_inference_folder")
    parser.add_argument("audio", nargs="+", help="audio files (any format soundfile reads)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument(
        "--savedir",
        default=None,
        help="--trust-yaml only: where SpeechBrain links the model files (default: a new "
        "temporary folder; never the exported folder)",
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="CPU: run the model's linear layers in int8 (dynamic quantisation; speed and "
        "accuracy in docs/BENCHMARKS.md, CPU deployment)",
    )
    parser.add_argument(
        "--trust-yaml",
        action="store_true",
        help="load the folder through its hyperparams.yaml, which runs the code it names "
        "(default: its cald_inference.json, which runs nothing; needed for folders "
        "exported before that file existed)",
    )
    parser.add_argument(
        "--progress-after",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="show a progress bar over the CNN chunks for files longer than this (default 60)",
    )
    parser.add_argument(
        "--top-k",
        type=int,
        default=1,
        metavar="K",
        help="classifier folders: print the K most probable labels per head (default 1)",
    )
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.exit(2, f"error: --top-k {args.top_k}: must be >= 1\n")
    try:
        interface = inference.load_inference_folder(
            args.folder, args.savedir, args.device, trust_yaml=args.trust_yaml, int8=args.int8
        )
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    if not isinstance(interface, (inference.ASR, inference.SpeechClassifier)):
        kind = type(interface).__name__
        parser.exit(
            2, f"error: {args.folder} is a {kind} folder; transcribe takes speech folders\n"
        )
    failed = False
    for path in args.audio:
        try:
            line = predict(interface, path, args.progress_after, args.top_k)
            print(f"{path}\t{line}", flush=True)
        except ValueError as err:
            message = str(err) if str(path) in str(err) else f"{path}: {err}"
            print(f"error: {message}", file=sys.stderr)
            failed = True
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
