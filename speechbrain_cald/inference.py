"""Exported inference folders and `speechbrain.inference` interfaces for CALD models.

`export_inference_folder` writes a self-contained folder (no hub access needed to
load it): ``encoder.ckpt`` (the model's weights, safetensors), ``heads.ckpt`` and one
label encoder file per head, ``tokenizer.ckpt`` (CTC vocabulary for ASR,
tokenizer.json for text); text models are written as ``model.ckpt`` (module
``model``). Two descriptions of the same parts (`Part`) sit beside them:
``cald_inference.json`` (plain data + the SHA-256 of every file; `exports`) and
``hyperparams.yaml`` (the HyperPyYAML stock SpeechBrain reads). Every recipe run ends
by writing one for its best model (`speechbrain_cald.experiment.export_inference`,
``<output_folder>/inference``).

Loading executes nothing from the folder by default: `load_inference_folder(folder)`
and ``<Interface>.from_hparams(source=folder)`` read the JSON, build the parts this
module names for its interface, and load safetensors only; a changed, missing or
foreign file is refused with one line. The YAML (which can name any importable
callable: ``!apply:``, ``!new:``) runs only on request: ``trust_yaml=True``, or the stock
``speechbrain.inference.ASR.EncoderASR.from_hparams``, which loads an ASR folder too.
Interfaces: ASR, SpeechClassifier (intent, speaker; embeddings), TextClassifier,
TextGenerator.

Audio reaches the model exactly as in training: files are read by
`speechbrain_cald.audio` (also the folder's ``audio_normalizer``, so stock SpeechBrain
interfaces read them the same way) and batches go through
`speechbrain_cald.speech_input` (the model's input normalisation, a padding-exact CNN).
Long-form: the CNN feature encoder runs in exact chunks (`feature_encoder`), so its
working memory is one chunk's; the converted (linear) encoder then runs on the whole
sequence in one pass.
"""

import functools
import importlib
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass, field

import torch
import transformers
from speechbrain.inference.ASR import EncoderASR
from speechbrain.inference.interfaces import Pretrained
from speechbrain.utils.checkpoints import mark_as_transfer, register_checkpoint_hooks

from speechbrain_cald import conversion, hyperyaml
from speechbrain_cald.audio import SILENCE_PEAK, read_audio
from speechbrain_cald.exports import (
    SAFE_CONFIG,
    atomic_folder,
    load_weights_strict,
    padding_slots,
    read_safe_config,
    save_weights,
    write_safe_config,
)
from speechbrain_cald.feature_encoder import CHUNK_FRAMES
from speechbrain_cald.masks import lengths_to_mask, masked_mean
from speechbrain_cald.models import model_class
from speechbrain_cald.speech_input import speech_model_forward

logger = logging.getLogger(__name__)

HPARAMS_FILE = "hyperparams.yaml"


def _hf_model_from_config(config_dict):
    """Random-weight HF model (student or plain transformer) from a config dict; its
    class must be an HF model class (`models.model_class`), nothing else is called."""
    config = transformers.CONFIG_MAPPING[config_dict["model_type"]].from_dict(config_dict)
    cls = model_class(config.architectures[0])
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise ValueError(f"architectures[0] = {config.architectures[0]!r} is not an HF model")
    if getattr(config, "cald_student", None):
        return conversion.build_student_from_config(config)
    return cls(config)


@dataclass(frozen=True)
class Part:
    """One entry of an exported folder's hparams, described once and rendered both as
    HyperPyYAML (`_yaml_entries`) and as Python objects (`_built_parts`).

    key: the hparams key ("a/b": entry b of the dict a); kind: "new" (an instance),
    "apply" (the callable's result) or "name" (the callable with `kwargs` bound);
    target: the dotted name of the callable, always from this module's code, never
    from the folder; file: the stem of the folder's ``<file>.ckpt`` loaded into it.
    """

    key: str
    kind: str
    target: str
    kwargs: dict = field(default_factory=dict)
    file: str | None = None


