"""The one speech input path, end to end (docs/CALD_METHOD.md, "Speech input").

- A padded utterance gives what it gives alone (outputs and gradients), through the
  Task forward of training, our exported interface and stock SpeechBrain `EncoderASR`,
  for GroupNorm (wav2vec2-base) and LayerNorm (wav2vec2-large-lv60) CNNs, teacher and
  converted student, plain and with each head's memory capped (`max_timescale`, carried
  by the export). Tolerance: 1e-5 relative to the largest magnitude compared
  (float32; padding changes only the summation order of the statistics).
- The input normalisation equals HF's `Wav2Vec2FeatureExtractor` (1e-5).
- Files at other rates, stereo, int16 or float reach the model as the same input in
  training and at inference (exactly: one reader, one resampler).
- Inside a task's `shared_front_end`, a frozen CNN equal to one that already ran on the
  batch is not run again and the outputs are bit-identical to running it; a CNN that
  trains, or differs in one weight, or another batch, runs.
"""

import numpy as np
import pytest
import soundfile
import speechbrain as sb
import tiny_models
import torch
import transformers
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.inference.ASR import EncoderASR
from speechbrain.inference.interfaces import Pretrained

from speechbrain_cald import conversion, inference, speech_data, speech_input
from speechbrain_cald.feature_encoder import cnn_frames, feature_encoder_geometry
from speechbrain_cald.tasks import CTCASR

VOCAB = ["<blank>", "|", "a", "b", "c", "d", "e", "f"]
RTOL = 1e-5
STUDENT = {"mixer_config": {"d_state": 7, "headdim": 8, "chunk_size": 16}}
pytestmark = pytest.mark.filterwarnings("ignore:Mamba2 in_proj width:UserWarning")


def tiny_model(norm, kind):
    """A random tiny Wav2Vec2ForCTC (total stride 80) with its CNN trainable and no
    dropout or masking ("teacher"), or its BiMamba2 student ("student"; "capped
    student": each head's memory capped at 4 frames); input normalisation recorded."""
    config = transformers.Wav2Vec2Config(
        vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, conv_dim=(8, 8, 8), conv_stride=(5, 4, 4), conv_kernel=(10, 8, 4),
        conv_bias=True, num_feat_extract_layers=3, feat_extract_norm=norm,
        num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2, hidden_dropout=0.0,
        attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0,
        mask_time_prob=0.0, final_dropout=0.0, pad_token_id=0,
    )  # fmt: skip
    model = transformers.Wav2Vec2ForCTC(config)
    first = model.wav2vec2.feature_extractor.conv_layers[0]
    if norm == "group":  # a non-trivial affine: the statistics must be per utterance
        torch.nn.init.normal_(first.layer_norm.weight)
        torch.nn.init.normal_(first.layer_norm.bias)
    speech_input.attach_feature_extractor(model, speech_input.feature_extractor_for())
    if kind != "teacher":
        model = conversion.convert_to_student(model, STUDENT)[0]
    if kind == "capped student":
        conversion.set_mixer_options(model, max_timescale=4.0)
    return model.train()  # no dropout: train mode is deterministic and has gradients


def speech_batch(signals):
    return PaddedBatch([{"id": str(i), "sig": s} for i, s in enumerate(signals)])


def assert_close(actual, expected, scale=None):
    """Equal within RTOL relative to `scale` (default: the largest of `expected`)."""
    scale = expected.abs().max().item() if scale is None else scale
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=RTOL * scale)


KINDS = ("teacher", "student", "capped student")
CASES = [(norm, kind) for norm in ("group", "layer") for kind in KINDS]
IDS = [f"{norm}-{kind.replace(' ', '_')}" for norm, kind in CASES]


@pytest.mark.parametrize("norm, kind", CASES, ids=IDS)
def test_task_forward_padded_equals_alone_outputs_and_gradients(norm, kind):
    model = tiny_model(norm, kind)
    short = torch.randn(3001) * 0.3 + 0.2  # offset and scale: normalisation matters
    long = torch.randn(5000) * 2.0
    weight = torch.randn(64, len(VOCAB))  # a fixed projection of the short one's logits
    results = []
    for signals in ([short], [short, long], [long, short]):
        model.zero_grad()
        out = CTCASR(VOCAB).forward(model, speech_batch(signals), sb.Stage.TRAIN)
        row = [len(s) for s in signals].index(len(short))
        n = int(out.mask[row].sum())
        logits = out.logits[row, :n]
        (logits * weight[:n]).sum().backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        hidden = [h[row, :n].detach() for h in out.hidden_states]
        results.append((logits.detach(), hidden, grads))
    alone = results[0]
    for padded in results[1:]:
        assert_close(padded[0], alone[0])
        for h_padded, h_alone in zip(padded[1], alone[1]):
            assert_close(h_padded, h_alone)
        assert padded[2].keys() == alone[2].keys()
        # relative to the largest gradient: a conv bias before a normalisation has a
        # gradient of exactly 0 in theory, float noise in practice
        scale = max(g.abs().max().item() for g in alone[2].values())
        for name, grad in alone[2].items():
            assert_close(padded[2][name], grad, scale)
    first_conv = "feature_extractor.conv_layers.0.conv.weight"
    assert any(first_conv in name for name in alone[2])  # the CNN's gradients compared too


