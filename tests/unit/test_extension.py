"""Extending conversion from outside the package: a new mixer and a new source family,
defined here, registered, used to convert a model and to train one CALD step.

Nothing inside `speechbrain_cald` knows GPT-2 or the gated-conv mixer below.
"""

import dataclasses

import pytest
import speechbrain as sb
import torch
import transformers
from speechbrain.dataio.batch import PaddedBatch
from torch import nn

from speechbrain_cald import conversion
from speechbrain_cald import guidance as g
from speechbrain_cald.brain import CALDBrain
from speechbrain_cald.losses import CALDLossWeights
from speechbrain_cald.tasks import CausalLM

# ----------------------------------------------------------------- a new mixer


@dataclasses.dataclass
class GatedConvConfig:
    d_model: int
    kernel: int = 3


class GatedConvMixer(nn.Module):
    """Causal depthwise conv, gated: out_proj(conv(x) * sigmoid(gate(x)))."""

    def __init__(self, config: GatedConvConfig):
        super().__init__()
        d = config.d_model
        self.conv = nn.Conv1d(d, d, config.kernel, groups=d, padding=config.kernel - 1)
        self.gate = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, hidden_states):
        """(batch, time, d) -> (batch, time, d); causal: frame t reads frames <= t."""
        time = hidden_states.shape[1]
        mixed = self.conv(hidden_states.transpose(1, 2))[..., :time].transpose(1, 2)
        return self.out_proj(mixed * torch.sigmoid(self.gate(hidden_states)))


GATED_CONV = conversion.MixerSpec(
    name="gated_conv_test",
    config_class=GatedConvConfig,
    build=lambda config, shared: GatedConvMixer(config),
    causal=True,
)

# ----------------------------------------------------------------- a new family


class GPT2Family(conversion.SourceFamily):
    """GPT-2: each block's `attn` (c_attn, c_proj) becomes a slot; GPT2Block calls it
    as attn(hidden_states, cache=..., attention_mask=..., ...) -> (output, weights)."""

    name = "gpt2_test"
    description = "GPT2Model / GPT2LMHeadModel (model_type 'gpt2')"
    causal = True
    default_mixer = "gated_conv_test"
    slot_attribute = "attn"

    def matches(self, model):
        return getattr(getattr(model, "config", None), "model_type", None) == "gpt2"

    def layers(self, model):
        return model.transformer.h

    def after_conversion(self, model):
        model.config.use_cache = False


@pytest.fixture
def registered():
    """Register the mixer and the family for one test, then remove them again."""
    conversion.register_mixer(GATED_CONV)
    conversion.register_family(GPT2Family())
    yield
    del conversion.MIXERS[GATED_CONV.name], conversion.FAMILIES[GPT2Family.name]


def tiny_gpt2():
    config = transformers.GPT2Config(
        vocab_size=40, n_positions=32, n_embd=16, n_layer=2, n_head=2, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config).eval()


def token_batch(rows):
    return PaddedBatch(
        [{"id": str(i), "tokens": torch.tensor(r, dtype=torch.long)} for i, r in enumerate(rows)]
    )


def test_new_mixer_and_family_convert_and_round_trip(registered, tmp_path):
    teacher = tiny_gpt2()
    student, report = conversion.convert_to_student(teacher)  # "auto": the family's mixer
    assert report.family == "gpt2_test" and report.mixer == "gated_conv_test"
    assert all(".attn." in name for name in report.replaced) and report.new
    teacher_state = teacher.state_dict()
    for name in report.kept:
        assert torch.equal(student.state_dict()[name], teacher_state[name])
    assert isinstance(student.transformer.h[0].attn, conversion.MixerSlot)
    student.save_pretrained(tmp_path)
    reloaded = conversion.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 40, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, student.eval()(ids).logits)


def test_new_mixer_and_family_train_one_cald_step(registered, tmp_path):
    torch.manual_seed(0)
    tiny_gpt2().save_pretrained(tmp_path / "teacher")
    guidance = g.Target(
        str(tmp_path / "teacher"),
        conversion.StudentConfig(mixer="gated_conv_test", mixer_config={"kernel": 4}),
        CALDLossWeights(task=1.0, kd=1.0, ld=15.0),
    )
    brain = CALDBrain(
        opt_class=lambda params: torch.optim.AdamW(params, lr=1e-3),
        hparams={"task": CausalLM(), "guidance": guidance, "distill_skip_last": 1},
        run_opts={"device": "cpu", "noprogressbar": True},
    )
    brain.on_fit_start()
    before = {k: v.clone() for k, v in brain.modules.student.state_dict().items()}
    brain.modules.train()
    brain.on_stage_start(sb.Stage.TRAIN)
    brain.step += 1
    loss = brain.fit_batch(token_batch([[1, 5, 6, 7, 8, 9], [1, 11, 12, 13]]))
    assert torch.isfinite(loss) and brain.optimizer_step == 1
    assert brain.step_terms["kd"] > 0 and brain.step_terms["ld"] > 0
    after = brain.modules.student.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any("attn.mixer.gate" in k for k in changed)


