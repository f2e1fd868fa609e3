"""Parameter groups (`lr_groups`): every parameter in one role, each role at its own LR
under the one schedule (read back from the optimizer), and a killed run resumes
bit-exactly with them."""

import pytest
import torch
from test_families import KINDS, MIXER, hf_ctc
from test_guidance_brain import MODES, folders, make_batches, make_brain, train  # noqa: F401

from speechbrain_cald import conversion, param_groups
from speechbrain_cald.tasks import UtteranceClassification

LR = 1e-3  # make_brain's optimizer and schedule LR
GROUPS = {"pretrained": 1e-4, "mixers": 2e-3}  # heads: lr


def role_names(model, heads=None):
    """{role: sorted parameter names} as `parameter_roles` assigns them."""
    names = {id(p): n for n, p in model.named_parameters()}
    if heads is not None:
        names.update({id(p): f"heads.{n}" for n, p in heads.named_parameters()})
    roles = param_groups.parameter_roles(model, heads)
    return {role: sorted(names[id(p)] for p in params) for role, params in roles.items()}


@pytest.mark.parametrize("kind", KINDS)
def test_roles_of_a_student_mixers_head_and_the_rest(kind):
    teacher = hf_ctc(kind)
    teacher.freeze_feature_encoder()
    student, report = conversion.convert_to_student(teacher, MIXER)
    roles = role_names(student)
    assert roles["mixers"] == sorted(report.new)  # exactly what conversion created
    assert roles["heads"] == ["lm_head.bias", "lm_head.weight"]
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert set(roles["pretrained"]) == trainable - set(report.new) - set(roles["heads"])
    assert not any("conv" in n and "pos" not in n for n in roles["pretrained"] if kind != "whisper")
    # the transformer itself: no mixers, its attention is pretrained
    assert role_names(teacher)["mixers"] == []
    assert role_names(teacher)["heads"] == ["lm_head.bias", "lm_head.weight"]


def test_task_heads_outside_the_model_are_heads():
    model = hf_ctc("hubert")
    heads = UtteranceClassification({"speaker": 3}).make_heads(model.config)
    roles = role_names(model.hubert, heads)
    assert roles["heads"] == ["heads.speaker.bias", "heads.speaker.weight"]


@pytest.mark.parametrize("lr_groups", [{"encoder": 1e-4}, {"heads": 0.0}, {"mixers": -1}])
def test_unknown_role_or_bad_lr_is_a_named_error(lr_groups):
    with pytest.raises(ValueError, match="lr_groups"):
        param_groups.parameter_groups(hf_ctc("hubert"), None, LR, lr_groups)


def test_each_group_follows_the_schedule_at_its_own_lr(folders, tmp_path):  # noqa: F811
    grouped = make_brain(
        MODES["target"](folders, tmp_path), tmp_path / "g", lr=LR, lr_groups=GROUPS
    )
    grouped.on_fit_start()
    single = make_brain(MODES["target"](folders, tmp_path), tmp_path / "s")
    single.on_fit_start()
    expected = {"pretrained": 1e-4, "mixers": 2e-3, "heads": LR}
    groups = grouped.optimizer.param_groups
    assert {g["role"]: g["lr"] for g in groups} == expected  # before the first step
    for step in range(3):
        train(grouped, make_batches(1, seed=step))
        train(single, make_batches(1, seed=step))
        scheduled = single.optimizer.param_groups[0]["lr"]
        for group in groups:
            assert group["lr"] == pytest.approx(scheduled * expected[group["role"]] / LR, rel=1e-12)
    # the optimizer holds every trainable parameter once
    trainable = [p for p in grouped.modules.parameters() if p.requires_grad]
    held = [p for g in groups for p in g["params"]]
    assert len(held) == len(trainable) and {id(p) for p in held} == {id(p) for p in trainable}


def test_kill_and_resume_with_groups_repeats_the_next_steps(folders, tmp_path):  # noqa: F811
    batches = make_batches(5)
    first = make_brain(MODES["target"](folders, tmp_path), tmp_path, lr=LR, lr_groups=GROUPS)
    first.on_fit_start()
    train(first, batches[:3])
    first.checkpointer.save_checkpoint()
    expected = train(first, batches[3:])
    expected_lrs = [g["lr"] for g in first.optimizer.param_groups]

    torch.manual_seed(123)  # a fresh build draws different random weights
    resumed = make_brain(MODES["target"](folders, tmp_path), tmp_path, lr=LR, lr_groups=GROUPS)
    resumed.on_fit_start()
    assert resumed.optimizer_step == 3
    assert train(resumed, batches[3:]) == expected  # bit for bit
    assert [g["lr"] for g in resumed.optimizer.param_groups] == expected_lrs
    for a, b in zip(first.modules.parameters(), resumed.modules.parameters()):
        assert torch.equal(a, b)


def test_trajectory_teacher_groups_follow_its_schedule(folders, tmp_path):  # noqa: F811
    from speechbrain.nnet.schedulers import WarmAndExpDecayLRSchedule
    from test_guidance_brain import GUIDED, STUDENT

    from speechbrain_cald import guidance as g

    def opt_class(params):
        return torch.optim.AdamW(params, lr=LR)

    schedule = WarmAndExpDecayLRSchedule(lr=LR, n_warmup_steps=2, total_steps=20)
    trajectory = g.Trajectory(
        folders["pretrained"], opt_class, 1, STUDENT, GUIDED, lr_scheduler=schedule,
        lr=LR, lr_groups={"pretrained": 1e-4},
    )  # fmt: skip
    brain = make_brain(trajectory, tmp_path)
    brain.on_fit_start()
    train(brain, make_batches(3))
    lrs = {group["role"]: group["lr"] for group in trajectory.optimizer.param_groups}
    assert lrs["heads"] == pytest.approx(schedule.current_lr, rel=1e-12)
    assert lrs["pretrained"] == pytest.approx(schedule.current_lr / 10, rel=1e-12)
