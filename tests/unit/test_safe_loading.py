"""Loading an exported folder executes nothing from it unless asked (issue: security).

The default path (`inference.load_exported`: the CLI, `load_inference_folder`, the
interfaces' `from_hparams`) reads cald_inference.json and safetensors only; the
folder's hyperparams.yaml runs only with ``trust_yaml=True``. A hostile YAML entry here
creates a marker folder when executed, so "nothing ran" is checked, not assumed.
"""

import json
import shutil

import numpy as np
import pytest
import soundfile
import torch
from speechbrain.inference.ASR import EncoderASR
from test_inference import VOCAB, resign, tiny_student
from transformers import Wav2Vec2ForCTC, Wav2Vec2Model

from speechbrain_cald import exports, inference, transcribe
from speechbrain_cald.tasks import CTCASR, UtteranceClassification


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("exported") / "asr"
    inference.export_inference_folder(folder, CTCASR(VOCAB), tiny_student(Wav2Vec2ForCTC))
    return folder


@pytest.fixture
def folder(tmp_path, exported):
    """A private copy of the exported ASR folder, to damage."""
    copy = tmp_path / "asr"
    shutil.copytree(exported, copy)
    return copy


def hostile_yaml(folder, marker):
    """Append an entry to hyperparams.yaml that creates `marker` when the YAML is built."""
    with open(folder / inference.HPARAMS_FILE, "a", encoding="utf-8") as f:
        f.write(f"hostile: !apply:os.makedirs ['{marker}']\n")


def description(folder):
    return json.loads((folder / exports.SAFE_CONFIG).read_text())


def write_description(folder, value):
    (folder / exports.SAFE_CONFIG).write_text(json.dumps(value))


def wav(tmp_path):
    path = tmp_path / "a.wav"
    soundfile.write(path, np.random.default_rng(0).normal(0, 0.1, 16000), 16000)
    return path


def test_every_file_is_listed_and_the_weights_are_safetensors(exported):
    listed = description(exported)["files"]
    on_disk = {p.name for p in exported.iterdir()} - {exports.SAFE_CONFIG}
    assert set(listed) == on_disk
    assert exports.read_weights(exported / "encoder.ckpt")  # safetensors, no pickle allowed


def test_the_default_path_builds_the_same_model_as_the_yaml(tmp_path, exported):
    wavs = torch.randn(2, 8000)
    lens = torch.tensor([1.0, 0.6])
    safe = inference.load_inference_folder(str(exported))
    yaml = inference.load_inference_folder(str(exported), tmp_path / "save", trust_yaml=True)
    stock = EncoderASR.from_hparams(source=str(exported), savedir=tmp_path / "stock")
    assert type(safe) is inference.ASR
    expected = yaml.encode_batch(wavs, lens)
    torch.testing.assert_close(safe.encode_batch(wavs, lens), expected, rtol=0, atol=0)
    torch.testing.assert_close(stock.encode_batch(wavs, lens), expected, rtol=0, atol=0)
    assert safe.tokenizer.lab2ind == yaml.tokenizer.lab2ind
    assert safe.transcribe_batch(wavs, lens)[0] == yaml.transcribe_batch(wavs, lens)[0]


def test_a_changed_yaml_is_refused_and_never_run(tmp_path, folder, capsys):
    marker = tmp_path / "ran"
    hostile_yaml(folder, marker)
    with pytest.raises(ValueError, match=r"hyperparams\.yaml changed since export"):
        inference.load_inference_folder(str(folder))
    with pytest.raises(ValueError, match=r"hyperparams\.yaml changed since export"):
        inference.ASR.from_hparams(source=str(folder))
    with pytest.raises(SystemExit) as exit_info:
        transcribe.main([str(folder), str(wav(tmp_path))])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "hyperparams.yaml changed since export" in err
    # A forger who also re-signs the description: the folder loads, the YAML still
    # never runs (the parts come from this package's code, not from the folder).
    resign(folder)
    inference.load_inference_folder(str(folder))
    assert not marker.exists()
    # The opt-in path runs it: that is what trust_yaml means.
    inference.load_inference_folder(str(folder), tmp_path / "save", trust_yaml=True)
    assert marker.is_dir()


@pytest.mark.parametrize(
    "tamper, message",
    [
        (lambda d: d.update(interface="Evil"), r"interface 'Evil' is not one of"),
        (lambda d: d.update(format="other/9"), r"format 'other/9'"),
        (lambda d: d.update(extra=1), r"keys \[.*'extra'.*\], expected"),
        (lambda d: d["model"].update(target="os.system"), r"`model` must hold exactly"),
        (lambda d: d["files"].pop("encoder.ckpt"), r"encoder\.ckpt is not listed"),
        (lambda d: d["files"].update({"../x": "0"}), r"'\.\./x' is not a plain name"),
        (lambda d: d["files"].update({"gone.ckpt": "0"}), r"gone\.ckpt is missing"),
        (lambda d: d["settings"].pop("blank_index"), r"describes no model .*blank_index"),
        (
            lambda d: d["model"]["config"].update(architectures=["pipeline"]),
            r"'pipeline' is not an HF model",
        ),
    ],
    ids=[
        "interface",
        "format",
        "key",
        "model-key",
        "unlisted",
        "path",
        "missing",
        "settings",
        "class",
    ],
)
def test_a_tampered_description_is_refused_in_one_line(tmp_path, folder, tamper, message):
    value = description(folder)
    tamper(value)
    write_description(folder, value)
    with pytest.raises(ValueError, match=message) as error:
        inference.load_inference_folder(str(folder))
    assert "\n" not in str(error.value)


