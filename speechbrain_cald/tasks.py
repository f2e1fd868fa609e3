"""Task objects: everything the Brain needs to know about one task.

A task loads/saves the HF model (plus any heads that are not part of it), runs the
forward pass, computes the task loss and keeps the metric. Batches are SpeechBrain
``PaddedBatch`` objects; the keys each task reads are listed in its docstring.
Speech input: ``sig`` = (wavs (batch, samples), relative lengths). Text input:
``tokens`` = (ids (batch, tokens) right-padded, relative lengths).
"""

import contextlib
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import transformers
from speechbrain.dataio.batch import PaddedData
from speechbrain.dataio.encoder import CTCTextEncoder
from speechbrain.utils.checkpoints import mark_as_transfer, register_checkpoint_hooks
from speechbrain.utils.metric_stats import ErrorRateStats, MetricStats

from speechbrain_cald import conversion, feature_encoder, speech_input
from speechbrain_cald.exports import (
    InferenceExport,
    export_text_tokenizer,
    load_weights_strict,
    padded_label_encoder,
    save_weights,
)
from speechbrain_cald.masks import lengths_to_mask, masked_mean

HEADS_FILE = "heads.pt"


@dataclass
class TaskOutputs:
    """One forward pass: what the task loss and the distillation terms read.

    logits: (batch, time, classes) per frame / token, (batch, classes) per utterance,
    or a dict of the latter (one per head). hidden_states: HF ``hidden_states``
    (index 0 = embedding output). mask: (batch, time) bool, True on valid frames of
    the hidden states. logits_mask: the mask for per-frame logits, None for
    utterance-level logits.
    """

    logits: object
    hidden_states: tuple
    mask: torch.Tensor
    logits_mask: torch.Tensor = None


@register_checkpoint_hooks
class ClassificationHeads(torch.nn.ModuleDict):
    """{name: Linear} heads; an inference folder's heads load strictly (`exports`)."""

    @mark_as_transfer
    def _load_exported(self, path):
        load_weights_strict(self, path, allow_pickle=True)  # the trusted YAML path


def classification_heads(head_sizes, hidden_size):
    """One linear head per label on the pooled hidden state: {name: Linear}."""
    return ClassificationHeads(
        {name: torch.nn.Linear(hidden_size, n) for name, n in head_sizes.items()}
    )


def _labels(batch, key):
    """A per-utterance label key as a (batch,) LongTensor (ints or padded tensors)."""
    value = getattr(batch, key)
    value = value.data if isinstance(value, PaddedData) else value
    return torch.as_tensor(value).view(-1).long()


def _accuracy(predict, target):
    """Per-utterance 0/1 correctness; all heads must be right for stacked labels."""
    correct = predict == target
    return (correct.all(-1) if correct.dim() > 1 else correct).float()


