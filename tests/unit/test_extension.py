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
    mixers = ("gated_conv_test",)
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
