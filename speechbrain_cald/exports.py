"""What tasks write into an exported inference folder besides the model: the
description they return (`InferenceExport`) and the helpers they share."""

import contextlib
import os
import pickle
import shutil
from dataclasses import dataclass, field

import torch
from speechbrain.dataio.encoder import CategoricalEncoder

from speechbrain_cald import hyperyaml
from speechbrain_cald.text_data import TextTokenizer


@dataclass
class InferenceExport:
    """What a task adds to an exported inference folder (`inference.export_inference_folder`).

    interface: the `speechbrain_cald.inference` class that loads the folder.
    output: speech: what `inference.SpeechEncoder` returns ("log_probs" per frame or
        "pooled" per utterance); None for text models.
    entries: hyperparams.yaml entries (`hyperyaml` nodes) beside the model's.
    loadables: Pretrainer loadables {file stem: hyperparams path}.
    modules: interface modules beyond the model (e.g. "heads").
    """

    interface: str
    output: str | None
    entries: dict = field(default_factory=dict)
    loadables: dict = field(default_factory=dict)
    modules: tuple = ()


def load_weights_strict(module, path):
    """`module`'s whole state from `path` (weights only): a missing or unexpected
    tensor is a ValueError naming the file (SpeechBrain's transfer would only warn and
    answer with the missing weights left random)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: not a readable weights file ({reason})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a weights file (holds a {type(state).__name__})")
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path}: not the weights of this model ({len(missing)} missing, e.g. "
            f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]}): a damaged "
            "or partial export; export it again"
        )


@contextlib.contextmanager
def atomic_folder(folder):
    """Write a folder whole or not at all: the block writes into a fresh sibling
    `<folder>.partial-<pid>`, which then takes the place of `folder` (the old one moved
    aside first and removed after). Interrupted (Ctrl-C, a crash), the old folder stays
    as it was and the partial one is removed or left under its own name; a reader
    never sees old and new files mixed. Yields the path to write into."""
    folder = os.path.abspath(folder)
    partial, old = f"{folder}.partial-{os.getpid()}", f"{folder}.old-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if os.path.exists(folder):
        os.replace(folder, old)
    os.replace(partial, folder)
    shutil.rmtree(old, ignore_errors=True)


UNUSED_LABEL = "<unused_{}>"


def padding_slots(encoder):
    """(size,) bool: True at the outputs `padded_label_encoder` named ``<unused_i>``
    (no training label): an interface never predicts or lists them."""
    unused = {UNUSED_LABEL.format(i) for i in range(len(encoder))}
    return torch.tensor([encoder.ind2lab[i] in unused for i in range(len(encoder))])


def padded_label_encoder(labels, size):
    """A new CategoricalEncoder of exactly `size` labels from a CategoricalEncoder or
    a list of labels (index = position).

    A head may have more outputs than its training set had labels (the recipes size
    heads for the full corpus): the unused outputs get the labels ``<unused_i>``, so
    that the interface's ``expect_len`` check holds and every index decodes.
    """
    if isinstance(labels, CategoricalEncoder):
        labels = [labels.ind2lab[i] for i in range(len(labels))]
    labels = list(labels)
    if len(labels) > size:
        raise ValueError(f"{len(labels)} labels for a head with {size} outputs")
    encoder = CategoricalEncoder()
    for label in labels + [UNUSED_LABEL.format(i) for i in range(len(labels), size)]:
        encoder.add_label(label)
    return encoder


def export_text_tokenizer(folder, model, tokenizer):
    """tokenizer.json of an HF fast tokenizer (or a `tokenizers.Tokenizer`) as the
    folder's `TextTokenizer`; returns (entries, loadables)."""
    tokenizer = getattr(tokenizer, "backend_tokenizer", tokenizer)
    pad_id = model.config.pad_token_id or 0
    TextTokenizer(pad_id, tokenizer).save(os.path.join(folder, "tokenizer.ckpt"))
    node = hyperyaml.new("speechbrain_cald.text_data.TextTokenizer", pad_id=pad_id)
    return {"tokenizer": node}, {"tokenizer": "tokenizer"}
