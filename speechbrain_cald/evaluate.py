"""Evaluate a finished run's best model on another test set, without retraining.

    python -m speechbrain_cald.evaluate <run folder | inference folder> <manifest.csv> \\
        --name <name> [--batch-size 8] [--device cpu] [--label-column head=column] [--int8]
        [--mixer-option max_timescale=50]

The model is the run's exported inference folder (`<run>/inference`: the checkpoint
its test stage tested and exported, `test_checkpoint`), loaded through the inference
interfaces, which read audio as training does. The manifest is a SpeechBrain CSV
(`ID,duration,wav` and the references: `wrd` for ASR, one label column per head for
classifiers, by default the head's name). Results go to a new folder,
`<run>/evaluations/<name>/` (or `--out`): `metrics.json` (the task's metrics as the
test stage computes them, the manifest, the model folder, the row count) and
per-utterance details, written whole or not at all (a bad audio file stops it with
an error naming the file, and leaves no folder). Nothing of the run is written: an
existing results folder, a name that is not a plain folder name, or an `--out` inside
the model's folders is refused. User errors are one line and exit status 2.
"""

import argparse
import json
import os
import re
import sys

import torch
import yaml
from speechbrain.utils.data_utils import batch_pad_right

from speechbrain_cald import inference
from speechbrain_cald.dataprep import read_csv_manifest
from speechbrain_cald.exports import atomic_folder
from speechbrain_cald.tasks import asr_error_stats

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
RESULTS_FOLDER = "evaluations"


def model_folder(path):
    """(inference folder, run folder or None) of a run folder or an inference folder."""
    if os.path.isfile(os.path.join(path, "inference", inference.HPARAMS_FILE)):
        return os.path.join(path, "inference"), path
    return path, None


def results_folder(model, run, name, out=None):
    """Where the results of `name` go: `out`, else `<run>/evaluations/<name>` (the
    inference folder's parent when given one). ValueError for an unusable name, an
    existing folder or one inside the model's folders."""
    if not NAME_PATTERN.match(name):
        raise ValueError(f"--name {name!r}: use letters, digits, '.', '_' and '-' only")
    base = run if run is not None else os.path.dirname(os.path.abspath(model))
    folder = os.path.abspath(out or os.path.join(base, RESULTS_FOLDER, name))
    protected = [os.path.abspath(model)]
    if run is not None:
        protected += [os.path.join(os.path.abspath(run), d) for d in ("save", "best_model")]
    for place in protected:
        if folder == place or folder.startswith(place + os.sep):
            raise ValueError(f"results folder {folder} is inside the model's folder {place}")
    if os.path.exists(folder):
        raise ValueError(f"results folder {folder} exists: choose another --name (or --out)")
    return folder


def read_rows(manifest, columns):
    """The manifest's rows; ValueError naming the file and the missing columns."""
    if not os.path.isfile(manifest):
        raise ValueError(f"manifest {manifest}: not found")
    rows = read_csv_manifest(manifest)
    if not rows:
        raise ValueError(f"manifest {manifest}: no rows")
    missing = [c for c in ("ID", "wav", *columns) if c not in rows[0]]
    if missing:
        raise ValueError(f"manifest {manifest}: no column(s) {missing} (has {list(rows[0])})")
    return rows


def batches(interface, rows, batch_size):
    """(rows, padded waveforms, relative lengths), in manifest order."""
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        padded, lengths = batch_pad_right([interface.load_audio(row["wav"]) for row in chunk])
        yield chunk, padded, lengths.to(padded.device)


def evaluate_asr(interface, rows, batch_size, folder):
    """WER / CER as the test stage computes them; per-utterance alignments in wer.txt."""
    stats = asr_error_stats()
    for chunk, wavs, lens in batches(interface, rows, batch_size):
        hyps, _ = interface.transcribe_batch(wavs, lens)
        ids = [row["ID"] for row in chunk]
        refs = [row["wrd"].split() for row in chunk]
        for metric in stats.values():
            metric.append(ids, [hyp.split() for hyp in hyps], refs)
    with open(os.path.join(folder, "wer.txt"), "w", encoding="utf-8") as f:
        stats["WER"].write_stats(f)
    return {name: metric.summarize("error_rate") for name, metric in stats.items()}


