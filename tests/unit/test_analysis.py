"""Analysis tools (CALD_METHOD.md section 5): feature shift, trajectories, plots, CLI."""

import copy
import math

import numpy as np
import pytest
import soundfile
import torch
from transformers import BertConfig, BertModel, Wav2Vec2Config, Wav2Vec2ForCTC

from speechbrain_cald import speech_input
from speechbrain_cald.analysis import (
    audio_batches,
    feature_shift,
    hidden_state_trajectories,
    load_model,
    main,
    plot_feature_shift,
    plot_trajectories,
    project_2d,
)
from speechbrain_cald.conversion import convert_to_student


def tiny_wav2vec2():
    """2 layers, width 16; per-frame LayerNorm in the CNN (no GroupNorm over time), so
    padded samples cannot reach valid frames."""
    config = Wav2Vec2Config(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(8, 8),
        conv_stride=(5, 2),
        conv_kernel=(10, 3),
        num_feat_extract_layers=2,
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=4,
        feat_extract_norm="layer",
        vocab_size=10,
    )
    model = Wav2Vec2ForCTC(config).eval()
    return speech_input.attach_feature_extractor(model, speech_input.feature_extractor_for())


def tiny_bert():
    config = BertConfig(
        vocab_size=50,
        hidden_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
    )
    return BertModel(config).eval()


def perturbed(model, scale, seed=1):
    """A copy of `model` with `scale` * (fixed Gaussian noise) added to every weight."""
    other = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return other


def padded(wavs, pad_value=None, extra=0):
    """Right-padded batch, `extra` samples wider than needed; the padding holds
    `pad_value`, or noise when None."""
    width = max(len(w) for w in wavs) + extra
    if pad_value is None:
        values = torch.randn(len(wavs), width)
    else:
        values = torch.full((len(wavs), width), pad_value)
    mask = torch.zeros(values.shape, dtype=torch.long)
    for row, wav in enumerate(wavs):
        values[row, : len(wav)] = wav
        mask[row, : len(wav)] = 1
    return {"input_values": values, "attention_mask": mask}


def test_speech_frame_mask_is_the_sample_mask_downsampled():
    model = tiny_wav2vec2()
    batch = padded([torch.randn(400), torch.randn(200)])
    rel_lens = batch["attention_mask"].sum(1) / 400
    with torch.no_grad():
        _, mask = speech_input.speech_model_forward(model, batch["input_values"], rel_lens)
    # (400 - 10) // 5 + 1 = 79 -> (79 - 3) // 2 + 1 = 39 frames; 200 samples -> 19.
    expected = torch.arange(39)[None, :] < torch.tensor([[39], [19]])
    assert torch.equal(mask, expected)


def test_feature_shift_of_a_model_with_itself_is_zero():
    model = tiny_wav2vec2()
    batches = [padded([torch.randn(400), torch.randn(250)])]
    shift = feature_shift(model, model, batches)
    assert shift.shape == (3,) and shift.dtype == torch.float64
    assert torch.equal(shift, torch.zeros(3, dtype=torch.float64))


def test_feature_shift_matches_a_hand_computation():
    model_a, model_b = tiny_bert(), perturbed(tiny_bert(), 0.2)
    ids = torch.randint(1, 50, (3, 6))
    batches = [  # different valid-token counts per batch: frames, not batches, weigh equally
        {"input_ids": ids[:2], "attention_mask": torch.tensor([[1] * 6, [1, 1, 0, 0, 0, 0]])},
        {"input_ids": ids[2:], "attention_mask": torch.tensor([[1, 1, 1, 1, 0, 0]])},
    ]
    sums, count = [0.0, 0.0, 0.0], 0
    with torch.no_grad():
        for batch in batches:
            ha = model_a(**batch, output_hidden_states=True).hidden_states
            hb = model_b(**batch, output_hidden_states=True).hidden_states
            for row, length in enumerate(batch["attention_mask"].sum(1).tolist()):
                for t in range(length):
                    count += 1
                    for layer in range(3):
                        a = ha[layer][row, t].tolist()
                        b = hb[layer][row, t].tolist()
                        dot = sum(x * y for x, y in zip(a, b))
                        norms = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
                        sums[layer] += 1.0 - dot / norms
    expected = torch.tensor(sums, dtype=torch.float64) / count
    torch.testing.assert_close(
        feature_shift(model_a, model_b, batches), expected, rtol=1e-10, atol=1e-12
    )