class Task:
    """Base task: loading/saving and the shared speech / text forward passes."""

    auto_class = transformers.AutoModel

    def make_heads(self, config):
        """Trainable modules outside the HF model (None when the model has its head)."""
        return None

    def load(self, folder):
        """(model, heads) from a folder written by `save` or an HF checkpoint.

        A converted student (its config has `cald_student`) is rebuilt by conversion.
        """
        if getattr(transformers.AutoConfig.from_pretrained(folder), "cald_student", None):
            model = conversion.from_pretrained(folder)
        else:
            model = self.auto_class.from_pretrained(folder)
        self.prepare_loaded(model, folder)
        heads = self.make_heads(model.config)
        heads_path = os.path.join(folder, HEADS_FILE)
        if heads is not None and os.path.exists(heads_path):
            heads.load_state_dict(torch.load(heads_path, map_location="cpu", weights_only=True))
        return model, heads

    def prepare_loaded(self, model, folder):
        """Task-specific set-up of a model just loaded from `folder` (default: none)."""

    def save(self, folder, model, heads=None):
        """HF `save_pretrained` folder, heads beside it as `heads.pt`."""
        model.save_pretrained(folder)
        if heads is not None:
            torch.save(heads.state_dict(), os.path.join(folder, HEADS_FILE))

    def forward(self, model, batch, stage, heads=None):
        """Run `model` (and `heads`) on `batch` -> TaskOutputs."""
        raise NotImplementedError

    def shared_front_end(self):
        """A context in which forward passes of several models on one batch (student
        and teacher) may share the work of a frozen front end they have in common."""
        return contextlib.nullcontext()

    def loss(self, outputs, batch):
        """Task loss (scalar) of `outputs` against the batch's targets."""
        raise NotImplementedError

    def metrics(self):
        """Fresh metric accumulators (a dict) for one evaluation stage."""
        raise NotImplementedError

    def update_metrics(self, metrics, outputs, batch):
        """Add one batch to the accumulators from `metrics()`."""
        raise NotImplementedError

    def summarize(self, metrics):
        """Stage metric values as a dict of floats."""
        raise NotImplementedError

    def export_inference(self, folder, model, heads=None, label_encoders=None, tokenizer=None):
        """Write the task's files of an inference folder (vocabulary, heads, label
        encoders, tokenizer) into `folder`; returns its `InferenceExport`."""
        raise NotImplementedError(f"no inference export for {type(self).__name__}")

    @staticmethod
    def text_forward(model, batch):
        """HF text model on ``batch.tokens`` -> (HF output, valid-token mask)."""
        ids, lens = batch.tokens
        mask = lengths_to_mask(lens, ids.shape[1])
        out = model(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True)
        return out, mask


class SpeechTask(Task):
    """A task on raw waveforms: the model's input normalisation travels in its config
    (`speech_input`), the CNN feature encoder is frozen when `freeze_feature_encoder`
    (ref), and every forward pass goes through `speech_input.speech_model_forward`."""

    freeze_feature_encoder = False

    def prepare_loaded(self, model, folder):
        speech_input.ensure_feature_extractor(model, folder)
        if self.freeze_feature_encoder:
            conversion.freeze_front_end(model)  # as the model's family says

    def shared_front_end(self):
        """Equal frozen CNN feature encoders run once per batch
        (`feature_encoder.shared_frozen_features`)."""
        return feature_encoder.shared_frozen_features()

    def save(self, folder, model, heads=None):
        """As `Task.save`, plus the HF ``preprocessor_config.json`` of the model."""
        super().save(folder, model, heads)
        speech_input.feature_extractor_from_config(model.config).save_pretrained(folder)

    @staticmethod
    def speech_forward(model, batch):
        """HF speech model on ``batch.sig`` -> (HF output, valid-frame mask)."""
        wavs, lens = batch.sig
        return speech_input.speech_model_forward(model, wavs, lens, output_hidden_states=True)


