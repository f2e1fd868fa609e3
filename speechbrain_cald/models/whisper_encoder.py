"""Whisper's encoder on its own, as a CALD source model (teacher) and student base.

HF's `WhisperEncoder` takes exactly 30 s of log-mel frames (3000) and no mask: the
model was trained on 30 s windows. Here the encoder runs on any length, padded
batches included:

- input: per-utterance log-mel features (`speech_input.log_mel`, as `WhisperFeatureExtractor` with
  `padding="longest"` computes them for one utterance), `(batch, 80, mel frames)`,
  padding 0, with a mel-frame mask;
- conv1 -> GELU -> (padding zeroed) -> conv2 -> GELU: a padded utterance gives the
  frames it gives alone (conv2 reads one frame past the end: zero, as alone);
- positions: the first T rows of the sinusoidal table, fixed as in Whisper; past its
  1500 rows (30 s) the same sinusoids continue (`sinusoids`), so teacher and student
  accept any length (a student converted with positions "drop" adds none);
- the encoder layers get a key-padding mask; the final LayerNorm as in Whisper.

`CALDWhisperEncoderConfig` (model_type "whisper_encoder") is a WhisperConfig;
`WhisperEncoderModel` (hidden states) and `WhisperEncoderForCTC` (+ a CTC head) are
registered with transformers' AutoModel / AutoModelForCTC. `from_whisper` builds one
from a Whisper checkpoint (hub id or folder; its encoder weights, bit-identical).
"""

import math

import torch
import transformers
from torch import nn
from transformers import WhisperConfig
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutput
from transformers.models.whisper.modeling_whisper import WhisperEncoder, WhisperPreTrainedModel

from speechbrain_cald.masks import counts_to_mask
from speechbrain_cald.speech_input import whisper_frames


class CALDWhisperEncoderConfig(WhisperConfig):
    """A WhisperConfig for the encoder alone (decoder fields unused)."""

    model_type = "whisper_encoder"

    def __init__(self, **kwargs):
        kwargs.pop("model_type", None)  # a Whisper config's dict says "whisper"
        super().__init__(**kwargs)