def test_feature_shift_ignores_padding():
    model_a = tiny_wav2vec2()
    model_b = perturbed(model_a, 0.05)
    wavs = [torch.randn(800), torch.randn(430), torch.randn(300)]
    alone = feature_shift(model_a, model_b, [padded([w]) for w in wavs])
    together = feature_shift(model_a, model_b, [padded(wavs)])  # noise in the padding
    wider = feature_shift(model_a, model_b, [padded(wavs[:2], 0.0, extra=500), padded(wavs[2:])])
    assert alone.min() > 0
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(wider, alone, rtol=1e-4, atol=1e-6)


def test_feature_shift_grows_with_the_perturbation():
    model = tiny_wav2vec2()
    batches = [padded([torch.randn(600), torch.randn(350)])]
    small = feature_shift(model, perturbed(model, 0.01), batches)
    large = feature_shift(model, perturbed(model, 0.1), batches)
    assert (small > 0).all() and (large > small).all()


def test_feature_shift_teacher_vs_converted_student(tmp_path):
    """A student (attention replaced, same HF class) saved and reloaded by folder."""
    teacher = tiny_wav2vec2()
    student, _ = convert_to_student(
        teacher,
        {"mixer_config": {"headdim": 4, "d_state": 6, "chunk_size": 8}},  # in_proj 48
    )
    student.save_pretrained(tmp_path / "student")
    student = load_model(tmp_path / "student")
    wavs = [torch.randn(800), torch.randn(430)]
    shift = feature_shift(teacher, student, [padded(wavs)])
    assert shift[0] == 0 and (shift[1:] > 0).all()  # the CNN + projection are kept
    torch.testing.assert_close(
        feature_shift(teacher, student, [padded([w]) for w in wavs]), shift, rtol=1e-4, atol=1e-6
    )


def test_hidden_state_trajectories_pool_valid_frames(tmp_path):
    model_a, model_b = tiny_bert(), perturbed(tiny_bert(), 0.1)
    torch.save(model_b.state_dict(), tmp_path / "b.ckpt")
    batch = {
        "input_ids": torch.randint(1, 50, (2, 5)),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]),
    }
    traj = hidden_state_trajectories(
        {"run": [model_a, tmp_path / "b.ckpt"]}, tiny_bert, [batch], layer=2
    )
    assert traj["run"].shape == (2, 2 * 8)
    with torch.no_grad():
        h = model_b(**batch, output_hidden_states=True).hidden_states[2].double()
    expected = torch.cat([h[0].mean(0), h[1, :3].mean(0)]).numpy()
    np.testing.assert_allclose(traj["run"][1], expected, rtol=1e-6)


def test_project_2d_collinear_points_lie_on_a_line():
    rng = np.random.default_rng(0)
    origin, direction = rng.normal(size=7), rng.normal(size=7)
    t = np.array([0.0, 1.0, 2.5, -1.0, 4.0])
    points = origin + t[:, None] * direction  # (5, 7)
    out = project_2d({"a": points[:3], "b": points[3:]})
    xy = np.concatenate([out["a"], out["b"]])
    assert out["a"].shape == (3, 2) and out["b"].shape == (2, 2)
    np.testing.assert_allclose(xy[:, 1], 0.0, atol=1e-10)
    expected = (t - t.mean()) * np.linalg.norm(direction)
    np.testing.assert_allclose(np.abs(xy[:, 0]), np.abs(expected), atol=1e-10)
    assert np.sign(xy[:, 0] * expected).min() == np.sign(xy[:, 0] * expected).max()


