"""Every registered source family x every registered mixer that fits it, generated from
the registries (`conformance.pairs`): padded == alone, save / load, export / reload,
the attention-init report. A new family or mixer is covered by registering it (and
giving the family a tiny model in tiny_models.py)."""

import pytest
from conformance import (
    check_attention_init_report,
    check_export_reload,
    check_generation_with_cache,
    check_hybrid_keeps_its_layers,
    check_padded_equals_alone,
    check_save_load,
    pairs,
)
from tiny_models import MIXER_CONFIGS, MODELS

from speechbrain_cald import conversion

PAIRS = pairs()
pytestmark = pytest.mark.filterwarnings("ignore:Mamba2 in_proj width:UserWarning")


def test_every_builtin_family_and_mixer_is_covered():
    assert {f for f, _ in PAIRS} == set(conversion.FAMILIES)
    assert {m for _, m in PAIRS} == set(conversion.MIXERS)


@pytest.mark.parametrize("family, mixer", PAIRS)
def test_padded_equals_alone(family, mixer):
    check_padded_equals_alone(family, mixer)


@pytest.mark.parametrize("family, mixer", PAIRS)
def test_save_load(family, mixer, tmp_path):
    check_save_load(family, mixer, tmp_path)


@pytest.mark.parametrize("family, mixer", PAIRS)
def test_export_reload(family, mixer, tmp_path):
    check_export_reload(family, mixer, tmp_path)


@pytest.mark.parametrize("family, mixer", PAIRS)
def test_attention_init_report(family, mixer):
    check_attention_init_report(family, mixer)


# Hybrid students: each family with its default mixer, keeping the attention of one
# layer (the first, then the last), through the same checks.
HYBRIDS = [
    (family, conversion.FAMILIES[family].default_mixer, keep)
    for family in conversion.FAMILIES
    for keep in ([0], [1])
    if not (family == "wavlm" and keep == [1])  # refused, below
]


def test_wavlm_keeps_attention_only_with_the_layer_that_makes_its_position_bias():
    with pytest.raises(ValueError, match="layer 0's attention computes; keep layer 0 too"):
        conversion.convert_to_student(
            MODELS["wavlm"][0](), {"keep_attention": [1], "mixer_config": MIXER_CONFIGS["bimamba2"]}
        )


@pytest.mark.parametrize("family, mixer, keep", HYBRIDS)
def test_hybrid_student(family, mixer, keep, tmp_path):
    check_hybrid_keeps_its_layers(family, mixer, keep)
    check_padded_equals_alone(family, mixer, keep)
    check_save_load(family, mixer, tmp_path / "hf", keep)
    check_export_reload(family, mixer, tmp_path / "export", keep)


@pytest.mark.parametrize("keep", [[], [0], [1]])
def test_language_model_generates_the_same_with_its_cache(keep):
    for family, (_, kind) in MODELS.items():
        if kind == "lm" and family in conversion.FAMILIES:
            check_generation_with_cache(family, conversion.FAMILIES[family].default_mixer, keep)


def test_keep_attention_by_uniform_spacing_is_recorded_as_indices(tmp_path):
    from speechbrain_cald.conversion.config import keep_layers

    assert keep_layers({"count": 1, "by": "uniform"}, 6) == [3]
    assert keep_layers({"count": 2, "by": "uniform"}, 6) == [1, 4]
    assert keep_layers({"count": 1, "by": "uniform"}, 4) == [2]
    assert keep_layers([0, 5], 6) == [0, 5]
    with pytest.raises(ValueError, match="count 2: the model has 2 layers"):
        keep_layers({"count": 2, "by": "uniform"}, 2)
    with pytest.raises(ValueError, match="give layer indices or"):
        conversion.StudentConfig(keep_attention={"count": 1, "by": "kl"})
    config = {
        "keep_attention": {"count": 1, "by": "uniform"},
        "mixer_config": MIXER_CONFIGS["bimamba2"],
    }
    student, report = conversion.convert_to_student(MODELS["wav2vec2"][0](), config)
    assert (
        conversion.kept_attention(student) == [1] and "attention kept in layers [1]" in report.notes
    )
    student.save_pretrained(tmp_path)
    assert conversion.kept_attention(conversion.from_pretrained(tmp_path)) == [1]