@pytest.mark.parametrize("norm, kind", CASES, ids=IDS)
def test_exported_folder_padded_equals_alone_and_equals_training(norm, kind, tmp_path):
    model = tiny_model(norm, kind).eval()
    inference.export_inference_folder(tmp_path / "export", CTCASR(VOCAB), model)
    short, long = torch.randn(3001) * 0.3 + 0.2, torch.randn(5000) * 2.0
    padded = torch.zeros(2, 5000)
    padded[0, :3001], padded[1] = short, long
    lens = torch.tensor([3001 / 5000, 1.0])
    with torch.no_grad():
        out = CTCASR(VOCAB).forward(model, speech_batch([short, long]), sb.Stage.TEST)
    n = int(out.mask[0].sum())
    training = out.logits[0, :n].float().log_softmax(-1)
    ours = inference.ASR.from_hparams(source=str(tmp_path / "export"), savedir=tmp_path / "a")
    stock = EncoderASR.from_hparams(source=str(tmp_path / "export"), savedir=tmp_path / "b")
    for asr in (ours, stock):
        alone = asr.encode_batch(short[None], torch.ones(1))[0]
        batched = asr.encode_batch(padded, lens)[0, :n]
        assert_close(batched, alone)
        assert_close(alone, training)
        assert (
            asr.transcribe_batch(padded, lens)[1][0]
            == asr.transcribe_batch(short[None], torch.ones(1))[1][0]
        )


def test_normalisation_equals_hf_feature_extractor():
    extractor = transformers.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    gen = torch.Generator().manual_seed(3)
    signals = [
        torch.randn(n, generator=gen) * s + o
        for n, s, o in ((900, 0.1, 0.3), (1500, 3.0, -1.0), (40, 1.0, 0.0))
    ]
    hf = extractor(
        [s.numpy() for s in signals], sampling_rate=16000, padding=True, return_tensors="pt"
    )
    padded = torch.zeros(len(signals), 1500)
    for row, s in enumerate(signals):
        padded[row, : len(s)] = s
    ours = speech_input.normalize_waveforms(padded, torch.tensor([len(s) for s in signals]))
    assert_close(ours, hf.input_values)
    assert torch.equal(ours[0, 900:], torch.zeros(600))  # padding stays 0


def test_model_without_recorded_normalisation_is_refused(tmp_path):
    model = transformers.Wav2Vec2ForCTC(tiny_model("layer", "teacher").config)
    delattr(model.config, speech_input.FEATURE_EXTRACTOR_KEY)
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="preprocessor_config.json"):
        CTCASR(VOCAB).load(tmp_path)
    speech_input.feature_extractor_for().save_pretrained(tmp_path)  # an HF checkpoint's file
    loaded, _ = CTCASR(VOCAB).load(tmp_path)
    assert speech_input.feature_extractor_from_config(loaded.config).do_normalize


