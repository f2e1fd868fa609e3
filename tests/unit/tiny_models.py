"""Tiny random models and mixer configs shared by the tests: one factory per source
family (`MODELS`), one small lobe config per mixer (`MIXER_CONFIGS`). A family or
mixer registered from outside the package adds its own with `add_model` /
`MIXER_CONFIGS[name] = {...}` and is then covered by the conformance checks
(`conformance.py`)."""

import transformers

from speechbrain_cald import speech_input
from speechbrain_cald.models import whisper_encoder

VOCAB = ["<blank>", "|", "a", "b", "c", "d", "e", "f"]
TEXT_VOCAB = 50
SPEECH = dict(
    hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
    conv_dim=(8, 8, 8), conv_stride=(5, 4, 4), conv_kernel=(10, 8, 4),
    num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2, vocab_size=len(VOCAB),
    hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
    feat_proj_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0, final_dropout=0.0,
)  # fmt: skip
TEXT = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    vocab_size=TEXT_VOCAB, max_position_embeddings=64,
)  # fmt: skip
# Small enough for width 16 (speech) and 32 (text); linformer's max_len covers every
# tiny input here (speech families give it no maximum length of their own).
MIXER_CONFIGS = {
    "bimamba2": {"d_state": 7, "headdim": 8, "chunk_size": 16},
    "bimamba2_shared": {"d_state": 7, "headdim": 8, "chunk_size": 16},
    "mamba2": {"d_state": 4, "headdim": 8, "chunk_size": 8},
    "mamba": {"d_state": 4, "chunk_size": 8},
    "linformer": {"k": 8, "max_len": 64},
}


def wav2vec2_ctc(cls=transformers.Wav2Vec2ForCTC, config_cls=transformers.Wav2Vec2Config, **extra):
    model = cls(config_cls(**SPEECH, **extra))
    return speech_input.attach_feature_extractor(model, speech_input.feature_extractor_for()).eval()


def whisper_ctc():
    config = transformers.WhisperConfig(
        d_model=16, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=32,
        decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=32,
        max_source_positions=64, dropout=0.0, vocab_size=len(VOCAB), pad_token_id=0,
    )  # fmt: skip
    model = whisper_encoder.WhisperEncoderForCTC(
        whisper_encoder.CALDWhisperEncoderConfig(**config.to_dict())
    )
    extractor = transformers.WhisperFeatureExtractor()
    return speech_input.attach_feature_extractor(model, extractor).eval()


def roberta_classifier():
    config = transformers.RobertaConfig(**TEXT, num_labels=3, hidden_dropout_prob=0.0)
    return transformers.RobertaForSequenceClassification(config).eval()


def gpt_neox_lm():
    return transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(**TEXT)).eval()


# family -> (factory, input kind: "speech" (CTC over waveforms) | "classify" | "lm")
MODELS = {
    "wav2vec2": (wav2vec2_ctc, "speech"),
    "wavlm": (
        lambda: wav2vec2_ctc(
            transformers.WavLMForCTC,
            transformers.WavLMConfig,
            num_buckets=8,
            max_bucket_distance=20,
        ),
        "speech",
    ),
    "whisper": (whisper_ctc, "speech"),
    "bert": (roberta_classifier, "classify"),
    "gpt_neox": (gpt_neox_lm, "lm"),
}


def add_model(family, factory, kind):
    """Give the conformance checks a tiny model of `family` (its input kind as MODELS)."""
    MODELS[family] = (factory, kind)
