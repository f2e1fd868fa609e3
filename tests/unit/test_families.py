"""Source families beyond Wav2Vec2: HuBERT, WavLM, Data2Vec-Audio and Whisper's encoder.

For each, on tiny random configs: conversion keeps every non-attention weight
bit-identical; a padded utterance gives what it gives alone (teacher and student,
1e-5 relative to the largest output); save / load round trip; export and reload
through the inference interface. Whisper: its log-mel input equals HF's feature
extractor on the same audio, and its positions continue past 30 s as sinusoids.
"""

import conformance
import numpy as np
import pytest
import speechbrain as sb
import tiny_models
import torch
import transformers
from conformance import assert_close
from speechbrain.dataio.batch import PaddedBatch
from tiny_models import MIXER_CONFIGS, VOCAB

from speechbrain_cald import conversion, inference, speech_input
from speechbrain_cald.models import load_source, whisper_encoder
from speechbrain_cald.tasks import CTCASR, UtteranceClassification

MIXER = {"mixer_config": MIXER_CONFIGS["bimamba2"]}  # in_proj 48


def hf_ctc(kind):
    """A tiny random *ForCTC of the family `kind`, with its input processing recorded."""
    if kind == "whisper":
        return tiny_models.whisper_ctc()
    classes = {
        "hubert": (transformers.HubertForCTC, transformers.HubertConfig),
        "wavlm": (transformers.WavLMForCTC, transformers.WavLMConfig),
        "data2vec-audio": (transformers.Data2VecAudioForCTC, transformers.Data2VecAudioConfig),
    }[kind]
    extra = {"num_buckets": 8, "max_bucket_distance": 20} if kind == "wavlm" else {}
    return tiny_models.wav2vec2_ctc(*classes, **extra)


KINDS = ["hubert", "wavlm", "data2vec-audio", "whisper"]


def outputs(model, signals):
    """CTC logits of each utterance (valid frames only) from one padded batch."""
    return conformance.outputs(model, "speech", signals)


@pytest.mark.parametrize("kind", KINDS)
def test_conversion_keeps_every_non_attention_weight(kind):
    teacher = hf_ctc(kind)
    student, report = conversion.convert_to_student(teacher, MIXER)
    assert report.family == {"data2vec-audio": "wav2vec2", "hubert": "wav2vec2"}.get(kind, kind)
    assert report.mixer == "bimamba2" and report.replaced and report.new
    slot = "self_attn" if kind == "whisper" else "attention"
    assert all(f".{slot}." in name for name in report.replaced + report.new)
    teacher_state, student_state = teacher.state_dict(), student.state_dict()
    assert set(report.kept) == set(teacher_state) - set(report.replaced)
    for name in report.kept:
        assert torch.equal(student_state[name], teacher_state[name]), name
    if kind == "wavlm":
        assert any("rel_attn_embed" in n for n in report.replaced)
        assert any("relative position bias" in note for note in report.notes)


@pytest.mark.parametrize(
    "kind, mixer", [(k, "bimamba2") for k in KINDS] + [("whisper", "bimamba2_shared")]
)
def test_padded_equals_alone_teacher_and_student(kind, mixer):
    teacher = hf_ctc(kind)
    student = conversion.convert_to_student(teacher, {**MIXER, "mixer": mixer})[0].eval()
    gen = torch.Generator().manual_seed(5)
    short, long = torch.randn(3001, generator=gen) * 0.2, torch.randn(5003, generator=gen)
    for model in (teacher, student):
        alone = outputs(model, [short])[0]
        for padded in (outputs(model, [short, long])[0], outputs(model, [long, short])[1]):
            assert padded.shape == alone.shape
            assert_close(padded, alone)


