"""Benchmark (not a test): FSDD digit-string ASR on inputs far longer than training's.

Finished FSDD ASR runs (`recipes/FSDD/train_asr.py hparams/whisper_asr.yaml`, strings of
3-5 digits, 1-4 s) are evaluated without retraining on long digit strings of about
`--seconds` each (one speaker's recordings joined by silent gaps of up to 0.2 s, as in
training), made from the recordings of one split (`--split`: test by default; dev for
choosing settings), `--count` strings per length, seeded: the same strings everywhere.
For each model and length it prints the WER / CER (`speechbrain_cald.evaluate`, the
exported inference folder, the whole string in one pass) and, from a fresh process per
(model, length), the encoder's time and peak memory on one string.

    OMP_NUM_THREADS=2 python benchmarks/bench_fsdd_long.py --fsdd ../shared/data/fsdd \\
        --runs results/bench_fsdd_whisper/asr --modes std target hybrid unguided \\
        [--seeds 1986] [--seconds 3 10 30 60 120] [--split test] [--out results/fsdd_long]
        [--mixer-option max_timescale=50]  # over the exported students' own settings
        [--trust-yaml]   # folders exported before cald_inference.json

`--runs` is an `--output_root` of the recipe (runs in `<runs>/<mode>/<seed>/`); the
split rule is the recipe's (`fsdd_prepare.split_rows`: the official test split 0-4
when present).
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "recipes", "FSDD"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fsdd_prepare  # noqa: E402  (the recipe's split rule and audio helpers)
import machine  # noqa: E402

from speechbrain_cald import evaluate, inference  # noqa: E402
from speechbrain_cald.dataprep import (  # noqa: E402
    read_audio,
    read_csv_manifest,
    write_audio,
    write_csv_manifest,
)

RATE = 8000  # FSDD's
SAMPLE_RATE = 16000  # the models'


def long_strings(fsdd, split, seconds, count, out, max_gap=0.2, seed=0):
    """`count` strings of at least `seconds` s per length from `split`'s recordings:
    a manifest per length, `{seconds: csv path}` (column `ends`: where each recording
    ends, in samples at FSDD's 8 kHz)."""
    rows = fsdd_prepare.split_rows(os.path.abspath(fsdd), 5)[split]
    speakers = sorted({r["speaker"] for r in rows})
    audio = {r["ID"]: read_audio(r["wav"], RATE) for r in rows}
    manifests = {}
    for length in seconds:
        rng = np.random.default_rng([seed, int(length * 10)])
        manifest = []
        for n in range(count):
            speaker = speakers[n % len(speakers)]
            pool = [r for r in rows if r["speaker"] == speaker]
            pieces, words, ends, total = [], [], [], 0
            while total < length * RATE:
                clip = pool[rng.integers(len(pool))]
                if pieces:
                    pieces.append(np.zeros(int(rng.uniform(0.0, max_gap) * RATE), np.float32))
                pieces.append(audio[clip["ID"]])
                words.append(fsdd_prepare.DIGIT_WORDS[int(clip["digit"])])
                total = sum(len(p) for p in pieces)
                ends.append(total)
            uid = f"{split}_{length:g}s_{n}_{speaker}"
            wav = os.path.join(out, "audio", f"{uid}.wav")
            write_audio(wav, np.concatenate(pieces), RATE)
            manifest.append(
                {
                    "ID": uid,
                    "duration": total / RATE,
                    "wav": wav,
                    "wrd": " ".join(words),
                    "ends": " ".join(map(str, ends)),  # each recording's end, in samples
                }
            )
        manifests[length] = os.path.join(out, f"{split}_{length:g}s.csv")
        write_csv_manifest(manifests[length], manifest)
    return manifests


def child(folder, wav, trust_yaml, mixer_options):
    """One encoder pass on `wav` in this process: JSON {seconds, peak_mib}: the peak
    resident memory during the pass above the resident memory before it
    (`machine.start_peak_rss`, so loading the model does not hide it)."""
    interface = inference.load_inference_folder(
        folder, trust_yaml=trust_yaml == "yaml", mixer_options=json.loads(mixer_options)
    )
    signal = interface.load_audio(wav)[None]
    with torch.no_grad():
        interface.encode_batch(signal[:, :SAMPLE_RATE], torch.ones(1))  # warm-up
        peak_mib = machine.start_peak_rss()
        start = time.perf_counter()
        interface.encode_batch(signal, torch.ones(1))
        seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_mib": peak_mib()}))


def measure(folder, wav, trust_yaml, mixer_options):
    """`child` in a fresh process (its peak memory is this pass's alone)."""
    trust = "yaml" if trust_yaml else "safe"
    cmd = [sys.executable, __file__, "--child", folder, wav, trust, json.dumps(mixer_options)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        return {"failed": proc.stderr.strip().splitlines()[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fsdd", help="FSDD root (recordings/)")
    parser.add_argument("--runs", help="the recipe's output_root holding <mode>/<seed>/")
    parser.add_argument("--modes", nargs="+", default=["std", "target", "hybrid", "unguided"])
    parser.add_argument("--seeds", nargs="+", default=["1986"])
    parser.add_argument("--seconds", nargs="+", type=float, default=[3, 10, 30, 60, 120])
    parser.add_argument("--count", type=int, default=4, help="strings per length")
    parser.add_argument("--split", default="test", choices=["test", "dev"])
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "fsdd_long"))
    parser.add_argument(
        "--mixer-option",
        action="append",
        metavar="KEY=VALUE",
        help="students only: a setting of their mixers over the exported one (evaluate's)",
    )
    parser.add_argument(
        "--trust-yaml", action="store_true", help="folders from before cald_inference.json"
    )
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(*args.child)
    if not (args.fsdd and args.runs):
        parser.error("--fsdd and --runs are required")
    mixer_options = evaluate.parse_options(args.mixer_option)
    print(machine.describe(), flush=True)
    manifests = long_strings(args.fsdd, args.split, args.seconds, args.count, args.out)
    print(f"{'run':18} {'length':>7} {'WER':>6} {'CER':>6} {'enc s':>7} {'peak MiB':>8}")
    results = {}
    for mode in args.modes:
        for seed in args.seeds:
            run = os.path.join(args.runs, mode, str(seed))
            options = {} if mode == "std" else mixer_options  # a transformer has no mixers
            for length, manifest in manifests.items():
                name = f"long_{args.split}_{length:g}s_{time.strftime('%Y%m%d%H%M%S')}"
                metrics = evaluate.evaluate(
                    run, manifest, name, 1, trust_yaml=args.trust_yaml, mixer_options=options
                )
                first_wav = read_csv_manifest(manifest)[0]["wav"]
                folder = os.path.join(run, "inference")
                cost = measure(folder, first_wav, args.trust_yaml, options)
                results[f"{mode}/{seed}/{length:g}"] = {**metrics, **cost}
                shown = (
                    f"{cost['seconds']:7.2f} {cost['peak_mib']:8.0f}"
                    if "seconds" in cost
                    else cost["failed"]
                )
                print(
                    f"{mode + '/' + str(seed):18} {length:6g}s {metrics['WER']:6.1f} "
                    f"{metrics['CER']:6.1f} {shown}",
                    flush=True,
                )
    with open(os.path.join(args.out, f"results_{args.split}.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
