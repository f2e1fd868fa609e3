"""Export -> reload (fresh process) of CALD speech models, bad audio, chunked CNN."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import soundfile
import tokenizers
import torch
from scipy.signal import resample_poly
from transformers import (
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    RobertaConfig,
    RobertaForSequenceClassification,
    Wav2Vec2Config,
    Wav2Vec2ForCTC,
    Wav2Vec2Model,
)

from speechbrain_cald import (
    conversion,
    exports,
    feature_encoder,
    inference,
    speech_input,
    transcribe,
)
from speechbrain_cald.tasks import CTCASR, CausalLM, SequenceClassification, UtteranceClassification

VOCAB = ["<blank>", "|", "a", "b", "c", "d", "e", "f", "g", "h"]
MAMBA2_SMALL = {"mixer_config": {"headdim": 8, "d_state": 6, "chunk_size": 8}}
pytestmark = pytest.mark.filterwarnings("ignore:Mamba2 in_proj width:UserWarning")


def tiny_student(cls, norm="layer"):
    """2-layer width-32 wav2vec2 (total stride 320 as wav2vec2-base) as a BiMamba2 student."""
    config = Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16, 16),
        conv_stride=(5, 8, 8),
        conv_kernel=(10, 8, 8),
        num_feat_extract_layers=3,
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=4,
        feat_extract_norm=norm,
        vocab_size=len(VOCAB),
    )
    teacher = cls(config).eval()
    speech_input.attach_feature_extractor(teacher, speech_input.feature_extractor_for())
    student, _ = conversion.convert_to_student(teacher, MAMBA2_SMALL)
    return student.eval()


def encode(model, wavs, lens=None):
    """The model's output on raw waveforms through the speech input path of training."""
    lens = torch.ones(wavs.shape[0]) if lens is None else lens
    with torch.no_grad():
        return speech_input.speech_model_forward(model, wavs, lens)


def run_fresh(tmp_path, code):
    """Run `code` in a new interpreter; it sees `folder`, `savedir`, `wavs` and `out`
    (a .pt file it writes), whose content is returned."""
    setup = (
        "import torch\nfrom speechbrain_cald import inference\n"
        f"folder, savedir = {str(tmp_path / 'export')!r}, {str(tmp_path / 'fresh')!r}\n"
        f"out = {str(tmp_path / 'out.pt')!r}\n"
        f"wavs = torch.load({str(tmp_path / 'wavs.pt')!r}, weights_only=True)\n"
    )
    subprocess.run([sys.executable, "-c", setup + code], check=True, timeout=120)
    return torch.load(tmp_path / "out.pt", weights_only=True)


@pytest.fixture
def wavs(tmp_path):
    """Two utterances (0.5 s and 0.35 s at 16 kHz), right-padded; also saved for run_fresh."""
    wavs = torch.randn(2, 8000)
    wavs[1, 5600:] = 0
    batch = (wavs, torch.tensor([1.0, 0.7]))
    torch.save(batch, tmp_path / "wavs.pt")
    return batch


def test_asr_export_reload(tmp_path, wavs):
    student = tiny_student(Wav2Vec2ForCTC)
    inference.export_inference_folder(tmp_path / "export", CTCASR(VOCAB), student)
    logits = encode(student, wavs[0][:1])[0].logits[0]
    best_path = torch.unique_consecutive(logits.argmax(-1)).tolist()
    expected = [i for i in best_path if i != 0]

    asr = inference.ASR.from_hparams(source=str(tmp_path / "export"), savedir=tmp_path / "in")
    words, tokens = asr.transcribe_batch(*wavs)
    assert tokens[0] == expected
    assert words[0] == "".join(VOCAB[i] for i in expected).replace("|", " ")
    # The stock EncoderASR loads the folder too, in a fresh process, with the same result.
    fresh = run_fresh(
        tmp_path,
        "from speechbrain.inference.ASR import EncoderASR\n"
        "asr = EncoderASR.from_hparams(source=folder, savedir=savedir)\n"
        "torch.save(asr.transcribe_batch(*wavs)[1], out)\n",
    )
    assert fresh == tokens
    # The HF model inside the interface saves and reloads without the teacher.
    asr.mods.encoder.model.save_pretrained(tmp_path / "hf")
    reloaded = conversion.from_pretrained(tmp_path / "hf").eval()
    torch.testing.assert_close(encode(reloaded, wavs[0][:1])[0].logits[0], logits)


