"""Manifests for GLUE SST-2 / QNLI / QQP (official TSVs) and IMDB (aclImdb tree).

    prepare_glue(data_folder, save_folder, task=task)

GLUE: `<data_folder>/{train,dev}.tsv` with the official header (SST-2 `sentence
label`; QNLI `index question sentence label`; QQP `id qid1 qid2 question1
question2 is_duplicate`). IMDB: `<data_folder>/{train,test}/{pos,neg}/*.txt`.
Writes `<save_folder>/{train,dev,test}.json` with rows {text_a, text_b?, label}.
GLUE test labels are not public, so test = dev (as in the reference, which reports
dev accuracy); IMDB's dev = test likewise. The reported figure is the best
evaluation accuracy over training, as in the reference.
"""

import csv
import glob
import logging
import os

from speechbrain_cald.dataprep import csv_rows, read_text
from speechbrain_cald.text_data import write_manifest

logger = logging.getLogger(__name__)

# task: (text columns, label column, label string -> index)
GLUE_TASKS = {
    "sst2": (["sentence"], "label", {"0": 0, "1": 1}),
    "qnli": (["question", "sentence"], "label", {"entailment": 0, "not_entailment": 1}),
    "qqp": (["question1", "question2"], "is_duplicate", {"0": 0, "1": 1}),
}
TASKS = (*GLUE_TASKS, "imdb")


def text_columns(task):
    """Manifest text columns of `task`: text_a, plus text_b for sentence pairs."""
    n = len(GLUE_TASKS[task][0]) if task in GLUE_TASKS else 1
    return ["text_a", "text_b"][:n]


def read_glue_tsv(path, task):
    """`{id: row}` from one GLUE TSV (UTF-8, with or without a byte-order mark, fields
    of any length); a malformed row raises naming file and line."""
    columns, label_column, labels = GLUE_TASKS[task]
    rows = {}
    reader = csv_rows(path, delimiter="\t", quoting=csv.QUOTE_NONE)
    header = next(reader, None)
    missing = [c for c in [*columns, label_column] if c not in (header or [])]
    if missing:
        raise ValueError(f"{path}:1: header {header} lacks the {task} columns {missing}")
    for fields in reader:
        line = reader.line_num
        if len(fields) != len(header):
            raise ValueError(
                f"{path}:{line}: expected {len(header)} tab-separated fields "
                f"({' '.join(header)}), got {len(fields)}"
            )
        row = dict(zip(header, fields))
        if row[label_column] not in labels:
            raise ValueError(f"{path}:{line}: label {row[label_column]!r} not in {sorted(labels)}")
        texts = {k: row[c] for k, c in zip(("text_a", "text_b"), columns)}
        rows[f"{task}_{os.path.basename(path)[:-4]}_{line}"] = {
            **texts,
            "label": labels[row[label_column]],
        }
    return rows


def read_imdb(folder, split):
    """`{id: row}` from `aclImdb/<split>/{pos,neg}/*.txt` (neg = 0, pos = 1)."""
    rows = {}
    for label, name in enumerate(("neg", "pos")):
        files = sorted(glob.glob(os.path.join(folder, split, name, "*.txt")))
        if not files:
            raise FileNotFoundError(f"No reviews in {os.path.join(folder, split, name)}")
        for path in files:
            text = read_text(path).replace("<br />", " ").strip()
            rows[f"imdb_{split}_{name}_{os.path.basename(path)[:-4]}"] = {
                "text_a": text,
                "label": label,
            }
    return rows


def prepare_glue(data_folder, save_folder, skip_prep=False, task="sst2"):
    """Write the train / dev / test manifests of `task` (one of TASKS) once."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    outputs = {s: os.path.join(save_folder, f"{s}.json") for s in ("train", "dev", "test")}
    if skip_prep or all(os.path.isfile(p) for p in outputs.values()):
        return
    if task == "imdb":
        train, evaluation = read_imdb(data_folder, "train"), read_imdb(data_folder, "test")
    else:
        train = read_glue_tsv(os.path.join(data_folder, "train.tsv"), task)
        evaluation = read_glue_tsv(os.path.join(data_folder, "dev.tsv"), task)
    for split, rows in (("train", train), ("dev", evaluation), ("test", evaluation)):
        write_manifest(outputs[split], rows)
    logger.info("%s: %d train, %d evaluation rows", task, len(train), len(evaluation))