def test_project_2d_preserves_distances_of_2d_points():
    points = np.random.default_rng(1).normal(size=(6, 2)) * [3.0, 0.5]
    xy = np.concatenate(list(project_2d({"a": points[:4], "b": torch.tensor(points[4:])}).values()))

    def distances(p):
        return np.linalg.norm(p[:, None] - p[None], axis=-1)

    np.testing.assert_allclose(distances(xy), distances(points), atol=1e-10)


def test_plots_write_png(tmp_path):
    plot_feature_shift({"a": torch.rand(4), "b": torch.rand(4)}, tmp_path / "shift.png")
    plot_trajectories({"a": np.random.rand(3, 2), "b": np.random.rand(1, 2)}, tmp_path / "t.png")
    for name in ("shift.png", "t.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 1000


@pytest.fixture
def saved_models(tmp_path):
    """Two tiny wav2vec2 folders, a state dict in a SpeechBrain CKPT folder, and three
    wav files (8 kHz stereo, 16 kHz, 22.05 kHz)."""
    model_a = tiny_wav2vec2()
    model_a.save_pretrained(tmp_path / "a")
    perturbed(model_a, 0.05).save_pretrained(tmp_path / "b")
    (tmp_path / "CKPT+c").mkdir()  # a SpeechBrain checkpoint folder
    torch.save(perturbed(model_a, 0.1).state_dict(), tmp_path / "CKPT+c" / "student.ckpt")
    rng = np.random.default_rng(0)
    wavs = []
    for name, rate, shape in [
        ("x.wav", 8000, (400, 2)),
        ("y.wav", 16000, (1200,)),
        ("z.wav", 22050, (900,)),
    ]:
        soundfile.write(tmp_path / name, 0.1 * rng.standard_normal(shape), rate)
        wavs.append(str(tmp_path / name))
    return tmp_path, wavs


def test_audio_batches_mono_16k_right_padded(saved_models):
    root, wavs = saved_models
    (batch,) = audio_batches(wavs, batch_size=3)
    assert batch["attention_mask"].sum(1).tolist()[:2] == [800, 1200]  # 8 kHz doubled
    data, _ = soundfile.read(wavs[1], dtype="float32")
    assert torch.equal(batch["input_values"][1, :1200], torch.from_numpy(data))
    assert batch["input_values"][1, 1200:].abs().sum() == 0


def test_cli_feature_shift(saved_models, capsys):
    """The `feature-shift` command end to end (in-process: a subprocess costs ~10 s)."""
    root, wavs = saved_models
    args = f"feature-shift --model-a {root / 'a'} --model-b {root / 'b'} --batch-size 2"
    args += f" --out {root / 's.png'} --csv {root / 's.csv'} --audio"
    main([*args.split(), *wavs])
    out = capsys.readouterr().out
    assert "layer" in out and len(out.strip().splitlines()) == 2 + 3
    assert (root / "s.png").read_bytes().startswith(b"\x89PNG")
    rows = (root / "s.csv").read_text().strip().splitlines()
    assert rows[0] == "layer,feature_shift"
    expected = feature_shift(
        load_model(root / "a"), load_model(root / "b"), audio_batches(wavs, batch_size=3)
    )
    np.testing.assert_allclose([float(r.split(",")[1]) for r in rows[1:]], expected, atol=2e-6)


def test_cli_trajectories(saved_models, capsys):
    """Two runs: HF folders, and a CKPT folder's state dict loaded into the --base model."""
    root, wavs = saved_models
    args = f"trajectories --run std {root / 'a'} {root / 'b'} --run other {root / 'a'}"
    args += f" {root / 'CKPT+c'} --base {root / 'a'} --layer 2 --out {root / 't.png'} --audio"
    main([*args.split(), *wavs])
    rows = [line.split() for line in capsys.readouterr().out.strip().splitlines()[2:]]
    assert [row[0] for row in rows] == ["std", "std", "other", "other"]
    assert rows[2][2:4] == rows[0][2:4] and rows[3][2:4] != rows[0][2:4]  # same a, new c
    assert (root / "t.png").read_bytes().startswith(b"\x89PNG")