@pytest.mark.parametrize(
    "kind, mixer", [(k, "bimamba2") for k in KINDS] + [("whisper", "bimamba2_shared")]
)
def test_save_load_and_export_reload(kind, mixer, tmp_path):
    student = conversion.convert_to_student(hf_ctc(kind), {**MIXER, "mixer": mixer})[0].eval()
    signals = [torch.randn(4000), torch.randn(2500)]
    expected = outputs(student, signals)
    student.save_pretrained(tmp_path / "hf")
    reloaded = conversion.from_pretrained(tmp_path / "hf").eval()
    for a, b in zip(outputs(reloaded, signals), expected):
        assert_close(a, b)
    inference.export_inference_folder(tmp_path / "export", CTCASR(VOCAB), student)
    asr = inference.load_inference_folder(tmp_path / "export", tmp_path / "save")
    padded = torch.zeros(2, 4000)
    padded[0], padded[1, :2500] = signals
    log_probs = asr.encode_batch(padded, torch.tensor([1.0, 2500 / 4000]))
    for row, logits in enumerate(expected):
        assert_close(log_probs[row, : len(logits)], logits.float().log_softmax(-1))


def test_classification_task_on_a_whisper_student(tmp_path):
    model = whisper_encoder.WhisperEncoderModel(hf_ctc("whisper").config)
    speech_input.attach_feature_extractor(model, transformers.WhisperFeatureExtractor())
    student = conversion.convert_to_student(model.eval(), MIXER)[0]
    task = UtteranceClassification({"speaker": 3})
    heads = task.make_heads(student.config)
    batch = PaddedBatch(
        [
            {"id": "a", "sig": torch.randn(3200), "speaker": 1},
            {"id": "b", "sig": torch.randn(2000), "speaker": 2},
        ]
    )
    out = task.forward(student.train(), batch, sb.Stage.TRAIN, heads)
    loss = task.loss(out, batch)
    loss.backward()
    assert torch.isfinite(loss) and out.logits["speaker"].shape == (2, 3)
    assert len(out.hidden_states) == 3  # embeddings + 2 layers


def test_whisper_log_mel_equals_hf_feature_extractor():
    extractor = transformers.WhisperFeatureExtractor()
    gen = np.random.default_rng(0)
    for n in (1600, 16000 + 37):
        audio = (0.1 * gen.standard_normal(n)).astype(np.float32)
        hf = extractor(audio, sampling_rate=16000, padding="longest", return_tensors="pt")
        ours, frames = speech_input.log_mel(
            torch.from_numpy(audio)[None], torch.tensor([n]), extractor.mel_filters
        )
        assert int(frames) == n // 160
        expected = hf.input_features[..., : int(frames)]
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


def test_whisper_positions_continue_past_30_s_as_sinusoids():
    model = whisper_encoder.WhisperEncoderModel(hf_ctc("whisper").config)
    table = model.encoder.embed_positions.weight
    torch.testing.assert_close(table, whisper_encoder.sinusoids(*table.shape), rtol=0, atol=1e-5)
    longer = model.positions(table.shape[0] + 10, "cpu")
    assert torch.equal(longer[: table.shape[0]], table)
    torch.testing.assert_close(longer, whisper_encoder.sinusoids(*longer.shape), rtol=0, atol=1e-5)


def test_whisper_checkpoint_gives_its_encoder_bit_identical(tmp_path):
    config = transformers.WhisperConfig(
        d_model=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
        decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=32,
        max_source_positions=64, vocab_size=60, pad_token_id=1, bos_token_id=2,
        eos_token_id=3, decoder_start_token_id=2,
    )  # fmt: skip
    whisper = transformers.WhisperForConditionalGeneration(config)
    whisper.save_pretrained(tmp_path)
    model = load_source(transformers.AutoModelForCTC, str(tmp_path), vocab_size=8, pad_token_id=0)
    assert isinstance(model, whisper_encoder.WhisperEncoderForCTC)
    assert model.lm_head.out_features == 8
    for name, value in whisper.model.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[name], value), name