class CTCASR(SpeechTask):
    """CTC speech recognition with an HF ``*ForCTC`` model, greedy decoding.

    Batch keys: ``id``, ``sig``, ``tokens`` (label ids, blank excluded), ``words``
    (reference transcript strings). `vocab`: index -> token string;
    `word_delimiter`: the token that separates words; `freeze_feature_encoder`: see
    `Task`.
    """

    auto_class = transformers.AutoModelForCTC

    def __init__(self, vocab, blank_index=0, word_delimiter="|", freeze_feature_encoder=False):
        self.vocab = list(vocab)
        self.blank_index = blank_index
        self.word_delimiter = word_delimiter
        self.freeze_feature_encoder = freeze_feature_encoder

    def forward(self, model, batch, stage, heads=None):
        out, mask = self.speech_forward(model, batch)
        return TaskOutputs(out.logits, out.hidden_states, mask, logits_mask=mask)

    def loss(self, outputs, batch):
        targets, target_lens = batch.tokens
        log_probs = F.log_softmax(outputs.logits.float(), dim=-1).transpose(0, 1)
        return F.ctc_loss(
            log_probs,
            targets,
            outputs.mask.sum(1),
            torch.round(target_lens * targets.shape[1]).long(),
            blank=self.blank_index,
            zero_infinity=True,
        )

    def decode(self, outputs):
        """Greedy CTC: best path, repeats merged, blanks dropped -> word lists."""
        hyps = []
        for path, n in zip(outputs.logits.argmax(-1), outputs.mask.sum(1)):
            ids = torch.unique_consecutive(path[:n]).tolist()
            text = "".join(self.vocab[i] for i in ids if i != self.blank_index)
            hyps.append(text.split(self.word_delimiter) if text else [])
        return [[w for w in hyp if w] for hyp in hyps]

    def metrics(self):
        return asr_error_stats()

    def update_metrics(self, metrics, outputs, batch):
        hyps = self.decode(outputs)
        refs = [words.split() for words in batch.words]
        for stats in metrics.values():
            stats.append(batch.id, hyps, refs)

    def summarize(self, metrics):
        return {name: stats.summarize("error_rate") for name, stats in metrics.items()}

    def export_inference(self, folder, model, heads=None, label_encoders=None, tokenizer=None):
        """The CTC vocabulary (word delimiter -> space) and greedy decoding."""
        encoder = CTCTextEncoder()
        for token in self.vocab:
            encoder.add_label(" " if token == self.word_delimiter else token)
        encoder.save(os.path.join(folder, "tokenizer.ckpt"))
        return InferenceExport("ASR", "log_probs", {"blank_index": self.blank_index})


def asr_error_stats():
    """{"WER": word, "CER": character error stats} as SpeechBrain's ASR recipes keep
    them (CER over each word's characters: word boundaries are not characters)."""
    return {"WER": ErrorRateStats(), "CER": ErrorRateStats(split_tokens=True)}


class UtteranceClassification(SpeechTask):
    """Masked mean pooling of the last hidden state -> one linear head per label.

    `heads`: {batch key: number of classes}, e.g. {"scenario": 18, "action": 46} or
    {"speaker": 1251}. Batch keys: ``id``, ``sig``, and each head's label key.
    Loss: CE averaged over heads. Metrics: accuracy per head, their mean, and joint
    accuracy (all heads right). `freeze_feature_encoder`: see `Task`.
    """

    def __init__(self, heads, freeze_feature_encoder=False):
        self.head_sizes = dict(heads)
        self.freeze_feature_encoder = freeze_feature_encoder

    def make_heads(self, config):
        return classification_heads(self.head_sizes, config.hidden_size)

    def forward(self, model, batch, stage, heads=None):
        out, mask = self.speech_forward(model, batch)
        pooled = masked_mean(out.last_hidden_state, mask, dim=1)
        logits = {k: head(pooled) for k, head in heads.items()}
        return TaskOutputs(logits, out.hidden_states, mask)

    def loss(self, outputs, batch):
        losses = [F.cross_entropy(v.float(), _labels(batch, k)) for k, v in outputs.logits.items()]
        return torch.stack(losses).mean()

    def metrics(self):
        return {k: MetricStats(metric=_accuracy) for k in [*self.head_sizes, "joint"]}

    def update_metrics(self, metrics, outputs, batch):
        preds = {k: v.argmax(-1) for k, v in outputs.logits.items()}
        labels = {k: _labels(batch, k) for k in preds}
        for k in preds:
            metrics[k].append(batch.id, preds[k], labels[k])
        metrics["joint"].append(
            batch.id, torch.stack(list(preds.values()), -1), torch.stack(list(labels.values()), -1)
        )

    def summarize(self, metrics):
        accs = {f"{k}_acc": metrics[k].summarize("average") for k in self.head_sizes}
        return {
            **accs,
            "acc": sum(accs.values()) / len(accs),
            "joint_acc": metrics["joint"].summarize("average"),
        }

    def export_inference(self, folder, model, heads=None, label_encoders=None, tokenizer=None):
        """The heads and one label encoder per head (padded to the head's size)."""
        save_weights(heads.state_dict(), os.path.join(folder, "heads.ckpt"))
        for name, size in self.head_sizes.items():
            padded_label_encoder(label_encoders[name], size).save(
                os.path.join(folder, f"label_encoder_{name}.ckpt")
            )
        settings = {"head_sizes": dict(self.head_sizes), "hidden_size": model.config.hidden_size}
        return InferenceExport("SpeechClassifier", "pooled", settings)