def sinusoids(length, channels, max_timescale=10000.0):
    """Whisper's sinusoidal position table `(length, channels)`: [sin | cos] of
    position * 10000^(-i / (channels/2 - 1))."""
    increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-increment * torch.arange(channels // 2, dtype=torch.float64))
    scaled = torch.arange(length, dtype=torch.float64)[:, None] * inv_timescales[None, :]
    return torch.cat([scaled.sin(), scaled.cos()], dim=1).float()


class WhisperEncoderModel(WhisperPreTrainedModel):
    """Whisper's encoder on inputs of any length with a padding mask.

    forward(input_features `(batch, mels, frames)`, attention_mask `(batch, frames)`
    0/1 over mel frames) -> BaseModelOutput (last_hidden_state `(batch, frames / 2,
    d_model)`, hidden_states when asked: the embedding output and each layer's).
    """

    config_class = CALDWhisperEncoderConfig
    main_input_name = "input_features"

    def __init__(self, config):
        super().__init__(config)
        self.encoder = WhisperEncoder(config)
        self.post_init()

    @property
    def base_model(self):
        """The encoder, as HF's `base_model` of a model with a head: what a task head
        (`lm_head`) sits on (`param_groups` tells heads from the body by it)."""
        return self.encoder

    def freeze_feature_encoder(self):
        """Freeze the convolutional front end (conv1, conv2), as wav2vec2's CNN (ref)."""
        for conv in (self.encoder.conv1, self.encoder.conv2):
            conv.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """HF's `from_pretrained`, the position table kept frozen: transformers' loading
        makes every loaded tensor trainable again, and Whisper's positions are fixed."""
        model = super().from_pretrained(*args, **kwargs)
        model.encoder.embed_positions.requires_grad_(False)
        return model

    @property
    def adds_positions(self):
        """False for a CALD student converted with positions "drop" (its config's
        `cald_student`): its input gets no absolute positions."""
        student = getattr(self.config, "cald_student", None) or {}
        return student.get("positions", "keep") != "drop"

    def positions(self, time, device):
        """The first `time` rows of the position table, the sinusoids continued past it
        (fixed, as in Whisper: no gradient reaches the table)."""
        table = self.encoder.embed_positions.weight.detach()
        if time <= table.shape[0]:
            return table[:time]
        extra = sinusoids(time, table.shape[1])[table.shape[0] :].to(device, table.dtype)
        return torch.cat([table, extra])

    def encode(self, input_features, attention_mask=None, output_hidden_states=False):
        """The encoder's outputs and the valid-frame mask `(batch, frames / 2)`."""
        enc = self.encoder
        mel_frames = input_features.shape[-1]
        if attention_mask is None:
            attention_mask = input_features.new_ones(input_features.shape[0], mel_frames)
        n_mel = attention_mask.sum(-1).long()
        hidden = nn.functional.gelu(enc.conv1(input_features))
        hidden = hidden * counts_to_mask(n_mel, mel_frames).unsqueeze(1).to(hidden.dtype)
        hidden = nn.functional.gelu(enc.conv2(hidden)).transpose(1, 2)
        valid = counts_to_mask(whisper_frames(n_mel), hidden.shape[1])
        if self.adds_positions:
            hidden = hidden + self.positions(hidden.shape[1], hidden.device)
        hidden = nn.functional.dropout(hidden, p=enc.dropout, training=self.training)
        # additive key-padding mask (batch, 1, 1, frames): eager and sdpa read it alike
        key_mask = torch.zeros(valid.shape, dtype=hidden.dtype, device=hidden.device)
        key_mask = key_mask.masked_fill(~valid, torch.finfo(hidden.dtype).min)[:, None, None, :]
        states = [hidden]
        for layer in enc.layers:
            if self.training and enc.layerdrop > 0 and torch.rand([]) < enc.layerdrop:
                states.append(hidden)
                continue
            hidden = layer(hidden, key_mask)
            states.append(hidden)
        hidden = enc.layer_norm(hidden)
        states[-1] = hidden  # as HF: the last hidden state is after the final norm
        return BaseModelOutput(
            last_hidden_state=hidden, hidden_states=tuple(states) if output_hidden_states else None
        )

    def forward(self, input_features, attention_mask=None, output_hidden_states=False, **kwargs):
        return self.encode(input_features, attention_mask, output_hidden_states)


class WhisperEncoderForCTC(WhisperEncoderModel):
    """`WhisperEncoderModel` + dropout + a linear CTC head (`lm_head`, vocab_size
    outputs; blank = `pad_token_id`). forward -> CausalLMOutput(logits, hidden_states)."""

    def __init__(self, config):
        super().__init__(config)
        self.dropout = nn.Dropout(getattr(config, "final_dropout", 0.0))
        self.lm_head = nn.Linear(config.d_model, config.vocab_size)
        self.post_init()

    def forward(self, input_features, attention_mask=None, output_hidden_states=False, **kwargs):
        out = self.encode(input_features, attention_mask, output_hidden_states)
        logits = self.lm_head(self.dropout(out.last_hidden_state))
        return CausalLMOutput(logits=logits, hidden_states=out.hidden_states)


def from_whisper(cls, source, **overrides):
    """`cls` (WhisperEncoderModel / ForCTC) with the encoder weights of the Whisper
    checkpoint `source` (hub id or folder), in float32; `overrides` set config fields."""
    whisper = transformers.WhisperModel.from_pretrained(source, dtype=torch.float32)
    model = cls(CALDWhisperEncoderConfig(**{**whisper.config.to_dict(), **overrides}))
    model.encoder.load_state_dict(whisper.encoder.state_dict())
    return model


transformers.AutoConfig.register(CALDWhisperEncoderConfig.model_type, CALDWhisperEncoderConfig)
transformers.AutoModel.register(CALDWhisperEncoderConfig, WhisperEncoderModel)
transformers.AutoModelForCTC.register(CALDWhisperEncoderConfig, WhisperEncoderForCTC)
