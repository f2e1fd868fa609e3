"""Every registered source family x every registered mixer that fits it, generated from
the registries (`conformance.pairs`): padded == alone, save / load, export / reload,
the attention-init report. A new family or mixer is covered by registering it (and
giving the family a tiny model in tiny_models.py)."""

import pytest
from conformance import (
    check_attention_init_report,
    check_export_reload,
    check_padded_equals_alone,
    check_save_load,
    pairs,
)

PAIRS = pairs()
pytestmark = pytest.mark.filterwarnings("ignore:Mamba2 in_proj width:UserWarning")


def test_every_builtin_family_and_mixer_is_covered():
    from speechbrain_cald import conversion

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