def test_classifier_export_reload(tmp_path, wavs):
    student = tiny_student(Wav2Vec2Model)
    task = UtteranceClassification({"scenario": 3, "action": 4})
    heads = task.make_heads(student.config)
    labels = {"scenario": ["alarm", "music", "news"], "action": ["set", "play", "stop", "query"]}
    inference.export_inference_folder(tmp_path / "export", task, student, heads, labels)
    pooled = encode(student, wavs[0][:1])[0].last_hidden_state.mean(1)
    with torch.no_grad():
        expected = {k: labels[k][head(pooled).argmax(-1).item()] for k, head in heads.items()}

    fresh = run_fresh(
        tmp_path,
        "clf = inference.load_inference_folder(folder, savedir)\n"
        "res = {h: clf.classify_batch(*wavs, head=h) for h in ('scenario', 'action')}\n"
        "torch.save({'emb': clf.encode_batch(*wavs),\n"
        "            'labels': {h: r[3] for h, r in res.items()},\n"
        "            'scores': {h: r[1] for h, r in res.items()}}, out)\n",
    )
    assert {k: v[0] for k, v in fresh["labels"].items()} == expected
    clf = inference.SpeechClassifier.from_hparams(
        source=str(tmp_path / "export"), savedir=tmp_path / "in"
    )
    torch.testing.assert_close(fresh["emb"], clf.encode_batch(*wavs))
    torch.testing.assert_close(fresh["emb"][0], pooled[0])
    log_probs, score, index, text = clf.classify_batch(*wavs)  # default: first head
    assert text == fresh["labels"]["scenario"]
    torch.testing.assert_close(score, fresh["scores"]["scenario"])


@pytest.mark.parametrize("norm", ["layer", "group"])
@pytest.mark.parametrize("n_samples", [400, 1599, 16000, 16000 * 3 + 123])
def test_chunked_features_equal_whole(n_samples, norm):
    """Chunks of 7 frames (uneven last chunk) give the whole-waveform features, for
    per-frame LayerNorm and for the first layer's GroupNorm over the whole waveform
    (statistics from the input windows' moments, in float64).

    Tolerance: float32, atol/rtol 1e-5 (convolutions over inputs of different length
    may sum in a different order; GroupNorm's statistics are summed differently).
    """
    model = tiny_student(Wav2Vec2Model, norm=norm)
    if norm == "group":  # non-trivial affine and conv bias: statistics must include them
        first = model.feature_extractor.conv_layers[0]
        torch.nn.init.normal_(first.layer_norm.weight)
        torch.nn.init.normal_(first.layer_norm.bias)
        first.conv.bias = torch.nn.Parameter(torch.randn(first.conv.out_channels))
    wav = torch.randn(2, n_samples) * torch.tensor([[1.0], [3.0]]) + 0.5
    encoder = model.feature_extractor
    with torch.no_grad():
        whole = encoder(wav)
        with feature_encoder.exact_feature_encoder(model, chunk_frames=7):
            chunked = encoder(wav)
    assert "forward" not in vars(encoder)  # restored
    assert "forward" not in vars(encoder.conv_layers[0].layer_norm)
    assert chunked.shape == whole.shape
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def asr_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("asr")
    inference.export_inference_folder(folder, CTCASR(VOCAB), tiny_student(Wav2Vec2ForCTC))
    return folder


@pytest.fixture(scope="module")
def asr(asr_folder):
    return inference.ASR.from_hparams(source=str(asr_folder), savedir=asr_folder / "save")


def test_bad_audio_errors_name_the_file(tmp_path, asr):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF not really a wave file")
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(0, dtype=np.int16), 16000)
    silent = tmp_path / "silent.flac"
    soundfile.write(silent, np.zeros(16000, dtype=np.int16), 16000)
    broken = tmp_path / "nan.wav"
    soundfile.write(broken, np.array([0.1, np.nan, 0.2] * 800, dtype=np.float32), 16000, "FLOAT")
    cases = [(corrupt, "unreadable"), (empty, "empty"), (silent, "silent"), (broken, "non-finite")]
    for path, reason in cases:
        with pytest.raises(ValueError, match=f"{reason}.*") as err:
            asr.transcribe_file(str(path))
        assert str(path) in str(err.value)


