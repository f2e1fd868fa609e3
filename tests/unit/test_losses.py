"""KD and LD terms: hand-computed values, identities, and padding invariance."""

import math

import pytest
import torch

from speechbrain_cald.losses import CALDLossWeights, kd_loss, layerwise_distillation_loss


def test_kd_matches_hand_computed_kl():
    student = torch.tensor([[0.0, 2.0]])
    teacher = torch.tensor([[2.0, 0.0]])
    # At T = 2: p_teacher = softmax([1, 0]), p_student = softmax([0, 1]).
    p = [math.exp(1) / (math.exp(1) + 1), 1 / (math.exp(1) + 1)]
    q = p[::-1]
    expected = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    assert kd_loss(student, teacher, None, 2.0).item() == pytest.approx(expected, rel=1e-5)


def test_kd_frame_level_is_mean_over_valid_frames():
    student, teacher = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    per_frame = [
        kd_loss(student[b, t][None], teacher[b, t][None], None, 2.0)
        for b, t in [(0, 0), (0, 1), (1, 0)]
    ]
    assert kd_loss(student, teacher, mask, 2.0).item() == pytest.approx(
        torch.stack(per_frame).mean().item(), rel=1e-5
    )


def _hidden(n_layers=3, batch=2, time=6, d=8):
    return [torch.randn(batch, time, d) for _ in range(n_layers + 1)]


def test_ld_zero_for_identical_states_and_grows_with_perturbation():
    teacher = _hidden()
    mask = torch.ones(2, 6, dtype=torch.bool)
    assert layerwise_distillation_loss(teacher, teacher, mask).item() == pytest.approx(
        0.0, abs=1e-7
    )
    small = [h + 0.01 * torch.randn_like(h) for h in teacher]
    large = [h + 0.5 * torch.randn_like(h) for h in teacher]
    ld_small = layerwise_distillation_loss(small, teacher, mask)
    ld_large = layerwise_distillation_loss(large, teacher, mask)
    assert 0 < ld_small < ld_large


def test_ld_layer_selection_and_layer_norm_option():
    teacher = _hidden()
    student = [h.clone() for h in teacher]
    student[0] += 1.0  # only the embedding output differs
    mask = torch.ones(2, 6, dtype=torch.bool)
    assert layerwise_distillation_loss(student, teacher, mask).item() == 0.0  # index 0 skipped
    nlp_form = layerwise_distillation_loss(student, teacher, mask, layers=[0, 1], layer_norm=False)
    assert nlp_form.item() == pytest.approx(0.5)  # MSE 1 on layer 0, 0 on layer 1


def test_padding_changes_no_loss_term():
    """Extra padded frames filled with garbage leave KD and LD unchanged."""
    s_hidden, t_hidden = _hidden(time=5), _hidden(time=5)
    s_logits, t_logits = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])

    def pad(x):
        return torch.cat([x, 1e3 * torch.randn(x.shape[0], 4, *x.shape[2:])], 1)

    padded_mask = torch.cat([mask, torch.zeros(2, 4, dtype=torch.bool)], 1)
    ld = layerwise_distillation_loss(s_hidden, t_hidden, mask)
    ld_padded = layerwise_distillation_loss(
        [pad(h) for h in s_hidden], [pad(h) for h in t_hidden], padded_mask
    )
    kd = kd_loss(s_logits, t_logits, mask)
    kd_padded = kd_loss(pad(s_logits), pad(t_logits), padded_mask)
    assert ld_padded.item() == pytest.approx(ld.item(), rel=1e-6)
    assert kd_padded.item() == pytest.approx(kd.item(), rel=1e-6)


def test_weights_combine_reports_each_term():
    terms = CALDLossWeights(task=1.0, kd=2.0, ld=3.0).combine(
        torch.tensor(1.0), torch.tensor(0.5), torch.tensor(0.25)
    )
    assert {k: v.item() for k, v in terms.items()} == {
        "task": 1.0,
        "kd": 0.5,
        "ld": 0.25,
        "total": 2.75,
    }
    assert not CALDLossWeights().guided
    assert CALDLossWeights().combine(torch.tensor(2.0))["total"].item() == 2.0


def test_ld_gives_kept_attention_layers_no_target():
    """A hybrid student's kept layers (their outputs: hidden state index + 1) are left
    out of L_LD; the converted layers' terms are the same as without them."""
    from speechbrain_cald.losses import distilled_layers

    assert distilled_layers(5) == {1: 1, 2: 2, 3: 3, 4: 4}
    assert distilled_layers(5, kept=[0, 2]) == {2: 2, 4: 4}
    assert distilled_layers(5, {1: 2, 3: 4}, kept=[0]) == {3: 4}
    gen = torch.Generator().manual_seed(0)
    student = [torch.randn(2, 6, 8, generator=gen) for _ in range(5)]
    teacher = [torch.randn(2, 6, 8, generator=gen) for _ in range(5)]
    hybrid = layerwise_distillation_loss(student, teacher, kept=[1])
    only = layerwise_distillation_loss(student, teacher, layers=[1, 3, 4])
    torch.testing.assert_close(hybrid, only, rtol=0, atol=0)


def test_kept_attention_is_a_pretrained_parameter_role():
    from test_conformance import MIXER_CONFIGS, MODELS

    from speechbrain_cald import conversion
    from speechbrain_cald.param_groups import parameter_roles

    student, _ = conversion.convert_to_student(
        MODELS["wav2vec2"][0](), {"keep_attention": [0], "mixer_config": MIXER_CONFIGS["bimamba2"]}
    )
    roles = parameter_roles(student)
    kept = {id(p) for p in student.base_model.encoder.layers[0].attention.parameters()}
    converted = {id(p) for p in student.base_model.encoder.layers[1].attention.parameters()}
    assert kept <= {id(p) for p in roles["pretrained"]}
    assert converted <= {id(p) for p in roles["mixers"]}