def test_whisper_encoder_equals_hf_on_a_full_window():
    """On exactly max_source_positions * 2 mel frames and no padding, the encoder is
    HF's WhisperEncoder (same hidden states, layer by layer)."""
    model = hf_ctc("whisper")
    features = torch.randn(2, 80, 2 * model.config.max_source_positions)
    with torch.no_grad():
        ours = model.encode(features, output_hidden_states=True).hidden_states
        hf = model.encoder(features, output_hidden_states=True)
    assert len(ours) == len(hf.hidden_states)
    for a, b in zip(ours, hf.hidden_states):
        assert_close(a, b)
    assert_close(ours[-1], hf.last_hidden_state)


def test_whisper_student_without_positions(tmp_path):
    """positions "drop": the student's first hidden state is the teacher's minus the
    position table; padded == alone; the choice survives save / load; a family with no
    absolute positions refuses it."""
    teacher = hf_ctc("whisper")
    kept = conversion.convert_to_student(teacher, MIXER)[0].eval()
    dropped, report = conversion.convert_to_student(teacher, {**MIXER, "positions": "drop"})
    dropped.eval()
    assert "sinusoidal positions dropped (the student adds none)" in report.notes
    wav = torch.randn(4000)
    batch = PaddedBatch([{"id": "a", "sig": wav}])
    with torch.no_grad():
        first = [CTCASR(VOCAB).forward(m, batch, sb.Stage.TEST) for m in (kept, dropped)]
    first = [out.hidden_states[0] for out in first]
    table = teacher.encoder.embed_positions.weight[: first[0].shape[1]]
    assert_close(first[0] - first[1], table.expand_as(first[0]))
    short, long = torch.randn(3001) * 0.2, torch.randn(5003)
    alone = outputs(dropped, [short])[0]
    assert_close(outputs(dropped, [short, long])[0], alone)
    dropped.save_pretrained(tmp_path / "hf")
    reloaded = conversion.from_pretrained(tmp_path / "hf").eval()
    assert not reloaded.adds_positions
    assert_close(outputs(reloaded, [short])[0], alone)
    with pytest.raises(ValueError, match="positions 'drop'"):
        conversion.convert_to_student(hf_ctc("hubert"), {**MIXER, "positions": "drop"})


@pytest.mark.parametrize("kind", ["encoder", "audio_classification"])
def test_hf_whisper_classes_convert_keeping_every_non_attention_weight(kind, tmp_path):
    """HF's WhisperModel encoder and WhisperForAudioClassification (fine-tuned the HF
    way) convert: attention replaced, everything else bit-identical; they run on HF's
    30 s windows and round-trip through save / load; positions 'drop' is refused."""
    config = transformers.WhisperConfig(
        d_model=16, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=32,
        decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=32,
        max_source_positions=64, num_mel_bins=8, num_labels=3, vocab_size=64, pad_token_id=0,
        bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
    )  # fmt: skip
    torch.manual_seed(0)
    if kind == "encoder":
        teacher = transformers.WhisperModel(config).get_encoder().eval()
    else:
        teacher = transformers.WhisperForAudioClassification(config).eval()
    student, report = conversion.convert_to_student(teacher, MIXER)
    assert report.family == "whisper" and report.replaced
    assert all(".self_attn." in name for name in report.replaced + report.new)
    kept = dict(teacher.named_parameters())
    for name, param in student.named_parameters():
        if name in kept:
            assert torch.equal(param, kept[name]), name
    assert set(report.kept) == set(kept) - set(report.replaced)
    features = torch.randn(2, 8, 128)  # (batch, mels, 2 x max_source_positions)
    with torch.no_grad():
        out = student(features)
    student.save_pretrained(tmp_path / "hf")
    reloaded = conversion.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        again = reloaded(features)
    key = "last_hidden_state" if kind == "encoder" else "logits"
    torch.testing.assert_close(again[key], out[key])
    with pytest.raises(ValueError, match="positions 'drop'"):
        conversion.convert_to_student(teacher, {**MIXER, "positions": "drop"})