def test_8khz_stereo_int16_is_resampled_and_mixed(tmp_path, asr):
    left = np.random.default_rng(0).normal(0, 3000, 4000)
    stereo = np.stack([left, -0.5 * left], 1).astype(np.int16)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, stereo, 8000, subtype="PCM_16")
    signal = asr.load_audio(str(path))
    assert signal.shape == (8000,)  # 0.5 s at 16 kHz, mono
    mono = torch.from_numpy(stereo.astype(np.float32) / 32768).mean(1)
    expected = torch.from_numpy(resample_poly(mono.numpy(), 2, 1))  # the project's resampler
    torch.testing.assert_close(signal, expected, atol=1e-6, rtol=0)
    assert isinstance(asr.transcribe_file(str(path)), str)


def word_tokenizer(words):
    """A tokenizers.Tokenizer over whitespace-split `words` (ids 0.. in order)."""
    tokenizer = tokenizers.Tokenizer(
        tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>")
    )
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = tokenizers.decoders.WordPiece()  # joins words with spaces
    return tokenizer


WORDS = ["<pad>", "<unk>", "<s>", "</s>", *[f"w{i}" for i in range(46)]]


def test_text_classifier_export_reload(tmp_path):
    config = RobertaConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=len(WORDS),
        max_position_embeddings=40,
        num_labels=3,
        pad_token_id=0,
    )
    teacher = RobertaForSequenceClassification(config).eval()
    student, _ = conversion.convert_to_student(teacher, {"mixer_config": {"k": 8}})
    student.eval()
    texts = ["w1 w2 w3 w4 w5", "w7 w8 w9"]
    inference.export_inference_folder(
        tmp_path / "export",
        SequenceClassification(),
        student,
        label_encoders=["neg", "neu", "pos"],
        tokenizer=word_tokenizer(WORDS),
    )
    with torch.no_grad():
        expected = student(input_ids=torch.tensor([[5, 6, 7, 8, 9]])).logits.argmax(-1).item()
    torch.save(None, tmp_path / "wavs.pt")
    fresh = run_fresh(
        tmp_path,
        "clf = inference.load_inference_folder(folder, savedir)\n"
        f"torch.save(clf.classify_text({texts!r})[3], out)\n",
    )
    assert fresh[0] == ["neg", "neu", "pos"][expected]
    # the speech CLI on this text folder: one line, status 2
    wav = tmp_path / "a.wav"
    soundfile.write(wav, np.random.default_rng(0).normal(0, 0.1, 16000), 16000)
    argv = [str(tmp_path / "export"), str(wav), "--savedir", str(tmp_path / "cli")]
    with pytest.raises(SystemExit) as exit_info:
        transcribe.main(argv)
    assert exit_info.value.code == 2


def test_text_generator_export_reload(tmp_path):
    config = GPTNeoXConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=len(WORDS),
        max_position_embeddings=64,
    )
    student, _ = conversion.convert_to_student(
        GPTNeoXForCausalLM(config).eval(), {"mixer_config": {"d_state": 4, "chunk_size": 8}}
    )
    student.eval()
    inference.export_inference_folder(
        tmp_path / "export", CausalLM(), student, tokenizer=word_tokenizer(WORDS)
    )
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        for _ in range(4):  # greedy, whole sequence re-run each step
            next_id = student(input_ids=ids, use_cache=False).logits[0, -1].argmax()
            ids = torch.cat([ids, next_id.view(1, 1)], 1)
    expected = " ".join(WORDS[i] for i in ids[0, 3:])
    torch.save(None, tmp_path / "wavs.pt")
    fresh = run_fresh(
        tmp_path,
        "lm = inference.load_inference_folder(folder, savedir)\n"
        "torch.save(lm.generate('w1 w2 w3', max_new_tokens=4), out)\n",
    )
    assert fresh == expected


def test_cli_reports_bad_files_and_goes_on(tmp_path, asr_folder, capsys):
    good, silent = tmp_path / "good.wav", tmp_path / "silent.wav"
    soundfile.write(good, np.random.default_rng(0).normal(0, 0.1, 48000), 16000)
    soundfile.write(silent, np.zeros(1600), 16000)
    argv = [str(asr_folder), str(silent), str(good), "--savedir", str(tmp_path / "save")]
    assert transcribe.main([*argv, "--progress-after", "1"]) == 1
    out, err = capsys.readouterr()
    assert out.startswith(f"{good}\t") and len(out.splitlines()) == 1
    assert f"audio file {silent} is silent" in err
    assert "CNN features" in err  # progress bar for the 3 s file