def _model_parts(description):
    """The parts every folder has: the model (+ the audio reader for speech), from the
    `model` entry of its description (config, output, sample_rate, chunk_frames); a
    CTC model's padding frames decode as its task's blank (`settings["blank_index"]`)."""
    model = description["model"]
    if not model["output"]:
        return [Part("model", "new", f"{__name__}.TextModel", {"config": model["config"]}, "model")]
    return [
        Part(
            "audio_normalizer",
            "new",
            "speechbrain_cald.audio.AudioReader",
            {"sample_rate": model["sample_rate"]},
        ),
        Part(
            "encoder",
            "new",
            f"{__name__}.SpeechEncoder",
            file="encoder",
            kwargs={
                "output": model["output"],
                "chunk_frames": model["chunk_frames"],
                "blank_index": description["settings"].get("blank_index"),
                "config": model["config"],
            },
        ),
    ]


def _parts(description):
    """Every part of a folder: the model's, then its interface's (`<Interface>.parts`)."""
    interface = INTERFACES[description["interface"]]
    return _model_parts(description) + interface.parts(description["settings"])


def _set(entries, key, value):
    outer, _, inner = key.partition("/")
    if inner:
        entries.setdefault(outer, {})[inner] = value
    else:
        entries[outer] = value


def _yaml_entries(parts):
    """(hyperparams entries, Pretrainer loadables {file stem: hparams path})."""
    entries, loadables = {}, {}
    for part in parts:
        _set(entries, part.key, getattr(hyperyaml, part.kind)(part.target, **part.kwargs))
        if part.file:
            outer, _, inner = part.key.partition("/")
            loadables[part.file] = f"{outer}[{inner}]" if inner else outer
    return entries, loadables


def _built_parts(parts, folder, listed):
    """The hparams dict of `parts`, each file loaded from `folder`: weights strictly and
    from safetensors only, text files through their own loaders. Every file read must
    be in `listed` (the files the description vouches for)."""
    hparams = {}
    for part in parts:
        module, _, attribute = part.target.rpartition(".")
        target = getattr(importlib.import_module(module), attribute)
        value = (
            functools.partial(target, **part.kwargs)
            if part.kind == "name"
            else target(**part.kwargs)
        )
        if part.file:
            name = f"{part.file}.ckpt"
            if name not in listed:
                raise ValueError(f"{folder}: {name} is not listed in {SAFE_CONFIG}; refused")
            path = os.path.join(folder, name)
            if isinstance(value, torch.nn.Module):
                load_weights_strict(value, path)
            else:
                value.load(path)
        _set(hparams, part.key, value)
    return hparams


def load_exported(folder, device="cpu"):
    """The interface an exported folder was written for, built without executing
    anything from the folder: its ``cald_inference.json`` is checked (format, keys,
    every file's SHA-256; `exports.read_safe_config`), the parts are those this module
    names for the interface, weights load from safetensors only. Anything wrong is a
    one-line ValueError naming the folder or file."""
    description = read_safe_config(folder)
    name = description["interface"]
    if name not in INTERFACES:
        raise ValueError(f"{folder}: interface {name!r} is not one of {sorted(INTERFACES)}")
    try:
        hparams = _built_parts(_parts(description), folder, description["files"])
    except (TypeError, KeyError, AttributeError) as err:
        raise ValueError(
            f"{folder}/{SAFE_CONFIG} describes no model this package builds "
            f"({type(err).__name__}: {err}); refused"
        ) from None
    interface = INTERFACES[name]
    modules = {key: hparams[key] for key in interface.MODULES_NEEDED}
    return interface(modules=modules, hparams=hparams, run_opts={"device": device})


def without_padding_slots(logits, encoder):
    """Log-probabilities over the labels of `encoder` only: the padding outputs of a
    head sized beyond its training labels (`exports.padding_slots`) get probability 0."""
    slots = padding_slots(encoder).to(logits.device)
    return logits.float().masked_fill(slots, float("-inf")).log_softmax(-1)