def evaluate_classifier(interface, rows, batch_size, folder, columns):
    """Accuracy per head, their mean and joint accuracy (as the test stage);
    predictions.csv with each row's reference and predicted labels."""
    heads = list(columns)
    hits, joint = dict.fromkeys(heads, 0), 0
    lines = ["ID," + ",".join(f"{h},{h}_predicted" for h in heads)]
    for chunk, wavs, lens in batches(interface, rows, batch_size):
        predicted = {h: [b[0][0] for b in interface.top_k(wavs, lens, h, k=1)] for h in heads}
        for i, row in enumerate(chunk):
            right = [predicted[h][i] == row[columns[h]] for h in heads]
            for head, hit in zip(heads, right):
                hits[head] += hit
            joint += all(right)
            cells = [f"{row[columns[h]]},{predicted[h][i]}" for h in heads]
            lines.append(",".join([row["ID"], *cells]))
    with open(os.path.join(folder, "predictions.csv"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    accs = {f"{h}_acc": hits[h] / len(rows) for h in heads}
    return {**accs, "acc": sum(accs.values()) / len(accs), "joint_acc": joint / len(rows)}


def label_columns(interface, pairs):
    """{head: manifest column}: each head's own name unless `head=column` says."""
    heads = list(interface.hparams.label_encoders)
    columns = {head: head for head in heads}
    for pair in pairs or []:
        head, sep, column = pair.partition("=")
        if not sep or head not in columns:
            raise ValueError(f"--label-column {pair!r}: give head=column, heads: {heads}")
        columns[head] = column
    return columns


def parse_options(pairs):
    """{key: value} from `KEY=VALUE` strings, each value read as YAML (50 -> int,
    null -> None); ValueError naming a pair without '='."""
    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--mixer-option {pair!r}: give KEY=VALUE, e.g. max_timescale=50")
        options[key] = yaml.safe_load(value)
    return options


def evaluate(
    path,
    manifest,
    name,
    batch_size=8,
    device="cpu",
    out=None,
    label_pairs=None,
    int8=False,
    trust_yaml=False,
    mixer_options=None,
):
    """Evaluate the model of `path` (run or inference folder) on `manifest`; returns the
    metrics written to `<results folder>/metrics.json`. `int8`, `trust_yaml` and
    `mixer_options`: as `inference.load_inference_folder`'s."""
    model, run = model_folder(path)
    folder = results_folder(model, run, name, out)
    interface = inference.load_inference_folder(
        model, device=device, int8=int8, trust_yaml=trust_yaml, mixer_options=mixer_options
    )
    if isinstance(interface, inference.ASR):
        rows = read_rows(manifest, ["wrd"])
    elif isinstance(interface, inference.SpeechClassifier):
        columns = label_columns(interface, label_pairs)
        rows = read_rows(manifest, list(columns.values()))
    else:
        raise ValueError(f"{model}: a {type(interface).__name__} folder; evaluate takes speech")
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    with atomic_folder(folder) as partial, torch.no_grad():  # whole, or nothing on error
        if isinstance(interface, inference.ASR):
            metrics = evaluate_asr(interface, rows, batch_size, partial)
        else:
            metrics = evaluate_classifier(interface, rows, batch_size, partial, columns)
        record = {
            **metrics,
            "rows": len(rows),
            "manifest": os.path.abspath(manifest),
            "model": os.path.abspath(model),
            "int8": int8,
            "mixer_options": mixer_options or {},
        }
        with open(os.path.join(partial, "metrics.json"), "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)
    return record


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a run's output folder, or an exported inference folder")
    parser.add_argument("manifest", help="test manifest CSV (ID,duration,wav + references)")
    parser.add_argument("--name", required=True, help="name of this evaluation (a new folder)")
    parser.add_argument(
        "--out", default=None, help="results folder (default: <run>/evaluations/<name>)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--label-column", action="append", metavar="HEAD=COLUMN")
    parser.add_argument("--int8", action="store_true", help="the model's linear layers in int8")
    parser.add_argument(
        "--trust-yaml",
        action="store_true",
        help="load through the folder's hyperparams.yaml (runs the code it names; for "
        "folders exported before cald_inference.json)",
    )
    parser.add_argument(
        "--mixer-option",
        action="append",
        metavar="KEY=VALUE",
        help="a setting of the student's mixers that changes no parameter, over the "
        "folder's own (conversion.set_mixer_options), e.g. max_timescale=50",
    )
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.exit(2, f"error: --batch-size {args.batch_size}: must be >= 1\n")
    try:
        record = evaluate(
            args.model, args.manifest, args.name, args.batch_size, args.device, args.out,
            args.label_column, args.int8, args.trust_yaml, parse_options(args.mixer_option),
        )  # fmt: skip
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