def test_head_outputs_beyond_the_training_labels_decode_as_unused(tmp_path):
    """A recipe head sized for the full corpus, trained on fewer labels, still loads
    (``expect_len`` holds) and every output index decodes."""
    student = tiny_student(Wav2Vec2Model)
    task = UtteranceClassification({"speaker": 4})
    heads = task.make_heads(student.config)
    with pytest.raises(ValueError, match="5 labels for a head with 4 outputs"):
        inference.export_inference_folder(
            tmp_path / "bad", task, student, heads, {"speaker": "abcde"}
        )
    inference.export_inference_folder(tmp_path / "export", task, student, heads, {"speaker": "ab"})
    clf = inference.SpeechClassifier.from_hparams(
        source=str(tmp_path / "export"), savedir=tmp_path / "in"
    )
    decoded = clf.hparams.label_encoders["speaker"].decode_ndim([0, 1, 2, 3])
    assert decoded == ["a", "b", "<unused_2>", "<unused_3>"]
    # the padding outputs are never predicted nor listed, even when they score highest
    with torch.no_grad():
        clf.mods.heads["speaker"].bias.copy_(torch.tensor([0.0, 0.0, 50.0, 50.0]))
    wavs = torch.randn(3, 16000)
    log_probs, _, index, labels = clf.classify_batch(wavs)
    assert set(labels) <= {"a", "b"} and index.max() <= 1
    assert torch.isinf(log_probs[:, 2:]).all() and torch.allclose(
        log_probs.exp().sum(-1), torch.ones(3)
    )
    assert [len(row) for row in clf.top_k(wavs, k=4)] == [2, 2, 2]
    with pytest.raises(ValueError, match="k must be >= 1"):
        clf.top_k(wavs, k=0)


@pytest.mark.parametrize("k", ["0", "-2"])
def test_cli_top_k_below_one_is_one_line_and_status_2(tmp_path, asr_folder, capsys, k):
    wav = tmp_path / "a.wav"
    soundfile.write(wav, np.random.default_rng(0).normal(0, 0.1, 16000), 16000)
    with pytest.raises(SystemExit) as exit_info:
        transcribe.main([str(asr_folder), str(wav), "--top-k", k])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: --top-k {k}: must be >= 1\n"


