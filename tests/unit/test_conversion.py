"""Conversion of tiny HF transformers into CALD students (CALD_METHOD.md section 3)."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    GPT2Config,
    GPT2Model,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    RobertaConfig,
    RobertaForSequenceClassification,
    Wav2Vec2Config,
    Wav2Vec2ForCTC,
    Wav2Vec2ForSequenceClassification,
)

from speechbrain_cald.conversion import (
    StudentConfig,
    build_student_from_config,
    convert_to_student,
    from_pretrained,
    load_student,
)
from speechbrain_cald.losses import check_layer_compatibility

# Lobe sizes small enough for hidden size 32 (Mamba2 in_proj width 2*32 + 2*6 + 4 = 80,
# a multiple of 8 as mamba-ssm wants; the attention-init shapes give 130 and warn).
MAMBA2_SMALL = {"headdim": 8, "d_state": 6, "chunk_size": 8}
WIDTH_WARNING = "ignore:Mamba2 in_proj width:UserWarning"
LINFORMER_SMALL = {"k": 8}
MAMBA_SMALL = {"d_state": 4, "chunk_size": 8}


def tiny_wav2vec2(cls=Wav2Vec2ForCTC, attn_implementation="sdpa"):
    """2 layers, width 32; per-frame LayerNorm in the CNN so padding cannot leak."""
    config = Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16),
        conv_stride=(5, 2),
        conv_kernel=(10, 3),
        num_feat_extract_layers=2,
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=4,
        feat_extract_norm="layer",
        vocab_size=10,
        num_labels=3,
    )
    model = cls(config).eval()
    model.set_attn_implementation(attn_implementation)
    return model


def tiny_roberta(attn_implementation="sdpa"):
    config = RobertaConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=50,
        max_position_embeddings=40,
        num_labels=3,
    )
    model = RobertaForSequenceClassification(config).eval()
    model.set_attn_implementation(attn_implementation)
    return model


def tiny_gpt_neox():
    config = GPTNeoXConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=50,
        max_position_embeddings=64,
    )
    return GPTNeoXForCausalLM(config).eval()


def audio_batch(lengths=(1600, 1600)):
    """Raw audio (batch, samples) right-padded with zeros, and its 0/1 mask."""
    values = torch.zeros(len(lengths), max(lengths))
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for b, n in enumerate(lengths):
        values[b, :n] = torch.randn(n)
        mask[b, :n] = 1
    return {"input_values": values, "attention_mask": mask}


def token_batch(lengths=(12, 12)):
    """Token ids (batch, time) right-padded with id 1 (RoBERTa's pad), and its mask."""
    ids = torch.ones(len(lengths), max(lengths), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, n in enumerate(lengths):
        ids[b, :n] = torch.randint(3, 50, (n,))
        mask[b, :n] = 1
    return {"input_ids": ids, "attention_mask": mask}


# name -> (teacher builder, student config, input builder, replaced-parameter suffixes)
FAMILIES = {
    "wav2vec2": (
        tiny_wav2vec2,
        {"mixer_config": MAMBA2_SMALL},
        audio_batch,
        {f"{proj}_proj.{kind}" for proj in ("q", "k", "v", "out") for kind in ("weight", "bias")},
    ),
    "bert": (
        tiny_roberta,
        {"mixer_config": {**LINFORMER_SMALL, "sharing": "layer"}},
        token_batch,
        set(),
    ),
    "gpt_neox": (
        tiny_gpt_neox,
        {"mixer_config": MAMBA_SMALL},
        token_batch,
        {"query_key_value.weight", "dense.weight"},
    ),
}
EXPECTED_MIXER = {"wav2vec2": "bimamba2", "bert": "linformer", "gpt_neox": "mamba"}


def outputs(model, inputs):
    with torch.no_grad():
        return model(**inputs, output_hidden_states=True)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_non_attention_weights_are_bit_identical_and_teacher_untouched(family):
    build, student_config, _, replaced_suffixes = FAMILIES[family]
    teacher = build()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student, report = convert_to_student(teacher, student_config)

    assert report.family == family and report.mixer == EXPECTED_MIXER[family]
    student_state = student.state_dict()
    for name, tensor in teacher.state_dict().items():
        assert torch.equal(tensor, before[name]), f"teacher changed: {name}"
        if name not in report.replaced:
            assert torch.equal(student_state[name], tensor), f"not kept: {name}"
    assert set(report.kept).isdisjoint(report.replaced)
    assert all(".attention." in name for name in report.replaced + report.new)
    assert replaced_suffixes <= {name.split("attention.")[-1] for name in report.replaced}
    assert all(n in student_state for n in report.kept)
    assert report.new and not report.from_attention
    assert not any(module.training for module in student.modules())  # teacher was in eval()
    assert type(teacher.base_model.config) is type(student.config)
    assert "cald_student" not in teacher.config.to_dict()
    assert student.config.cald_student["mixer"] == EXPECTED_MIXER[family]
    text = str(report)
    assert report.architecture in text and "replaced" in text and "new" in text


def test_linformer_keeps_query_key_value_and_output():
    teacher = tiny_roberta()
    _, report = convert_to_student(teacher, {"mixer_config": LINFORMER_SMALL})
    assert report.replaced == []
    for suffix in (
        "self.query.weight",
        "self.key.bias",
        "self.value.weight",
        "output.dense.weight",
    ):
        assert f"roberta.encoder.layer.1.attention.{suffix}" in report.kept


@pytest.mark.parametrize("family", list(FAMILIES))
def test_forward_gives_every_hidden_state_and_teacher_shaped_logits(family):
    build, student_config, make_inputs, _ = FAMILIES[family]
    teacher = build()
    student, _ = convert_to_student(teacher, student_config)
    inputs = make_inputs()
    got, want = outputs(student, inputs), outputs(teacher, inputs)
    assert len(got.hidden_states) == teacher.config.num_hidden_layers + 1
    assert [h.shape for h in got.hidden_states] == [h.shape for h in want.hidden_states]
    assert got.logits.shape == want.logits.shape
    assert torch.equal(got.hidden_states[0], want.hidden_states[0])  # embeddings untouched
    assert not torch.allclose(got.hidden_states[-1], want.hidden_states[-1])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_training_step_reaches_every_new_parameter(family):
    build, student_config, make_inputs, _ = FAMILIES[family]
    teacher = build()
    teacher.config.layerdrop = 0.0  # wav2vec2 would otherwise skip whole layers
    student, report = convert_to_student(teacher, student_config)
    student.train()
    student(**make_inputs()).logits.pow(2).mean().backward()
    params = dict(student.named_parameters(remove_duplicate=False))
    assert [name for name in report.new if params[name].grad is None] == []


@pytest.mark.parametrize("mixer", ["bimamba2", "bimamba2_shared"])
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_wav2vec2_padded_utterance_matches_it_alone(attn_implementation, mixer):
    teacher = tiny_wav2vec2(Wav2Vec2ForCTC, attn_implementation)
    student, _ = convert_to_student(teacher, {"mixer": mixer, "mixer_config": MAMBA2_SMALL})
    batch = audio_batch((1600, 1000))
    padded = outputs(student, batch)
    alone = outputs(student, {k: v[1:, :1000] for k, v in batch.items()})
    frames = alone.hidden_states[0].shape[1]
    for h_padded, h_alone in zip(padded.hidden_states, alone.hidden_states):
        torch.testing.assert_close(h_padded[1:, :frames], h_alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["bert", "gpt_neox"])
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_text_padded_sequence_matches_it_alone(family, attn_implementation):
    build, student_config, _, _ = FAMILIES[family]
    teacher = build()
    teacher.set_attn_implementation(attn_implementation)
    student, _ = convert_to_student(teacher, student_config)
    batch = token_batch((12, 7))
    padded = outputs(student, batch)
    alone = outputs(student, {k: v[1:, :7] for k, v in batch.items()})
    torch.testing.assert_close(
        padded.logits[1:, :7] if family == "gpt_neox" else padded.logits[1:],
        alone.logits,
        atol=1e-5,
        rtol=1e-5,
    )
    torch.testing.assert_close(
        padded.hidden_states[-1][1:, :7], alone.hidden_states[-1], atol=1e-5, rtol=1e-5
    )


def test_left_padding_is_refused_by_bidirectional_students():
    """(Causal students read left-padded prompts exactly: tests/unit/test_generation.py.)"""
    student, _ = convert_to_student(tiny_roberta(), FAMILIES["bert"][1])
    batch = token_batch((12, 7))
    batch = {k: v.flip(-1) for k, v in batch.items()}
    with pytest.raises(ValueError, match="right padding"):
        outputs(student, batch)


@pytest.mark.parametrize(
    "family,student_config",
    [
        ("wav2vec2", {"mixer_config": MAMBA2_SMALL}),
        ("wav2vec2", {"mixer_config": {"chunk_size": 8}, "init": "attention"}),
        ("wav2vec2", {"mixer": "bimamba2_shared", "mixer_config": MAMBA2_SMALL}),
        ("bert", {"mixer_config": {**LINFORMER_SMALL, "sharing": "layer"}}),
        ("bert", {"mixer_config": {**LINFORMER_SMALL, "sharing": "key_value"}}),
        ("gpt_neox", {"mixer_config": MAMBA_SMALL}),
        ("gpt_neox", {"mixer": "mamba2", "mixer_config": MAMBA2_SMALL}),
    ],
)
@pytest.mark.filterwarnings(WIDTH_WARNING)
def test_save_pretrained_and_from_pretrained_round_trip(tmp_path, family, student_config):
    build, _, make_inputs, _ = FAMILIES[family]
    student, _ = convert_to_student(build(), student_config)
    student.save_pretrained(tmp_path)
    stored = json.loads((tmp_path / "config.json").read_text())["cald_student"]
    assert stored == student.config.cald_student

    loaded = from_pretrained(tmp_path).eval()
    assert type(loaded) is type(student)
    assert loaded.config.cald_student == student.config.cald_student
    inputs = make_inputs()
    got, want = outputs(loaded, inputs), outputs(student, inputs)
    assert torch.equal(got.logits, want.logits)
    for h_got, h_want in zip(got.hidden_states, want.hidden_states):
        assert torch.equal(h_got, h_want)


def test_linformer_layer_sharing_survives_reload(tmp_path):
    config = {"mixer_config": {**LINFORMER_SMALL, "sharing": "layer"}}
    student, _ = convert_to_student(tiny_roberta(), config)
    student.save_pretrained(tmp_path)
    loaded = from_pretrained(tmp_path)

    layers = [
        dict(layer.attention.self.named_parameters()) for layer in loaded.roberta.encoder.layer
    ]
    names = [name for name in layers[0] if name.startswith("projections.")]
    assert names
    for name in names:
        assert layers[0][name] is layers[1][name]
    before = layers[0][names[0]].detach().clone()
    with torch.no_grad():
        layers[0][names[0]].add_(1.0)
    assert torch.equal(layers[1][names[0]], before + 1.0)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_state_dict_round_trips_into_rebuilt_student(family):
    build, student_config, make_inputs, _ = FAMILIES[family]
    student, _ = convert_to_student(build(), student_config)
    fresh = load_student(student.config).eval()
    fresh.load_state_dict(student.state_dict())  # strict, as a SpeechBrain checkpoint does
    inputs = make_inputs()
    assert torch.equal(outputs(fresh, inputs).logits, outputs(student, inputs).logits)


def test_rebuild_does_not_modify_the_given_config():
    student, _ = convert_to_student(tiny_roberta(), {"mixer_config": LINFORMER_SMALL})
    config = student.config
    before = config.to_dict()
    build_student_from_config(config)
    assert config.to_dict() == before


def test_loading_mismatching_weights_names_the_keys(tmp_path):
    student, _ = convert_to_student(tiny_roberta(), {"mixer_config": LINFORMER_SMALL})
    student.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    removed = "roberta.encoder.layer.1.attention.self.projections.E"
    weights.pop(removed)
    weights["bogus.weight"] = torch.zeros(1)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(RuntimeError, match=rf"missing keys \['{removed}'\].*'bogus.weight'"):
        from_pretrained(tmp_path)


def test_loading_with_a_different_sharing_is_refused(tmp_path):
    student, _ = convert_to_student(tiny_roberta(), {"mixer_config": LINFORMER_SMALL})
    student.save_pretrained(tmp_path)  # sharing "none": every layer has its own E and F
    config = json.loads((tmp_path / "config.json").read_text())
    config["cald_student"]["mixer_config"]["sharing"] = "layer"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(RuntimeError, match="tied student keys"):
        from_pretrained(tmp_path)


@pytest.mark.filterwarnings(WIDTH_WARNING)
def test_attention_init_for_wav2vec2():
    teacher = tiny_wav2vec2()
    student, report = convert_to_student(
        teacher, {"init": "attention", "mixer_config": {"chunk_size": 8}}
    )
    mixer_config = student.config.cald_student["mixer_config"]
    shapes = tuple(mixer_config[key] for key in ("ngroups", "d_state", "headdim"))
    assert shapes == (2, 16, 16)  # heads, head size, head size
    for layer_t, layer_s in zip(teacher.wav2vec2.encoder.layers, student.wav2vec2.encoder.layers):
        for mixer in (
            layer_s.attention.mixer.forward_mixer,
            layer_s.attention.mixer.backward_mixer,
        ):
            # in_proj rows: z (32) | x (32) | B (2 * 16) | C (2 * 16) | dt (2 heads)
            assert mixer.in_proj.weight.shape == (32 + 32 + 32 + 32 + 2, 32)
            assert torch.equal(mixer.out_proj.weight, layer_t.attention.out_proj.weight)
    assert len(report.from_attention) == 2 * 2 * 2  # layers x directions x (in_proj, out_proj)
    assert all(name in report.new for name in report.from_attention)
    assert any("bias" in note for note in report.notes)
    assert "from attention: 8 tensors" in str(report)

    shared = {"mixer": "bimamba2_shared", "init": "attention", "mixer_config": {"chunk_size": 8}}
    student, report = convert_to_student(teacher, shared)
    for layer_t, layer_s in zip(teacher.wav2vec2.encoder.layers, student.wav2vec2.encoder.layers):
        mixer = layer_s.attention.mixer
        # in_proj rows: z (32) | x (32) | B (2 * 16) | C (2 * 16) | dt forward, backward (2 + 2)
        assert mixer.in_proj.weight.shape == (32 + 32 + 32 + 32 + 4, 32)
        assert torch.equal(mixer.in_proj.weight[32:64], layer_t.attention.v_proj.weight)
        assert torch.equal(mixer.out_proj.weight, layer_t.attention.out_proj.weight)
    assert len(report.from_attention) == 2 * 2  # layers x (in_proj, out_proj)


def test_sequence_classification_and_auto_mixer():
    teacher = tiny_wav2vec2(Wav2Vec2ForSequenceClassification)
    student, report = convert_to_student(teacher, {"mixer_config": MAMBA2_SMALL})
    assert report.mixer == "bimamba2"
    assert outputs(student, audio_batch((1600, 1200))).logits.shape == (2, 3)


def test_unknown_architecture_is_refused_by_name():
    gpt2 = GPT2Model(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50))
    with pytest.raises(ValueError, match="GPT2Model.*supported: .*Wav2Vec2, HuBERT"):
        convert_to_student(gpt2)


def test_bad_student_configs_are_refused():
    with pytest.raises(ValueError, match="does not fit a wav2vec2 model: the mixer is causal"):
        convert_to_student(tiny_wav2vec2(), {"mixer": "mamba2"})
    with pytest.raises(ValueError, match="does not fit a gpt_neox model: .* bidirectional"):
        convert_to_student(tiny_gpt_neox(), {"mixer": "bimamba2"})
    with pytest.raises(ValueError, match=r"'linformer' needs \['max_len'\] in mixer_config"):
        convert_to_student(tiny_wav2vec2(), {"mixer": "linformer"})  # fits; no max length
    with pytest.raises(ValueError, match="init 'attention'"):
        convert_to_student(tiny_gpt_neox(), {"init": "attention"})
    with pytest.raises(ValueError, match="mixer must be one of"):
        StudentConfig(mixer="transformer")
    with pytest.raises(ValueError, match="unknown StudentConfig keys"):
        StudentConfig.from_dict({"mixer": "auto", "depth": 3})
    with pytest.raises(ValueError, match="taken from the model"):  # checked on conversion
        convert_to_student(tiny_wav2vec2(), StudentConfig(mixer_config={"d_model": 64}))
    config = StudentConfig(mixer="mamba2", mixer_config={"headdim": 8}, init="random")
    assert StudentConfig.from_dict(config.to_dict()) == config


def test_check_layer_compatibility():
    teacher = tiny_roberta()
    student, _ = convert_to_student(teacher, {"mixer_config": LINFORMER_SMALL})
    assert check_layer_compatibility(teacher, student) == [(1, 1), (2, 2)]
    assert check_layer_compatibility(teacher, student, [0, 2]) == [(0, 0), (2, 2)]
    wrapped = torch.nn.DataParallel(student)  # as the Brain may hold it
    assert check_layer_compatibility(teacher, wrapped, [2]) == [(2, 2)]

    deeper = RobertaForSequenceClassification(
        RobertaConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, vocab_size=50)
    )
    with pytest.raises(ValueError, match="layer count: student 2 vs teacher 4"):
        check_layer_compatibility(deeper, student)
    assert check_layer_compatibility(deeper, student, {1: 2, 2: 4}) == [(1, 2), (2, 4)]
    with pytest.raises(ValueError, match=r"layer map: \[\(3, 3\)\]"):
        check_layer_compatibility(teacher, student, [1, 3])
    wider = RobertaForSequenceClassification(
        RobertaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=50)
    )
    with pytest.raises(ValueError, match="hidden size: student 32 vs teacher 64"):
        check_layer_compatibility(wider, student)
