"""Transcribe (or classify) audio files with an exported CALD inference folder.

    python -m speechbrain_cald.transcribe <folder> <audio>... [--device cuda]

Prints one tab-separated line per file: the path, then the transcript (ASR folder)
or ``head=label`` for each head (classifier folder). Files longer than
``--progress-after`` seconds show a progress bar over the CNN feature chunks.
Unreadable, empty or silent files are reported on stderr; the exit status is 1 if
any file failed.
"""

import argparse
import sys

from speechbrain_cald import inference


def predict(interface, path, progress_after):
    """One output line (without the path) for the audio file `path`."""
    wav = interface.load_audio(path)
    interface.mods.encoder.progress = (
        len(wav) > progress_after * interface.audio_normalizer.sample_rate
    )
    if isinstance(interface, inference.ASR):
        return interface.transcribe_batch(wav.unsqueeze(0), wav.new_ones(1))[0][0]
    heads = interface.hparams.label_encoders
    return "\t".join(f"{h}={interface.classify_batch(wav, head=h)[3][0]}" for h in heads)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="folder written by export_inference_folder")
    parser.add_argument("audio", nargs="+", help="audio files (any format soundfile reads)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--savedir", default=None, help="where to link the model files")
    parser.add_argument("--progress-after", type=float, default=60.0, metavar="SECONDS")
    args = parser.parse_args(argv)
    interface = inference.load_inference_folder(args.folder, args.savedir, args.device)
    failed = False
    for path in args.audio:
        try:
            print(f"{path}\t{predict(interface, path, args.progress_after)}", flush=True)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            failed = True
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
