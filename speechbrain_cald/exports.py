"""The files of an exported inference folder besides the interface's own: what a task
returns (`InferenceExport`), the weights format (safetensors), the plain description
that loads without executing anything (`SAFE_CONFIG`), and the helpers tasks share.

A folder holds its weights as safetensors under SpeechBrain's ``<name>.ckpt`` file names
(the Pretrainer of the hyperparams.yaml path looks for those names), the CTC vocabulary
and label encoders as SpeechBrain's text files, a tokenizer as tokenizer.json, and
`SAFE_CONFIG`: the interface, the HF config, the task's settings and the SHA-256 of
every other file, so that a changed file is refused instead of loaded.
"""

import contextlib
import hashlib
import json
import os
import pickle
import shutil
from dataclasses import dataclass, field

import safetensors.torch
import torch
from safetensors import SafetensorError
from speechbrain.dataio.encoder import CategoricalEncoder

from speechbrain_cald.text_data import TextTokenizer

SAFE_CONFIG = "cald_inference.json"
SAFE_FORMAT = "speechbrain_cald.inference/1"
SAFE_KEYS = {"format", "interface", "model", "settings", "files"}
MODEL_KEYS = {"config", "output", "sample_rate", "chunk_frames"}


@dataclass
class InferenceExport:
    """What a task adds to an exported inference folder (`inference.export_inference_folder`).

    interface: the `speechbrain_cald.inference` class that loads the folder.
    output: speech: what `inference.SpeechEncoder` returns ("log_probs" per frame or
        "pooled" per utterance); None for text models.
    settings: plain values (numbers, strings, dicts of them) the interface builds
        its parts from (`inference.<Interface>.parts`), e.g. {"blank_index": 0}.
    """

    interface: str
    output: str | None
    settings: dict = field(default_factory=dict)


def save_weights(state, path):
    """A state dict as a safetensors file (each tensor its own contiguous copy:
    safetensors refuses tensors that share storage, as tied embeddings do)."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    safetensors.torch.save_file(tensors, str(path))


def read_weights(path, allow_pickle=False):
    """{name: tensor} from a safetensors file; a weights-only torch pickle too when
    `allow_pickle` (folders loaded through their YAML, which the user trusts anyway).
    Anything else is a ValueError naming the file. Read into memory, not mapped: a
    mapped file rewritten later (a new export in place) would crash the process."""
    try:
        with open(path, "rb") as f:
            return safetensors.torch.load(f.read())
    except SafetensorError as err:
        if not allow_pickle:
            raise ValueError(
                f"{path}: not a safetensors weights file ({err}); refused (only "
                "safetensors load without trust_yaml)"
            ) from None
    except OSError as err:
        raise ValueError(f"{path}: not a readable weights file ({err})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: not a readable weights file ({reason})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a weights file (holds a {type(state).__name__})")
    return state


def load_weights_strict(module, path, allow_pickle=False):
    """`module`'s whole state from `path` (`read_weights`): a missing or unexpected
    tensor is a ValueError naming the file (SpeechBrain's transfer would only warn and
    answer with the missing weights left random)."""
    state = read_weights(path, allow_pickle)
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
    folder's `TextTokenizer`; returns its settings ({"pad_id": ...})."""
    tokenizer = getattr(tokenizer, "backend_tokenizer", tokenizer)
    pad_id = model.config.pad_token_id or 0
    TextTokenizer(pad_id, tokenizer).save(os.path.join(folder, "tokenizer.ckpt"))
    return {"pad_id": pad_id}


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_safe_config(folder, description):
    """`SAFE_CONFIG` in `folder`: `description` (format, interface, model, settings)
    plus the SHA-256 of every other file now in the folder."""
    files = {
        name: _sha256(os.path.join(folder, name))
        for name in sorted(os.listdir(folder))
        if name != SAFE_CONFIG and os.path.isfile(os.path.join(folder, name))
    }
    with open(os.path.join(folder, SAFE_CONFIG), "w", encoding="utf-8") as f:
        json.dump({"format": SAFE_FORMAT, **description, "files": files}, f, indent=1)


def read_safe_config(folder):
    """The description `write_safe_config` wrote, after checking that every file it
    lists is there unchanged. A missing, unreadable or unknown description, or a
    missing or changed file, is a one-line ValueError naming the folder and file."""
    path = os.path.join(folder, SAFE_CONFIG)
    try:
        with open(path, encoding="utf-8") as f:
            description = json.load(f)
    except FileNotFoundError:
        raise ValueError(
            f"{folder} holds no {SAFE_CONFIG} (not exported by this package, or exported "
            "before it wrote one): loading its hyperparams.yaml would run the code it "
            "names; pass trust_yaml=True if you trust the folder"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable description ({err}); refused") from None
    if not isinstance(description, dict) or set(description) != SAFE_KEYS:
        keys = sorted(description) if isinstance(description, dict) else type(description)
        raise ValueError(f"{path}: keys {keys}, expected {sorted(SAFE_KEYS)}; refused")
    if description["format"] != SAFE_FORMAT:
        raise ValueError(f"{path}: format {description['format']!r}, not {SAFE_FORMAT!r}")
    model = description["model"]
    if not isinstance(model, dict) or set(model) != MODEL_KEYS:
        raise ValueError(f"{path}: `model` must hold exactly {sorted(MODEL_KEYS)}; refused")
    files = description["files"]
    if not isinstance(files, dict):
        raise ValueError(f"{path}: `files` is not a mapping; refused")
    for name, digest in files.items():
        target = os.path.join(folder, str(name))
        if os.path.basename(str(name)) != name or name in ("", ".", ".."):
            raise ValueError(f"{path}: file name {name!r} is not a plain name; refused")
        if not os.path.isfile(target):
            raise ValueError(f"{folder}: {name} is missing; refused (a partial copy?)")
        if _sha256(target) != digest:
            raise ValueError(
                f"{folder}: {name} changed since export (SHA-256 differs); refused (a "
                "tampered or damaged folder: export it again)"
            )
    return description