@register_checkpoint_hooks
class SpeechEncoder(torch.nn.Module):
    """HF speech model for inference: (wavs, relative lengths) -> CTC log-probs or
    the masked mean of the last hidden state (utterance embedding).

    Arguments: config: the HF config as a dict; output: "log_probs" or "pooled";
    chunk_frames: CNN chunk size in frames (None: whole-waveform features);
    blank_index: "log_probs": the CTC blank, which padding frames output with
    probability 1 (a decoder that turns relative lengths into frame counts by rounding,
    as SpeechBrain's `ctc_greedy_decode` does, may read one frame past an utterance's
    end: it must decode nothing there). Set ``progress = True`` for a progress bar over
    the CNN chunks.
    """

    def __init__(self, config, output="log_probs", chunk_frames=CHUNK_FRAMES, blank_index=None):
        super().__init__()
        self.model = _hf_model_from_config(config)
        self.output = output
        self.chunk_frames = chunk_frames
        self.blank_index = blank_index
        self.progress = False

    def forward(self, wavs, wav_lens):
        # Without the hidden states of every layer (Task.speech_forward keeps them for
        # distillation): for an hour of audio they would cost (layers + 1) x one.
        out, valid = speech_model_forward(
            self.model, wavs, wav_lens, self.chunk_frames, self.progress
        )
        if self.output == "pooled":
            return masked_mean(out.last_hidden_state, valid, dim=1)
        log_probs = out.logits.float().log_softmax(-1)
        if self.blank_index is not None:
            padding = ~valid[..., None]
            blank = torch.full_like(log_probs[:1, :1], float("-inf"))
            blank[..., self.blank_index] = 0.0
            log_probs = torch.where(padding, blank, log_probs)
        return log_probs

    @mark_as_transfer
    def _load_exported(self, path):
        load_weights_strict(self, path, allow_pickle=True)  # the trusted YAML path


SOURCE_MARKER = "cald_source.txt"  # in a savedir: the folder its links point to


def claim_savedir(source, savedir):
    """Make `savedir` hold the files of `source` only.

    SpeechBrain links a local source's files into the savedir and, finding links
    there already, uses them: a savedir used before for another model would silently
    load that model. The source is recorded in the savedir (`SOURCE_MARKER`); a
    savedir of another source has its links replaced (with a warning), and one that
    holds regular files of another source is refused (ValueError naming it).
    """
    if savedir is None:
        return
    source = os.path.abspath(source) if os.path.isdir(source) else str(source)
    savedir, marker = str(savedir), os.path.join(str(savedir), SOURCE_MARKER)
    if os.path.isdir(savedir):
        previous = None
        if os.path.isfile(marker):
            with open(marker, encoding="utf-8") as f:
                previous = f.read().strip()
        entries = [e for e in os.listdir(savedir) if e != SOURCE_MARKER]
        linked_elsewhere = [
            e
            for e in entries
            if os.path.islink(os.path.join(savedir, e))
            and not os.path.realpath(os.path.join(savedir, e)).startswith(source + os.sep)
        ]
        if previous not in (None, source) or linked_elsewhere:
            kept = [e for e in entries if not os.path.islink(os.path.join(savedir, e))]
            if kept:
                raise ValueError(
                    f"savedir {savedir} holds files of another model ({previous or kept[0]}); "
                    "give this model its own savedir, or empty that one"
                )
            for entry in entries:
                os.unlink(os.path.join(savedir, entry))
            logger.warning(
                "savedir %s held another model (%s): relinked to %s", savedir, previous, source
            )
    os.makedirs(savedir, exist_ok=True)
    with open(marker, "w", encoding="utf-8") as f:
        f.write(source + "\n")