def test_a_registered_mixer_fits_every_family_of_its_direction(registered):
    """Fit is a property (causal or bidirectional), not a list: the causal mixer above
    converts a GPT-NeoX model too, which no code names it for; a bidirectional family
    refuses it, naming the mixers that fit there."""
    from test_conversion import tiny_gpt_neox, tiny_wav2vec2

    student, report = conversion.convert_to_student(tiny_gpt_neox(), {"mixer": GATED_CONV.name})
    assert report.family == "gpt_neox" and report.mixer == GATED_CONV.name
    family = conversion.detect_family(tiny_wav2vec2())
    assert GATED_CONV.name in conversion.fitting_mixers(conversion.FAMILIES["gpt_neox"])
    assert GATED_CONV.name not in conversion.fitting_mixers(family)
    with pytest.raises(ValueError, match="gated_conv_test' does not fit a wav2vec2 model"):
        conversion.convert_to_student(tiny_wav2vec2(), {"mixer": GATED_CONV.name})


def test_the_report_describes_each_mixers_own_initialisation(registered):
    """A mixer with its own attention init states what it copies; BiMamba2's text is
    never printed for it (the families no longer describe mixers)."""
    from test_conversion import tiny_wav2vec2

    @torch.no_grad()
    def init_copy_out(mixer, q, k, v, o, heads):
        mixer.out_proj.weight.copy_(o.weight)
        mixer.out_proj.bias.copy_(o.bias)
        return ["out_proj.weight", "out_proj.bias"]

    spec = dataclasses.replace(
        GATED_CONV,
        name="gated_conv_bidir_test",
        causal=False,
        build=lambda config, shared: BidirectionalGatedConv(config),
        attention_config=lambda sizes, heads, fields: GatedConvConfig(**sizes, **fields),
        init_from_attention=init_copy_out,
        init_note="out_proj <- O, bias included",
    )
    conversion.register_mixer(spec)
    try:
        _, report = conversion.convert_to_student(
            tiny_wav2vec2(), {"mixer": spec.name, "init": "attention"}
        )
        _, bimamba = conversion.convert_to_student(tiny_wav2vec2(), {"init": "attention"})
    finally:
        del conversion.MIXERS[spec.name]
    assert "out_proj <- O, bias included" in report.notes
    assert not any("in_proj" in note for note in report.notes)
    assert conversion.MIXERS["bimamba2"].init_note in bimamba.notes


class BidirectionalGatedConv(GatedConvMixer):
    """The gated conv run over the sequence both ways (a bidirectional test mixer)."""

    def forward(self, hidden_states, attention_mask=None):
        flipped = super().forward(hidden_states.flip(1)).flip(1)
        return super().forward(hidden_states) + flipped


def test_front_end_freezing_is_the_familys(registered):
    """SpeechTask asks the model's family how to freeze its front end: a family without
    HF's freeze_feature_encoder gets a clear error, one that says how is obeyed."""
    from test_conversion import tiny_wav2vec2

    from speechbrain_cald import speech_input
    from speechbrain_cald.tasks import CTCASR

    with pytest.raises(ValueError, match="GPT2LMHeadModel \\(gpt2_test family\\) has no"):
        conversion.freeze_front_end(tiny_gpt2())
    speech = tiny_wav2vec2()
    conversion.freeze_front_end(speech)  # the default: HF's freeze_feature_encoder
    assert not any(p.requires_grad for p in speech.base_model.feature_extractor.parameters())

    original, saved = conversion.FAMILIES["wav2vec2"], dict(conversion.FAMILIES)

    class ProjectionToo(type(original)):
        def freeze_front_end(self, model):
            super().freeze_front_end(model)
            model.base_model.feature_projection.requires_grad_(False)

    conversion.register_family(ProjectionToo())
    try:
        model = tiny_wav2vec2()
        speech_input.attach_feature_extractor(model, speech_input.feature_extractor_for())
        CTCASR(["<blank>", "a"], freeze_feature_encoder=True).prepare_loaded(model, None)
    finally:  # the registry as it was, order included
        conversion.FAMILIES.clear()
        conversion.FAMILIES.update(saved)
    assert not any(p.requires_grad for p in model.base_model.feature_projection.parameters())
    assert model.base_model.encoder.layers[0].attention.q_proj.weight.requires_grad


def test_registered_family_and_mixer_pass_the_conformance_checks(registered, tmp_path):
    """What the registries' own pairs get (test_conformance.py), by registering: the
    new family with the new mixer, and the new mixer in a built-in family it fits."""
    import conformance
    import tiny_models

    def gpt2_lm():
        config = transformers.GPT2Config(
            vocab_size=tiny_models.TEXT_VOCAB, n_positions=32, n_embd=16, n_layer=2, n_head=2,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        )  # fmt: skip
        return transformers.GPT2LMHeadModel(config).eval()

    tiny_models.add_model(GPT2Family.name, gpt2_lm, "lm")
    try:
        pairs = conformance.pairs()
        assert (GPT2Family.name, GATED_CONV.name) in pairs and (
            "gpt_neox",
            GATED_CONV.name,
        ) in pairs
        for family in (GPT2Family.name, "gpt_neox"):
            conformance.run_all(family, GATED_CONV.name, tmp_path / family)
    finally:
        del tiny_models.MODELS[GPT2Family.name]
