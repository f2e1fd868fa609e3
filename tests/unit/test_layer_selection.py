"""Hybrid students choosing their attention layers by measurement (keep_attention
{count, by: ablation}): the layer whose attention the model depends on most is kept,
the run's random state is untouched, and the rule becomes indices before conversion."""

import pytest
import torch
from test_guidance_brain import make_batches
from tiny_models import MIXER_CONFIGS, VOCAB, wav2vec2_ctc

from speechbrain_cald import conversion, layer_selection
from speechbrain_cald.conversion import StudentConfig
from speechbrain_cald.tasks import CTCASR

RULE = {"count": 1, "by": "ablation"}


def dominant(layer):
    """A tiny wav2vec2 whose other layers' attention outputs are nearly zero (the model
    depends on `layer`'s attention most)."""
    torch.manual_seed(0)
    model = wav2vec2_ctc()
    with torch.no_grad():
        for index, other in enumerate(model.base_model.encoder.layers):
            if index != layer:
                other.attention.out_proj.weight.mul_(0.01)
                other.attention.out_proj.bias.mul_(0.01)
    return model


@pytest.mark.parametrize("layer", [0, 1])
def test_the_costliest_layer_to_convert_is_kept(layer):
    batches, model = make_batches(2), dominant(layer)
    state = torch.random.get_rng_state()
    costs = layer_selection.attention_costs(model, CTCASR(VOCAB), batches)
    assert torch.equal(torch.random.get_rng_state(), state)  # the run's RNG untouched
    assert len(costs) == 2 and all(c > 0 for c in costs)
    assert layer_selection.most_costly(costs, 1) == [layer]


def test_the_rule_becomes_indices_before_conversion(tmp_path):
    task = CTCASR(VOCAB)
    task.save(tmp_path / "pretrained", dominant(1))
    config = StudentConfig(mixer_config=MIXER_CONFIGS["bimamba2"], keep_attention=RULE)
    with pytest.raises(ValueError, match="measured on data before conversion"):
        conversion.convert_to_student(dominant(1), config)
    hparams = {"student_config": config, "task": task, "pretrained_folder": tmp_path / "pretrained"}
    assert layer_selection.resolve_keep_attention(hparams, make_batches(2)) == [1]
    assert config.keep_attention == [1]  # the object the guidance holds
    student = conversion.convert_to_student(dominant(1), config)[0]
    assert conversion.kept_attention(student) == [1]
    other = {"student_config": StudentConfig(keep_attention={"count": 1, "by": "uniform"})}
    assert layer_selection.resolve_keep_attention(other, []) is None


@pytest.mark.parametrize("family", ["wav2vec2", "wavlm", "whisper"])
def test_every_speech_family_measures_every_layer(family):
    from tiny_models import MODELS

    costs = layer_selection.attention_costs(MODELS[family][0](), CTCASR(VOCAB), make_batches(1))
    assert len(costs) == 2 and all(0 < c < float("inf") for c in costs)