def test_an_unreadable_description_is_refused(folder):
    (folder / exports.SAFE_CONFIG).write_bytes(b"\xff\xfe{not json")
    with pytest.raises(ValueError, match=r"cald_inference\.json: not a readable description"):
        inference.load_inference_folder(str(folder))


def test_a_folder_without_description_needs_the_explicit_opt_in(tmp_path, folder, capsys):
    """An export made before the description existed (or by stock SpeechBrain): the
    default path names the opt-in instead of running the YAML."""
    (folder / exports.SAFE_CONFIG).unlink()
    marker = tmp_path / "ran"
    hostile_yaml(folder, marker)
    with pytest.raises(ValueError, match=r"holds no cald_inference\.json.*trust_yaml=True"):
        inference.load_inference_folder(str(folder))
    with pytest.raises(SystemExit):
        transcribe.main([str(folder), str(wav(tmp_path))])
    assert "trust_yaml" in capsys.readouterr().err
    assert not marker.exists()
    assert transcribe.main([str(folder), str(wav(tmp_path)), "--trust-yaml"]) == 0
    assert marker.is_dir()


def test_old_pickled_weights_load_only_through_the_trusted_path(tmp_path, folder):
    state = exports.read_weights(folder / "encoder.ckpt")
    torch.save(state, folder / "encoder.ckpt")  # an export from before safetensors
    resign(folder)
    with pytest.raises(ValueError, match=r"encoder\.ckpt: not a safetensors weights file"):
        inference.load_inference_folder(str(folder))
    inference.load_inference_folder(str(folder), tmp_path / "save", trust_yaml=True)


def test_the_interface_class_must_match_the_folder(exported):
    with pytest.raises(ValueError, match=r"is a ASR folder, not SpeechClassifier"):
        inference.SpeechClassifier.from_hparams(source=str(exported))


def test_a_classifier_folder_round_trips_through_the_default_path(tmp_path):
    student = tiny_student(Wav2Vec2Model)
    task = UtteranceClassification({"speaker": 3, "gender": 2})
    heads = task.make_heads(student.config)
    folder = tmp_path / "clf"
    inference.export_inference_folder(
        folder, task, student, heads, {"speaker": "ab", "gender": "fm"}
    )
    wavs, lens = torch.randn(2, 8000), torch.tensor([1.0, 0.7])
    safe = inference.load_inference_folder(str(folder))
    yaml = inference.load_inference_folder(str(folder), tmp_path / "save", trust_yaml=True)
    for head in ("speaker", "gender"):
        ours, theirs = safe.classify_batch(wavs, lens, head), yaml.classify_batch(wavs, lens, head)
        torch.testing.assert_close(ours[0], theirs[0], rtol=0, atol=0)
        assert ours[3] == theirs[3]
    assert safe.hparams.label_encoders["gender"].ind2lab == {0: "f", 1: "m"}


@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_int8_matches_fp32_within_tolerance(tmp_path, kind):
    """The offered CPU option `int8=True` (dynamic int8 linear layers): the encoder's
    output probabilities stay within 5% relative L2 error of fp32 on a padded batch. Not
    exact under padding: activations are quantised with one scale per tensor, so a row's
    output depends on the batch it shares (within the same tolerance; fp32 is exact)."""
    model = tiny_student(Wav2Vec2ForCTC)
    if kind == "teacher":
        model = Wav2Vec2ForCTC(model.config.__class__.from_dict(
            {k: v for k, v in model.config.to_dict().items() if k != "cald_student"}))  # fmt: skip
    folder = tmp_path / "export"
    inference.export_inference_folder(folder, CTCASR(VOCAB), model.eval())
    fp32 = inference.load_inference_folder(str(folder))
    int8 = inference.load_inference_folder(str(folder), int8=True)
    assert any("quantized" in type(m).__module__ for m in int8.mods.encoder.modules())
    wavs, lens = torch.randn(2, 16000), torch.tensor([1.0, 0.55])
    expected, got = fp32.encode_batch(wavs, lens).exp(), int8.encode_batch(wavs, lens).exp()
    assert torch.linalg.norm(got - expected) / torch.linalg.norm(expected) < 0.05
    alone = int8.encode_batch(wavs[1:, :8800], torch.ones(1))[0].exp()
    in_batch = got[1, : alone.shape[0]]
    assert torch.linalg.norm(in_batch - alone) / torch.linalg.norm(alone) < 0.05
    with pytest.raises(ValueError, match="int8: dynamic quantisation runs on the CPU"):
        fp32.device = "cuda"
        inference.quantize_int8(fp32)