class CheckedSavedirMixin:
    """`from_hparams` that executes nothing from the folder unless asked.

    A local folder this package exported loads through `load_exported` (savedir
    unused: nothing is linked). ``trust_yaml=True`` runs SpeechBrain's own loading of
    its hyperparams.yaml (hub ids, other folders), in a savedir that never holds
    another model's links (`claim_savedir`)."""

    @classmethod
    def from_hparams(
        cls, source, hparams_file=HPARAMS_FILE, savedir=None, trust_yaml=False, **kwargs
    ):
        if not trust_yaml:
            device = (kwargs.get("run_opts") or {}).get("device", "cpu")
            interface = load_exported(str(source), device)
            if not isinstance(interface, cls):
                raise ValueError(
                    f"{source} is a {type(interface).__name__} folder, not {cls.__name__}"
                )
            return interface
        claim_savedir(source, savedir)
        return super().from_hparams(source, hparams_file=hparams_file, savedir=savedir, **kwargs)


class CheckedAudioMixin(CheckedSavedirMixin):
    """`load_audio` for local files through `speechbrain_cald.audio.read_audio` (as
    training reads them), with clear errors naming the file: unreadable, empty,
    non-finite or silent audio raises ValueError.
    """

    def load_audio(self, path, savedir=None):
        """Waveform (samples,) at the model's sample rate."""
        signal = torch.from_numpy(read_audio(str(path), self.audio_normalizer.sample_rate))
        if signal.abs().max() <= SILENCE_PEAK:
            raise ValueError(f"audio file {path} is silent (peak <= {SILENCE_PEAK})")
        return signal.to(self.device)


class ASR(CheckedAudioMixin, EncoderASR):
    """EncoderASR over an exported CTC model: ``transcribe_file``,
    ``transcribe_batch(wavs, wav_lens) -> (transcripts, token ids)``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tokenizer.expect_len(self.mods.encoder.model.config.vocab_size)
        # Folders exported before the encoder carried the blank: its padding frames
        # would decode as whatever they score highest (a padded batch would transcribe
        # differently from each utterance alone). The decoder's blank is the task's.
        blank = self.hparams.decoding_function.keywords["blank_id"]
        if self.mods.encoder.blank_index is None:
            self.mods.encoder.blank_index = blank
        elif self.mods.encoder.blank_index != blank:
            raise ValueError(
                f"encoder blank_index {self.mods.encoder.blank_index} is not the decoder's "
                f"blank_id {blank}: the folder's hyperparams disagree"
            )

    @staticmethod
    def parts(settings):
        """The CTC vocabulary and greedy decoding; settings: {"blank_index"}."""
        return [
            Part("tokenizer", "new", "speechbrain.dataio.encoder.CTCTextEncoder", file="tokenizer"),
            Part(
                "decoding_function",
                "name",
                "speechbrain.decoders.ctc_greedy_decode",
                {"blank_id": int(settings["blank_index"])},
            ),
        ]


class SpeechClassifier(CheckedAudioMixin, Pretrained):
    """Utterance classification (intent, speaker) with one or more heads, and
    utterance embeddings (``encode_batch``), as speechbrain's EncoderClassifier."""

    MODULES_NEEDED = ["encoder", "heads"]
    HPARAMS_NEEDED = ["label_encoders"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for head, encoder in self.hparams.label_encoders.items():
            encoder.expect_len(self.mods.heads[head].out_features)

    @staticmethod
    def parts(settings):
        """The heads and one label encoder per head; settings: {"head_sizes", "hidden_size"}."""
        sizes = {str(k): int(v) for k, v in settings["head_sizes"].items()}
        categorical = "speechbrain.dataio.encoder.CategoricalEncoder"
        return [
            Part(
                "heads",
                "apply",
                "speechbrain_cald.tasks.classification_heads",
                {"head_sizes": sizes, "hidden_size": int(settings["hidden_size"])},
                "heads",
            ),
            *(
                Part(f"label_encoders/{k}", "new", categorical, file=f"label_encoder_{k}")
                for k in sizes
            ),
        ]

    def encode_batch(self, wavs, wav_lens=None):
        """(batch, samples) waveforms -> (batch, hidden) pooled last hidden state."""
        if wavs.dim() == 1:
            wavs = wavs.unsqueeze(0)
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0])
        with torch.no_grad():
            return self.mods.encoder(wavs.float().to(self.device), wav_lens.to(self.device))

    def classify_batch(self, wavs, wav_lens=None, head=None):
        """(log-probs, best score, best index, text labels) for `head` (default: first)."""
        head = head or next(iter(self.hparams.label_encoders))
        with torch.no_grad():
            logits = self.mods.heads[head](self.encode_batch(wavs, wav_lens))
        log_probs = without_padding_slots(logits, self.hparams.label_encoders[head])
        score, index = log_probs.max(dim=-1)
        return log_probs, score, index, self.hparams.label_encoders[head].decode_torch(index)

    def classify_file(self, path, head=None):
        """`classify_batch` of one audio file."""
        return self.classify_batch(self.load_audio(path), head=head)

    def top_k(self, wavs, wav_lens=None, head=None, k=3):
        """The `k` most probable labels of `head` for each utterance, with their
        probabilities: [[(label, probability), ...], ...] (best first)."""
        if int(k) < 1:
            raise ValueError(f"top_k: k must be >= 1, got {k}")
        log_probs = self.classify_batch(wavs, wav_lens, head)[0]
        encoder = self.hparams.label_encoders[head or next(iter(self.hparams.label_encoders))]
        labels = int((~padding_slots(encoder)).sum())
        probs, indices = log_probs.exp().topk(min(k, labels), dim=-1)
        return [
            [(encoder.ind2lab[int(i)], float(p)) for p, i in zip(row_p, row_i)]
            for row_p, row_i in zip(probs, indices)
        ]


