"""Token-row manifests for causal LM training from local Pile-style text shards.

    prepare_pile(data_folder, save_folder, tokenizer=..., seq_len=...,
                 train_shards=..., valid_shards=...)

Shards are `.jsonl` or `.jsonl.zst` files (zstandard needed for the latter) with one
`{"text": ...}` document per line, named by glob patterns relative to `data_folder`.
Documents are tokenized with the teacher's tokenizer, joined with its EOS token and
cut into rows of `seq_len + 1` tokens (the reference: 2049-token rows), the tail
dropped. Writes `<save_folder>/{train,dev,test}.json`; dev = test = the held-out
shards (perplexity on held-out text).
"""

import glob
import io
import json
import logging
import os

from speechbrain_cald.text_data import write_manifest

logger = logging.getLogger(__name__)


def open_shard(path):
    """Text stream of a `.jsonl` or `.jsonl.zst` shard."""
    if not path.endswith(".zst"):
        return open(path, encoding="utf-8")
    try:
        import zstandard
    except ImportError as e:
        raise ImportError(f"{path}: reading .zst shards needs `pip install zstandard`") from e
    raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"))
    return io.TextIOWrapper(raw, encoding="utf-8")


def read_documents(path):
    """Yield the `text` of each line; a malformed line raises naming file and line."""
    with open_shard(path) as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f'{path}:{line_number}: not a {{"text": ...}} line') from e


def token_rows(paths, tokenizer, seq_len):
    """Rows of `seq_len + 1` token ids from the documents of `paths`, EOS-joined."""
    row_len, buffer, rows = seq_len + 1, [], []
    for path in paths:
        for document in read_documents(path):
            buffer.extend(tokenizer(document)["input_ids"] + [tokenizer.eos_token_id])
            while len(buffer) >= row_len:
                rows.append(buffer[:row_len])
                buffer = buffer[row_len:]
    return rows


def shard_paths(data_folder, patterns):
    """Sorted files matching the glob `patterns` under `data_folder` (none: error)."""
    paths = sorted(
        {p for pattern in patterns for p in glob.glob(os.path.join(data_folder, pattern))}
    )
    if not paths:
        raise FileNotFoundError(f"No shards match {patterns} in {data_folder}")
    return paths


def prepare_pile(
    data_folder, save_folder, skip_prep=False, *, tokenizer, seq_len, train_shards, valid_shards
):
    """Write the train / dev / test token-row manifests once."""
    outputs = {s: os.path.join(save_folder, f"{s}.json") for s in ("train", "dev", "test")}
    if skip_prep or all(os.path.isfile(p) for p in outputs.values()):
        return
    splits = {}
    for name, patterns in (("train", train_shards), ("dev", valid_shards)):
        rows = token_rows(shard_paths(data_folder, patterns), tokenizer, seq_len)
        if not rows:
            raise ValueError(f"{name} shards {patterns} hold fewer than {seq_len + 1} tokens")
        splits[name] = {f"{name}_{i}": {"ids": row} for i, row in enumerate(rows)}
        logger.info("%s: %d rows of %d tokens", name, len(rows), seq_len + 1)
    splits["test"] = splits["dev"]
    for split, rows in splits.items():
        write_manifest(outputs[split], rows)