@pytest.mark.parametrize(
    "rate, channels, subtype",
    [(8000, 1, "PCM_16"), (22050, 2, "PCM_16"), (44100, 2, "FLOAT"), (16000, 1, "FLOAT")],
)
def test_training_and_inference_read_a_file_the_same_way(tmp_path, rate, channels, subtype):
    gen = np.random.default_rng(rate)
    samples = (0.2 * gen.standard_normal((rate // 2, channels))).clip(-1, 1)
    path = str(tmp_path / "a.wav")
    soundfile.write(path, samples, rate, subtype=subtype)
    training = speech_data.audio_pipeline(16000)(path)  # the recipes' dynamic item
    export = tmp_path / "export"
    inference.export_inference_folder(export, CTCASR(VOCAB), tiny_model("layer", False).eval())
    ours = inference.ASR.from_hparams(source=str(export), savedir=tmp_path / "a").load_audio(path)
    stock = Pretrained.load_audio(
        EncoderASR.from_hparams(source=str(export), savedir=tmp_path / "b"), path
    )
    assert training.shape == (8000,) and training.dtype == torch.float32
    assert torch.equal(ours, training) and torch.equal(stock, training)
    config = tiny_model("layer", "teacher").config
    inputs = [
        speech_input.model_inputs(config, x[None], torch.tensor([8000]))["input_values"]
        for x in (training, stock)
    ]
    assert torch.equal(inputs[0], inputs[1])


def test_non_finite_audio_is_an_error_naming_the_file(tmp_path):
    path = str(tmp_path / "bad.wav")
    soundfile.write(path, np.array([0.1, np.inf, 0.0] * 100, dtype=np.float32), 16000, "FLOAT")
    with pytest.raises(ValueError, match=r"bad\.wav: 100 non-finite"):
        speech_data.audio_pipeline(16000)(path)


def count_cnn_passes(*models):
    """A list that gets one entry per forward of each model's first CNN layer over the
    batch's audio (not the one-frame stand-in input `_output_replaced` gives HF's own
    forward, whose output is discarded)."""
    passes = []
    for model in models:
        field = feature_encoder_geometry(model.config)[0]
        first = model.base_model.feature_extractor.conv_layers[0]

        def record(module, args, output, model=model, field=field):
            if args[0].shape[-1] > field:
                passes.append(model)

        first.register_forward_hook(record)
    return passes


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_frozen_cnn_runs_once_for_student_and_teacher(norm):
    teacher = tiny_model(norm, False)
    teacher.freeze_feature_encoder()
    student = conversion.convert_to_student(teacher, STUDENT)[0]
    task, batch = CTCASR(VOCAB), speech_batch([torch.randn(3001), torch.randn(5000)])

    def student_then_teacher():
        passes = count_cnn_passes(student, teacher)
        with task.shared_front_end():
            out_s = task.forward(student, batch, sb.Stage.TRAIN)
            with torch.no_grad():
                out_t = task.forward(teacher, batch, sb.Stage.TRAIN)
        return out_s, out_t, passes

    def alone(model):
        with torch.no_grad():
            return task.forward(model, batch, sb.Stage.TRAIN)

    out_s, out_t, passes = student_then_teacher()
    assert passes == [student]  # the teacher's CNN pass is the student's
    for mine, reference in ((out_s, alone(student)), (out_t, alone(teacher))):
        assert torch.equal(mine.logits, reference.logits)
        assert all(map(torch.equal, mine.hidden_states, reference.hidden_states))
    out_s.logits.sum().backward()  # the student still trains (and not its frozen CNN)
    assert student.lm_head.weight.grad is not None
    assert all(p.grad is None for p in student.base_model.feature_extractor.parameters())

    last_cnn_weight = "base_model.feature_extractor.conv_layers.2.conv.weight"
    with torch.no_grad():
        teacher.get_parameter(last_cnn_weight)[0, 0, 0] += 1e-3  # one weight differs
    out_s, out_t, passes = student_then_teacher()
    assert passes == [student, teacher]
    assert torch.equal(out_t.logits, alone(teacher).logits)

    teacher.get_parameter(last_cnn_weight).copy_(student.get_parameter(last_cnn_weight))
    assert student_then_teacher()[2] == [student]
    student.base_model.feature_extractor.requires_grad_(True)  # the student's CNN trains
    assert student_then_teacher()[2] == [student, teacher]


@pytest.mark.parametrize("chunk_frames", [None, 7])
def test_exact_cnn_leaves_the_hf_instances_untouched(chunk_frames):
    """The padding-exact (and chunked) CNN works through hooks that it removes: no HF
    module gets an instance-level `forward`, during the pass or after it, and no hook
    of its stays behind."""
    model = tiny_model("group", False)
    encoder = model.base_model.feature_extractor
    group_norm = encoder.conv_layers[0].layer_norm
    seen = []

    def inspect(*_):
        seen.append(["forward" in vars(m) for m in model.modules()])

    group_norm.register_forward_hook(inspect)
    batch = speech_batch([torch.randn(3001), torch.randn(5000)])
    speech_input.speech_model_forward(model, batch.sig[0], batch.sig[1], chunk_frames)
    assert seen and not any(any(flags) for flags in seen)
    assert len(group_norm._forward_hooks) == 1 and not group_norm._forward_pre_hooks
    assert not encoder._forward_hooks and not encoder._forward_pre_hooks


@pytest.mark.parametrize("family", ["wav2vec2", "wavlm", "whisper"])
def test_encoder_frames_match_the_models_outputs(family):
    """`encoder_frames` (the frame count from the config alone) equals HF's own length
    rule (wav2vec2 family: the model's `_get_feat_extract_output_lengths` on samples;
    Whisper: HF's on mel frames) and the number of frames each utterance gives alone."""
    model = tiny_models.MODELS[family][0]()
    lengths = torch.tensor([401, 999, 1600, 2345, 4000])
    frames = speech_input.encoder_frames(model.config, lengths)
    mel = torch.div(lengths, speech_input.HOP, rounding_mode="floor")
    hf = model._get_feat_extract_output_lengths(mel if family == "whisper" else lengths)
    assert torch.equal(frames, hf)
    for n, expected in zip(lengths.tolist(), frames.tolist()):
        wav = torch.randn(1, n)
        with torch.no_grad():
            out, mask = speech_input.speech_model_forward(model, wav, torch.ones(1))
        assert out[0].shape[1] == mask.shape[1] == expected
    with pytest.raises(ValueError, match="add_adapter"):
        cnn_frames(transformers.Wav2Vec2Config(add_adapter=True), lengths)