def _tokenizer_parts(settings):
    """A text folder's tokenizer (tokenizer.json); settings: {"pad_id"}."""
    return [
        Part(
            "tokenizer",
            "new",
            "speechbrain_cald.text_data.TextTokenizer",
            {"pad_id": int(settings["pad_id"])},
            "tokenizer",
        )
    ]


@register_checkpoint_hooks
class TextModel(torch.nn.Module):
    """HF text model for inference: (ids, relative lengths) -> logits (no KV cache)."""

    def __init__(self, config):
        super().__init__()
        self.model = _hf_model_from_config(config)

    def forward(self, ids, lens):
        mask = lengths_to_mask(lens, ids.shape[1]).long()
        return self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits

    @mark_as_transfer
    def _load_exported(self, path):
        load_weights_strict(self, path, allow_pickle=True)  # the trusted YAML path


class TextClassifier(CheckedSavedirMixin, Pretrained):
    """Sequence classification: ``classify_text(texts)`` -> (log-probs, best score,
    best index, text labels), as EncoderClassifier.classify_batch."""

    MODULES_NEEDED = ["model"]
    HPARAMS_NEEDED = ["tokenizer", "label_encoder"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.hparams.label_encoder.expect_len(self.mods.model.model.config.num_labels)

    @staticmethod
    def parts(settings):
        """The tokenizer and the label encoder; settings: {"pad_id"}."""
        categorical = "speechbrain.dataio.encoder.CategoricalEncoder"
        return [
            *_tokenizer_parts(settings),
            Part("label_encoder", "new", categorical, file="label_encoder"),
        ]

    def classify_text(self, texts):
        """One string or a list of strings."""
        ids, lens = self.hparams.tokenizer.encode([texts] if isinstance(texts, str) else texts)
        with torch.no_grad():
            logits = self.mods.model(ids.to(self.device), lens.to(self.device))
        log_probs = without_padding_slots(logits, self.hparams.label_encoder)
        score, index = log_probs.max(dim=-1)
        return log_probs, score, index, self.hparams.label_encoder.decode_torch(index)


class TextGenerator(CheckedSavedirMixin, Pretrained):
    """Causal LM: ``generate(prompts, max_new_tokens)`` -> continuation(s), through HF
    ``generate()`` with its cache: a converted student decodes recurrently (constant
    time and memory per token), a transformer with its KV cache."""

    MODULES_NEEDED = ["model"]
    HPARAMS_NEEDED = ["tokenizer"]

    @staticmethod
    def parts(settings):
        """The tokenizer; settings: {"pad_id"}."""
        return _tokenizer_parts(settings)

    def generate(self, prompts, max_new_tokens=20, eos_id=None, **generate_kwargs):
        """Continuations of one prompt (str -> str) or a batch (list -> list), left-padded
        together; greedy unless `generate_kwargs` say otherwise (``do_sample=True``,
        ``num_beams=4``, ...); stops at `eos_id`."""
        single = isinstance(prompts, str)
        tokenizer = self.hparams.tokenizer
        ids, mask = tokenizer.encode_prompts([prompts] if single else prompts)
        options = {"do_sample": False, **generate_kwargs}
        with torch.no_grad():
            out = self.mods.model.model.generate(
                ids.to(self.device),
                attention_mask=mask.to(self.device),
                max_new_tokens=max_new_tokens,
                eos_token_id=eos_id,
                pad_token_id=tokenizer.pad_id,
                use_cache=True,
                **options,
            )
        texts = []
        for row in out[:, ids.shape[1] :].tolist():
            if eos_id is not None and eos_id in row:
                row = row[: row.index(eos_id)]
            texts.append(tokenizer.decode(row))
        return texts[0] if single else texts


# The interface classes an exported folder may name (its `interface` entry).
INTERFACES = {cls.__name__: cls for cls in (ASR, SpeechClassifier, TextClassifier, TextGenerator)}


def export_inference_folder(
    folder,
    task,
    model,
    heads=None,
    label_encoders=None,
    tokenizer=None,
    sample_rate=16000,
    chunk_frames=CHUNK_FRAMES,
):
    """Write a self-contained inference folder for a trained `model`.

    Arguments:
        folder: output folder (created).
        task: the task the model was trained for (`tasks.Task`); it writes its own
            files and says which interface loads the folder (`Task.export_inference`).
        model: the HF model (CALD student or transformer), e.g. ``brain.modules.model``.
        heads: the task's heads (UtteranceClassification).
        label_encoders: UtteranceClassification: {head: CategoricalEncoder or list of
            labels in index order, padded with "<unused_i>" to the head size};
            SequenceClassification: one of these (default: "0".."n-1"); CTCASR:
            unused (the vocabulary is ``task.vocab``).
        tokenizer: text tasks: an HF fast tokenizer or a `tokenizers.Tokenizer`.
        sample_rate: speech: the model's input rate; other rates are resampled on load.
        chunk_frames: speech: CNN feature chunk (None: whole waveform).

    Returns the path of the written ``hyperparams.yaml``; `load_inference_folder`
    loads it with the interface named in its ``interface`` entry. The folder is
    written aside and put in place whole (`exports.atomic_folder`).
    """
    with atomic_folder(folder) as partial:
        _write_inference_folder(
            partial, task, model, heads, label_encoders, tokenizer, sample_rate, chunk_frames
        )
    return os.path.join(folder, HPARAMS_FILE)


def _write_inference_folder(
    folder, task, model, heads, label_encoders, tokenizer, sample_rate, chunk_frames
):
    """The files of `export_inference_folder`, written into `folder`."""
    export = task.export_inference(folder, model, heads, label_encoders, tokenizer)
    config = {**model.config.to_dict(), "architectures": [type(model).__name__]}
    speech = bool(export.output)  # speech: waveforms in, through the audio path of training
    description = {
        "interface": export.interface,
        "model": {
            "config": config,
            "output": export.output,
            "sample_rate": sample_rate if speech else None,
            "chunk_frames": chunk_frames if speech else None,
        },
        "settings": export.settings,
    }
    # The wrapper holds the HF model as `.model`; the Pretrainer reads <name>.ckpt.
    module = "encoder" if speech else "model"
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    save_weights(state, os.path.join(folder, f"{module}.ckpt"))
    entries, loadables = _yaml_entries(_parts(description))
    modules = INTERFACES[export.interface].MODULES_NEEDED
    document = {
        "interface": export.interface,
        **entries,
        "modules": {m: hyperyaml.ref(m) for m in modules},
        "pretrainer": hyperyaml.new(
            "speechbrain.utils.parameter_transfer.Pretrainer",
            loadables={k: hyperyaml.ref(v) for k, v in loadables.items()},
        ),
    }
    hyperyaml.dump(
        document,
        os.path.join(folder, HPARAMS_FILE),
        header="Exported by speechbrain_cald.inference.export_inference_folder; "
        "`interface` names the speechbrain_cald.inference class that loads it. "
        f"Loading this file runs what it names: {SAFE_CONFIG} loads the same model "
        "without executing anything",
    )
    write_safe_config(folder, description)


def load_inference_folder(
    folder, savedir=None, device="cpu", trust_yaml=False, int8=False, mixer_options=None
):
    """The interface (ASR, SpeechClassifier, ...) an exported folder was written for.

    By default nothing from the folder is executed (`load_exported`). ``trust_yaml=True``
    loads its hyperparams.yaml through SpeechBrain instead, linking the files into
    `savedir` (default: a new temporary folder; nothing is written into `folder`).
    ``int8=True``: the model's linear layers quantised for CPU inference (`quantize_int8`).
    ``mixer_options``: a dict of settings of a student's mixers that change no parameter
    (`conversion.set_mixer_options`, e.g. ``{"max_timescale": 50}``) over the folder's own.
    ValueError naming the folder when it is missing, not a folder, refused, or names
    no known interface; the device must exist.
    """
    interface = _load_inference_folder(folder, savedir, device, trust_yaml)
    if mixer_options:
        try:
            conversion.set_mixer_options(interface_model(interface), **mixer_options)
        except ValueError as err:
            raise ValueError(f"inference folder {folder}: {err}") from None
    return quantize_int8(interface) if int8 else interface


def interface_model(interface):
    """The HF model (student or transformer) an inference interface runs."""
    return interface.mods[interface.MODULES_NEEDED[0]].model  # the encoder or text model


def quantize_int8(interface):
    """Dynamic int8 quantisation of the interface's model, in place, for CPU inference:
    every `nn.Linear` stores int8 weights and quantises its input per call (PyTorch's
    `quantize_dynamic`, fbgemm kernels); convolutions, norms and the scan stay fp32.
    Speed and accuracy against fp32: docs/BENCHMARKS.md (CPU deployment). Returns the
    interface. ValueError on another device than the CPU."""
    if str(interface.device) != "cpu":
        raise ValueError(f"int8: dynamic quantisation runs on the CPU, not {interface.device}")
    with warnings.catch_warnings():  # torch.ao's eager API: deprecated, still the one for CPU
        warnings.filterwarnings("ignore", "torch.ao.quantization is deprecated")
        torch.ao.quantization.quantize_dynamic(
            interface_model(interface), {torch.nn.Linear}, dtype=torch.qint8, inplace=True
        )
    return interface


def _load_inference_folder(folder, savedir, device, trust_yaml):
    """`load_inference_folder` before quantisation."""
    if not os.path.isdir(folder):
        kind = "a file, not a folder" if os.path.exists(folder) else "not found"
        raise ValueError(f"inference folder {folder}: {kind} (give the folder export wrote)")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: this torch has no CUDA device; use --device cpu")
    if not trust_yaml:
        return load_exported(str(folder), device)
    path = os.path.join(folder, HPARAMS_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"{folder} holds no {HPARAMS_FILE}: not an exported inference folder")
    try:
        name = hyperyaml.load_value(path, "interface")
    except KeyError:
        name = None
    if name not in INTERFACES:
        raise ValueError(
            f"{path}: `interface` is {name!r}, not one of {sorted(INTERFACES)} "
            "(was it written by export_inference_folder?)"
        )
    savedir = savedir or tempfile.mkdtemp(prefix="cald_inference_")
    return INTERFACES[name].from_hparams(
        source=folder, savedir=savedir, run_opts={"device": device}, trust_yaml=True
    )