class SequenceClassification(Task):
    """Text classification with an HF ``*ForSequenceClassification`` model.

    Batch keys: ``id``, ``tokens``, ``label``. Metric: accuracy.
    """

    auto_class = transformers.AutoModelForSequenceClassification

    def forward(self, model, batch, stage, heads=None):
        out, mask = self.text_forward(model, batch)
        return TaskOutputs(out.logits, out.hidden_states, mask)

    def loss(self, outputs, batch):
        return F.cross_entropy(outputs.logits.float(), _labels(batch, "label"))

    def metrics(self):
        return {"acc": MetricStats(metric=_accuracy)}

    def update_metrics(self, metrics, outputs, batch):
        metrics["acc"].append(batch.id, outputs.logits.argmax(-1), _labels(batch, "label"))

    def summarize(self, metrics):
        return {"acc": metrics["acc"].summarize("average")}

    def export_inference(self, folder, model, heads=None, label_encoders=None, tokenizer=None):
        """The tokenizer and the label encoder (default labels "0".."n-1")."""
        settings = export_text_tokenizer(folder, model, tokenizer)
        n = model.config.num_labels
        labels = label_encoders or [str(i) for i in range(n)]
        padded_label_encoder(labels, n).save(os.path.join(folder, "label_encoder.ckpt"))
        return InferenceExport("TextClassifier", None, settings)


class PerplexityStats:
    """Token-weighted perplexity: exp(total NLL / total predicted tokens)."""

    def __init__(self):
        self.nll, self.count = 0.0, 0

    def append(self, nll_sum, count):
        self.nll += float(nll_sum)
        self.count += int(count)

    def summarize(self):
        return math.exp(self.nll / max(self.count, 1))

    def write_stats(self, filestream):
        """Totals and perplexity, as the other metric stats write theirs."""
        filestream.write(
            f"tokens: {self.count}\nnll: {self.nll:.4f}\nppl: {self.summarize():.4f}\n"
        )


class CausalLM(Task):
    """Next-token prediction with an HF ``*ForCausalLM`` model; padding masked.

    Batch keys: ``id``, ``tokens``. Metric: perplexity.
    """

    auto_class = transformers.AutoModelForCausalLM

    def forward(self, model, batch, stage, heads=None):
        out, mask = self.text_forward(model, batch)
        return TaskOutputs(out.logits, out.hidden_states, mask, logits_mask=mask)

    @staticmethod
    def _token_nll(outputs, batch):
        """(NLL summed over predicted tokens, number of predicted tokens)."""
        ids = batch.tokens.data
        valid = outputs.mask[:, 1:]
        nll = F.cross_entropy(
            outputs.logits[:, :-1].float().transpose(1, 2), ids[:, 1:], reduction="none"
        )
        return nll.where(valid, 0.0).sum(), valid.sum()

    def loss(self, outputs, batch):
        nll, count = self._token_nll(outputs, batch)
        return nll / count.clamp(min=1)

    def metrics(self):
        return {"ppl": PerplexityStats()}

    def update_metrics(self, metrics, outputs, batch):
        metrics["ppl"].append(*self._token_nll(outputs, batch))

    def summarize(self, metrics):
        return {"ppl": metrics["ppl"].summarize()}

    def export_inference(self, folder, model, heads=None, label_encoders=None, tokenizer=None):
        """The tokenizer."""
        return InferenceExport(
            "TextGenerator", None, export_text_tokenizer(folder, model, tokenizer)
        )