@pytest.mark.parametrize("damage", ["empty", "partial", "foreign", "garbage", "hostile"])
def test_an_exported_folder_with_damaged_weights_is_refused(tmp_path, asr_folder, damage):
    """SpeechBrain's transfer loads non-strictly (missing weights left random, with a log
    warning): an empty, partial or foreign weight file must be an error naming it, on
    both loading paths, and the default path refuses any change to a listed file."""
    import shutil

    folder = tmp_path / "export"
    shutil.copytree(asr_folder, folder, ignore=shutil.ignore_patterns("save"))
    state = safetensors.torch.load_file(folder / "encoder.ckpt")
    names = sorted(state)
    changed = {
        "empty": {},
        "partial": {k: state[k] for k in names[: len(names) // 2]},
        "foreign": {**state, "model.extra.weight": torch.zeros(2)},
    }.get(damage)
    if damage == "garbage":
        (folder / "encoder.ckpt").write_bytes(b"\x00not a checkpoint" * 10)
    elif damage == "hostile":  # a pickle that would run code on a plain torch.load
        torch.save({"x": Hostile()}, folder / "encoder.ckpt")
    else:
        safetensors.torch.save_file(changed, folder / "encoder.ckpt")
    with pytest.raises(ValueError, match=r"encoder\.ckpt changed since export"):
        inference.load_inference_folder(str(folder))
    with pytest.raises(SystemExit) as exit_info:  # the CLI: one line, status 2
        transcribe.main([str(folder), str(folder / "none.wav")])
    assert exit_info.value.code == 2
    # The YAML path (no digests) and a description re-signed to match: still refused.
    match = r"encoder\.ckpt: not (the weights of this model|a readable weights file)"
    with pytest.raises(ValueError, match=match):
        inference.load_inference_folder(str(folder), tmp_path / "save", trust_yaml=True)
    resign(folder)
    match = r"encoder\.ckpt: not (the weights of this model|a safetensors weights file)"
    with pytest.raises(ValueError, match=match):
        inference.load_inference_folder(str(folder))


def resign(folder):
    """Recompute the digests of `folder`'s description, as a forger would."""
    description = json.loads((folder / exports.SAFE_CONFIG).read_text())
    del description["format"], description["files"]
    exports.write_safe_config(folder, description)


class Hostile:
    def __reduce__(self):
        return (os.system, ("echo hostile",))


def test_classifier_heads_with_missing_weights_are_refused(tmp_path):
    student = tiny_student(Wav2Vec2Model)
    task = UtteranceClassification({"speaker": 2})
    heads = task.make_heads(student.config)
    folder = tmp_path / "export"
    inference.export_inference_folder(folder, task, student, heads, {"speaker": "ab"})
    exports.save_weights({"speaker.weight": heads["speaker"].weight}, folder / "heads.ckpt")
    resign(folder)
    with pytest.raises(ValueError, match=r"heads\.ckpt: not the weights of this model"):
        inference.load_inference_folder(str(folder))
    with pytest.raises(ValueError, match=r"heads\.ckpt: not the weights of this model"):
        inference.load_inference_folder(str(folder), tmp_path / "save", trust_yaml=True)


def test_an_interrupted_export_leaves_the_previous_folder_whole(tmp_path, monkeypatch):
    """Ctrl-C half-way through a new export: the folder still holds the previous export,
    file for file, and still loads; no partial folder is left behind."""
    folder = tmp_path / "export"
    inference.export_inference_folder(folder, CTCASR(VOCAB), tiny_student(Wav2Vec2ForCTC))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def interrupted(self, partial, *args, **kwargs):
        (Path(partial) / "tokenizer.ckpt").write_text("half-written\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(CTCASR, "export_inference", interrupted)
    with pytest.raises(KeyboardInterrupt):
        inference.export_inference_folder(folder, CTCASR(VOCAB), tiny_student(Wav2Vec2ForCTC))
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    monkeypatch.undo()
    inference.load_inference_folder(str(folder), tmp_path / "save")


def test_cli_reports_a_file_too_short_for_the_model_and_goes_on(tmp_path, asr_folder, capsys):
    short, good = tmp_path / "short.wav", tmp_path / "good.wav"
    soundfile.write(short, np.random.default_rng(0).normal(0, 0.1, 100), 16000)
    soundfile.write(good, np.random.default_rng(1).normal(0, 0.1, 16000), 16000)
    argv = [str(asr_folder), str(short), str(good), "--savedir", str(tmp_path / "save")]
    assert transcribe.main(argv) == 1
    out, err = capsys.readouterr()
    assert out.startswith(f"{good}\t")
    too_short = "utterance 0: 100 samples are too short for this model"
    assert err.startswith(f"error: {short}: {too_short}") and err.count("\n") == 1


def test_evaluate_on_a_manifest_with_a_bad_file_leaves_no_results(tmp_path, asr_folder, capsys):
    """speechbrain_cald.evaluate: a missing audio file is one line naming it (status 2)
    and no results folder is left; a good manifest writes metrics.json once, and the
    same name again is refused."""
    from speechbrain_cald import evaluate

    good = tmp_path / "good.wav"
    soundfile.write(good, np.random.default_rng(0).normal(0, 0.1, 16000), 16000)
    manifest = tmp_path / "test.csv"
    rows = f"ID,duration,wav,wrd\na,1.0,{good},ab\nb,1.0,{tmp_path / 'gone.wav'},ab\n"
    manifest.write_text(rows)
    out = tmp_path / "results" / "other"
    argv = [str(asr_folder), str(manifest), "--name", "other", "--out", str(out)]
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(argv)
    assert exit_info.value.code == 2 and "gone.wav" in capsys.readouterr().err
    assert not out.exists() and os.listdir(tmp_path / "results") == []
    manifest.write_text(rows.splitlines()[0] + "\n" + rows.splitlines()[1] + "\n")
    assert evaluate.main(argv) == 0
    assert json.loads((out / "metrics.json").read_text())["rows"] == 1
    with pytest.raises(SystemExit):
        evaluate.main(argv)


@pytest.fixture(params=["current", "without_encoder_blank"])
def any_asr(request, asr, asr_folder, tmp_path):
    """The exported ASR, and the same folder as exported before the encoder carried the
    CTC blank (its hyperparams.yaml without the encoder's `blank_index`, and no
    cald_inference.json yet: loaded through the YAML)."""
    if request.param == "current":
        return asr
    old = tmp_path / "old"
    shutil.copytree(asr_folder, old, ignore=shutil.ignore_patterns("save", exports.SAFE_CONFIG))
    hparams = (old / inference.HPARAMS_FILE).read_text()
    assert hparams.count("  blank_index: 0\n") == 1
    (old / inference.HPARAMS_FILE).write_text(hparams.replace("  blank_index: 0\n", ""))
    return inference.load_inference_folder(old, savedir=tmp_path / "save", trust_yaml=True)


def test_padding_frames_decode_nothing(any_asr):
    """SpeechBrain's ctc_greedy_decode turns relative lengths into frame counts by
    rounding, and may read one frame past an utterance's end: padding frames must be the
    blank with probability 1, so a padded batch transcribes as each utterance alone;
    also from a folder exported before the encoder carried the blank."""
    from speechbrain.decoders import ctc_greedy_decode

    asr = any_asr

    model = asr.mods.encoder.model
    longest = 16000
    frames = int(model._get_feat_extract_output_lengths(torch.tensor(longest)))
    # lengths whose rounded frame count overshoots their true one (the reader's bug)
    lengths = [
        n
        for n in range(4000, longest, 37)
        if round(n / longest * frames)
        > int(model._get_feat_extract_output_lengths(torch.tensor(n)))
    ][:3]
    assert lengths, "no length where rounding overshoots: the test would prove nothing"
    gen = torch.Generator().manual_seed(4)
    wavs = torch.zeros(len(lengths) + 1, longest)
    wavs[0] = torch.randn(longest, generator=gen)
    for row, n in enumerate(lengths, start=1):
        wavs[row, :n] = torch.randn(n, generator=gen)
    rel = torch.tensor([1.0] + [n / longest for n in lengths])
    log_probs = asr.encode_batch(wavs, rel)
    for row, n in enumerate(lengths, start=1):
        true = int(model._get_feat_extract_output_lengths(torch.tensor(n)))
        assert torch.equal(
            log_probs[row, true:].argmax(-1), torch.zeros_like(log_probs[row, true:, 0]).long()
        )
        assert torch.all(log_probs[row, true:, 0] == 0)
        alone = asr.transcribe_batch(wavs[row : row + 1, :n], torch.ones(1))[0][0]
        assert asr.transcribe_batch(wavs, rel)[0][row] == alone
    assert ctc_greedy_decode(log_probs, rel, blank_id=0)  # the reader the test is about


def test_mixer_options_travel_with_the_exported_model(tmp_path, wavs):
    """`conversion.set_mixer_options` (a cap on the Mamba2 heads' memory) changes the
    student's output, is written into the exported folder and is what it reloads with;
    `load_inference_folder(mixer_options=...)` overrides it; a field that shapes
    parameters, a bad value or a model without mixers is refused and changes nothing."""
    from speechbrain_cald import evaluate

    student = tiny_student(Wav2Vec2ForCTC)
    wav = wavs[0][:1]
    plain = encode(student, wav)[0].logits
    conversion.set_mixer_options(student, max_timescale=2.0)
    capped = encode(student, wav)[0].logits
    assert (capped - plain).abs().max() > 1e-3 * plain.abs().max()
    inference.export_inference_folder(tmp_path / "export", CTCASR(VOCAB), student)

    def reloaded(**kwargs):
        interface = inference.load_inference_folder(tmp_path / "export", **kwargs)
        return encode(inference.interface_model(interface), wav)[0].logits

    torch.testing.assert_close(reloaded(), capped)
    torch.testing.assert_close(reloaded(mixer_options={"max_timescale": None}), plain)
    with pytest.raises(ValueError, match=r"not settable.*'max_timescale'"):
        conversion.set_mixer_options(student, d_state=4)
    with pytest.raises(ValueError, match="max_timescale -1"):
        conversion.set_mixer_options(student, max_timescale=-1)
    with pytest.raises(ValueError, match="export.*not settable"):
        reloaded(mixer_options={"headdim": 4})
    torch.testing.assert_close(encode(student, wav)[0].logits, capped)  # unchanged
    transformer = Wav2Vec2ForCTC(
        Wav2Vec2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    )
    with pytest.raises(ValueError, match="not a CALD student has no mixers"):
        conversion.set_mixer_options(transformer, max_timescale=2.0)
    assert evaluate.parse_options(["max_timescale=50", "backend=torch"]) == {
        "max_timescale": 50,
        "backend": "torch",
    }
    with pytest.raises(ValueError, match="KEY=VALUE"):
        evaluate.parse_options(["max_timescale"])
