"""CALDBrain with every guidance mode on a tiny Wav2Vec2ForCTC (CPU, a few steps).

Each mode does what it claims (teacher identity per step, loss weights), checkpoints
resume exactly, and a layer mismatch fails at fit start with a clear error.
"""

import contextlib
import copy
import math
import os
import sys

import pytest
import speechbrain as sb
import torch
import transformers
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.nnet.schedulers import WarmAndExpDecayLRSchedule
from speechbrain.utils.checkpoints import Checkpointer
from test_speech_input import count_cnn_passes

from speechbrain_cald import brain as brain_module
from speechbrain_cald import conversion, speech_input
from speechbrain_cald import guidance as g
from speechbrain_cald.brain import CALDBrain
from speechbrain_cald.conversion import StudentConfig
from speechbrain_cald.losses import CALDLossWeights
from speechbrain_cald.schedulers import WarmupExpDecayHold
from speechbrain_cald.tasks import CTCASR, CausalLM, SequenceClassification, UtteranceClassification

RECIPES = os.path.join(os.path.dirname(__file__), "..", "..", "recipes")
VOCAB = ["<blank>", "|", "a", "b", "c", "d", "e", "f"]
GUIDED = CALDLossWeights(task=1.0, kd=1.0, ld=15.0)
# d_state 7: in_proj width 2*16 + 2*7 + 2 = 48, a multiple of 8 (no mamba-ssm warning).
STUDENT = StudentConfig(mixer_config={"d_state": 7, "headdim": 8, "chunk_size": 16})


def tiny_config(layers=2):
    return transformers.Wav2Vec2Config(
        vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=32, conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 8),
        feat_extract_norm="layer", num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2,
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
        layerdrop=0.0, mask_time_prob=0.0, final_dropout=0.0, pad_token_id=0,
    )  # fmt: skip


def save_model(folder, layers=2, seed=0, cls=transformers.Wav2Vec2ForCTC):
    """A random tiny speech model folder with its input normalisation recorded."""
    torch.manual_seed(seed)
    model = cls(tiny_config(layers))
    speech_input.attach_feature_extractor(model, speech_input.feature_extractor_for())
    model.save_pretrained(folder)
    return str(folder)


def make_batches(n, seed=1, labels=False):
    """n batches of 2 random utterances of different lengths (the second padded)."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for b in range(n):
        items = []
        for u, samples in enumerate((1600, 1200)):
            item = {
                "id": f"b{b}u{u}",
                "sig": torch.randn(samples, generator=gen),
                "tokens": torch.randint(1, len(VOCAB), (5,), generator=gen),
                "words": "ab cd",
            }
            if labels:
                item.update(
                    a=int(torch.randint(3, (1,), generator=gen)),
                    b=int(torch.randint(4, (1,), generator=gen)),
                )
            items.append(item)
        batches.append(PaddedBatch(items))
    return batches


def as_loader(batches):
    """A DataLoader yielding the ready-made PaddedBatches, for Brain.fit / evaluate."""
    return torch.utils.data.DataLoader(batches, batch_size=None, collate_fn=lambda batch: batch)


def make_brain(guidance, tmp_path, task=None, run_opts=None, **hparams):
    hparams = {
        "task": task or CTCASR(VOCAB),
        "guidance": guidance,
        "lr_scheduler": WarmAndExpDecayLRSchedule(lr=1e-3, n_warmup_steps=2, total_steps=20),
        "epoch_counter": sb.utils.epoch_loop.EpochCounter(1),
        **hparams,
    }
    return CALDBrain(
        opt_class=lambda params: torch.optim.AdamW(params, lr=1e-3),
        hparams=hparams,
        run_opts={"device": "cpu", "noprogressbar": True, **(run_opts or {})},
        checkpointer=Checkpointer(tmp_path / "ckpt"),
    )


def train(brain, batches, on_step=None):
    """Brain.fit_batch over `batches` as `_fit_train` drives it; returns the losses."""
    brain.modules.train()
    brain.on_stage_start(sb.Stage.TRAIN)
    losses = []
    for batch in batches:
        brain.step += 1
        losses.append(brain.fit_batch(batch).item())
        if on_step:
            on_step(brain)
    return losses


def flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A 'pretrained' model, a 'fine-tuned' teacher and std waypoints at steps 2 and 4."""
    root = tmp_path_factory.mktemp("models")
    waypoints = root / "waypoints"
    for step, seed in ((2, 12), (4, 14)):
        save_model(g.waypoint_path(waypoints, step), seed=seed)
    return {
        "pretrained": save_model(root / "pretrained", seed=0),
        "finetuned": save_model(root / "finetuned", seed=1),
        "deeper": save_model(root / "deeper", layers=3, seed=2),
        "waypoints": str(waypoints),
    }


MODES = {
    "std": lambda f, tmp: g.Std(f["pretrained"], str(tmp / "wp"), 2),
    "unguided": lambda f, tmp: g.Unguided(f["pretrained"], STUDENT),
    "target": lambda f, tmp: g.Target(f["finetuned"], STUDENT, GUIDED),
    "src_init": lambda f, tmp: g.SrcInit(f["pretrained"], f["finetuned"], STUDENT, GUIDED),
    "trajectory": lambda f, tmp: g.Trajectory(
        f["pretrained"], lambda p: torch.optim.AdamW(p, lr=1e-2), 2, STUDENT, GUIDED
    ),
    "waypoint": lambda f, tmp: g.Waypoint(f["pretrained"], f["waypoints"], STUDENT, GUIDED),
    "hybrid": lambda f, tmp: g.Hybrid(MODES["trajectory"](f, tmp), switch_step=4),
}


def test_std_saves_waypoints_and_exports_a_teacher(folders, tmp_path):
    brain = make_brain(MODES["std"](folders, tmp_path), tmp_path)
    brain.on_fit_start()
    train(brain, make_batches(4))
    assert sorted(p.name for p in (tmp_path / "wp").iterdir()) == ["step_2", "step_4"]
    assert brain.step_terms["kd"] == brain.step_terms["ld"] == 0.0
    brain.export(tmp_path / "best")
    model, _ = CTCASR(VOCAB).load(tmp_path / "best")
    assert torch.equal(flat(model), flat(brain.modules.student))
    assert torch.equal(flat(CTCASR(VOCAB).load(tmp_path / "wp/step_4")[0]), flat(model))


def test_gradient_accumulation_counts_optimizer_steps(folders, tmp_path):
    guidance = g.Std(folders["pretrained"], str(tmp_path / "wp"), waypoint_every=1)
    brain = make_brain(guidance, tmp_path, run_opts={"grad_accumulation_factor": 2})
    brain.on_fit_start()
    train(brain, make_batches(4))
    assert brain.optimizer_step == brain.hparams.lr_scheduler.current_step == 2
    assert sorted(p.name for p in (tmp_path / "wp").iterdir()) == ["step_1", "step_2"]


def test_target_teacher_is_frozen_and_the_same_every_step(folders, tmp_path):
    brain = make_brain(MODES["target"](folders, tmp_path), tmp_path)
    brain.on_fit_start()
    teacher, _ = brain.guidance.teacher(0)
    reference = flat(CTCASR(VOCAB).load(folders["finetuned"])[0])
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(teacher is not m for m in brain.modules.modules())

    def check(brain):
        assert brain.guidance.teacher(brain.optimizer_step)[0] is teacher
        assert torch.equal(flat(teacher), reference)

    train(brain, make_batches(3), check)
    assert brain.step_terms["kd"] > 0 and brain.step_terms["ld"] > 0


def test_cald_step_runs_the_frozen_cnn_it_shares_with_the_teacher_once(
    folders, tmp_path, monkeypatch
):
    def losses_and_cnn_passes(folder):
        task = CTCASR(VOCAB, freeze_feature_encoder=True)  # as the recipes
        torch.manual_seed(0)  # the same student
        brain = make_brain(MODES["target"](folders, tmp_path), tmp_path / folder, task=task)
        brain.on_fit_start()
        student, teacher = brain.modules.student, brain.guidance.teacher(0)[0]
        passes = count_cnn_passes(student, teacher)
        losses = train(brain, make_batches(2))
        return losses, [{student: "student", teacher: "teacher"}[m] for m in passes]

    shared_losses, passes = losses_and_cnn_passes("shared")
    assert passes == ["student", "student"]  # the teacher's pass is the student's
    monkeypatch.setattr(CTCASR, "shared_front_end", lambda self: contextlib.nullcontext())
    losses, passes = losses_and_cnn_passes("unshared")
    assert passes == ["student", "teacher"] * 2
    assert shared_losses == losses  # the same step, bit for bit


def test_trajectory_teacher_changes_every_update_steps_only(folders, tmp_path):
    brain = make_brain(MODES["trajectory"](folders, tmp_path), tmp_path)
    brain.on_fit_start()
    snapshots = [flat(brain.guidance.model)]
    train(brain, make_batches(4), lambda b: snapshots.append(flat(b.guidance.model)))
    changed = [not torch.equal(a, b) for a, b in zip(snapshots, snapshots[1:])]
    assert changed == [False, True, False, True]  # update_every = 2
    assert brain.guidance.updates == 2
    assert not brain.guidance.model.training  # back to the teacher mode (eval)


def test_waypoint_teacher_is_the_next_saved_checkpoint(folders, tmp_path):
    brain = make_brain(MODES["waypoint"](folders, tmp_path), tmp_path)
    brain.on_fit_start()
    used = []
    wp_model = {
        s: flat(CTCASR(VOCAB).load(g.waypoint_path(folders["waypoints"], s))[0]) for s in (2, 4)
    }

    def record(brain):
        used.append(brain.guidance.waypoint_step)
        assert torch.equal(flat(brain.guidance._teacher[0]), wp_model[used[-1]])

    train(brain, make_batches(6), record)
    # Student steps s = 0..5 (before each batch): s < 2 -> step_2, s < 4 -> step_4, then the last.
    assert used == [2, 2, 4, 4, 4, 4]


@pytest.mark.parametrize("disable_kd", [False, True])
def test_hybrid_switches_off_ld_and_kd_as_configured_and_keeps_the_optimizer(
    folders, tmp_path, disable_kd
):
    guidance = g.Hybrid(MODES["trajectory"](folders, tmp_path), 4, disable_kd=disable_kd)
    brain = make_brain(guidance, tmp_path)
    brain.on_fit_start()
    optimizer = brain.optimizer
    terms = []
    train(brain, make_batches(6), lambda b: terms.append(dict(b.step_terms)))
    assert all(t["ld"] > 0 and t["kd"] > 0 for t in terms[:4])
    assert all(t["ld"] == 0 for t in terms[4:])
    assert all((t["kd"] == 0) == disable_kd for t in terms[4:])  # the reference keeps KD
    # Trajectory updates every 2 steps: at steps 2 and 4 (the window making step 4 was
    # still guided); with KD kept the teacher is still read, and updated, at step 6.
    assert brain.guidance.switched and brain.guidance.wrapped.updates == (2 if disable_kd else 3)
    assert brain.optimizer is optimizer
    assert all(s["step"].item() == 6 for s in optimizer.state.values())
    assert brain.hparams.lr_scheduler.current_step == 6
    teacher = brain.compute_forward(make_batches(1)[0], sb.Stage.TRAIN)[1]
    assert (teacher is None) == disable_kd


@pytest.mark.parametrize("mode", MODES)
def test_kill_and_resume_repeats_the_next_step(mode, folders, tmp_path):
    """Checkpoint after step 3; steps 4 and 5 (a trajectory update and the hybrid
    switch fall between them) must repeat the uninterrupted run."""
    batches = make_batches(5)
    first = make_brain(MODES[mode](folders, tmp_path / "a"), tmp_path)
    first.on_fit_start()
    train(first, batches[:3])
    first.checkpointer.save_checkpoint()
    expected = train(first, batches[3:])

    torch.manual_seed(123)  # a fresh build draws different random weights
    resumed = make_brain(MODES[mode](folders, tmp_path / "b"), tmp_path)
    resumed.on_fit_start()
    assert resumed.optimizer_step == 3
    assert train(resumed, batches[3:]) == pytest.approx(expected, rel=1e-5)


def test_layer_mismatch_fails_at_fit_start(folders, tmp_path):
    brain = make_brain(g.SrcInit(folders["pretrained"], folders["deeper"], None, GUIDED), tmp_path)
    with pytest.raises(ValueError, match="layer count: student 2 vs teacher 3"):
        brain.on_fit_start()
    brain = make_brain(
        g.SrcInit(folders["pretrained"], folders["deeper"], None, GUIDED),
        tmp_path,
        distill_layers={1: 1, 2: 5},
    )
    with pytest.raises(ValueError, match="layer map"):
        brain.on_fit_start()


def test_fit_utterance_classification_reports_terms_and_metrics(tmp_path):
    teacher = save_model(tmp_path / "teacher", cls=transformers.Wav2Vec2Model)
    task = UtteranceClassification({"a": 3, "b": 4})
    brain = make_brain(g.Target(teacher, STUDENT, GUIDED), tmp_path, task=task)
    train_set, valid_set = make_batches(2, labels=True), make_batches(1, seed=2, labels=True)
    brain.fit(brain.hparams.epoch_counter, as_loader(train_set), as_loader(valid_set))
    train_stats, valid_stats = brain.train_stats, brain.last_stage_stats
    assert set(train_stats) == {"task", "kd", "ld", "total"} and train_stats["kd"] > 0
    assert valid_stats["kd"] == valid_stats["ld"] == 0.0  # no teacher outside training
    assert {"a_acc", "b_acc", "acc", "joint_acc"} <= set(valid_stats)
    assert brain.checkpointer.find_checkpoint(min_key="total") is not None


def test_ctc_metrics_from_evaluation(folders, tmp_path):
    brain = make_brain(MODES["std"](folders, tmp_path), tmp_path)
    brain.evaluate(as_loader(make_batches(1)), progressbar=False)
    assert {"WER", "CER", "task", "total"} <= set(brain.last_stage_stats)
    assert brain.last_stage_stats["WER"] >= 0


def text_batch(ids_list, labels=None):
    items = [{"id": str(i), "tokens": torch.tensor(ids)} for i, ids in enumerate(ids_list)]
    for item, label in zip(items, labels or []):
        item["label"] = label
    return PaddedBatch(items)


def test_causal_lm_padding_content_changes_nothing():
    torch.manual_seed(0)
    config = transformers.GPTNeoXConfig(
        vocab_size=32,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
    )
    model = transformers.GPTNeoXForCausalLM(config).eval()
    task = CausalLM()
    batch = text_batch([[3, 4, 5, 6, 7], [8, 9, 10]])
    garbage = text_batch([[3, 4, 5, 6, 7], [8, 9, 10, 31, 30]])
    garbage.tokens.lengths[:] = batch.tokens.lengths
    with torch.no_grad():
        losses = [task.loss(task.forward(model, b, sb.Stage.VALID), b) for b in (batch, garbage)]
        metrics = task.metrics()
        task.update_metrics(metrics, task.forward(model, batch, sb.Stage.VALID), batch)
    assert losses[0].item() == pytest.approx(losses[1].item(), rel=1e-5)
    assert task.summarize(metrics)["ppl"] == pytest.approx(losses[0].exp().item(), rel=1e-5)


def test_sequence_classification_target_mode_with_a_linformer_student(tmp_path):
    torch.manual_seed(0)
    config = transformers.RobertaConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=40, num_labels=3,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    transformers.RobertaForSequenceClassification(config).save_pretrained(tmp_path / "teacher")
    student = StudentConfig(mixer_config={"k": 8})
    brain = make_brain(
        g.Target(str(tmp_path / "teacher"), student, GUIDED),
        tmp_path,
        task=SequenceClassification(),
    )
    batches = [text_batch([[0, 5, 6, 7, 2], [0, 8, 2]], labels=[1, 2]) for _ in range(2)]
    brain.fit(brain.hparams.epoch_counter, as_loader(batches), as_loader(batches[:1]))
    assert brain.train_stats["ld"] > 0 and 0 <= brain.last_stage_stats["acc"] <= 1


HPARAMS = """
pretrained: !PLACEHOLDER
save_folder: !PLACEHOLDER
student_config: !new:speechbrain_cald.conversion.StudentConfig
    mixer: bimamba2
    mixer_config: {d_state: 7, headdim: 8, chunk_size: 16}
task: !new:speechbrain_cald.tasks.CTCASR
    vocab: ["<blank>", "|", a, b, c, d, e, f]
guidance: !new:speechbrain_cald.guidance.Hybrid
    wrapped: !new:speechbrain_cald.guidance.Trajectory
        pretrained: !ref <pretrained>
        opt_class: !name:torch.optim.AdamW {lr: 0.001}
        update_every: 2
        student_config: !ref <student_config>
        weights: !new:speechbrain_cald.losses.CALDLossWeights {kd: 1.0, ld: 15.0}
    switch_step: 4
opt_class: !name:torch.optim.AdamW {lr: 0.0003, weight_decay: 0.005}
lr_scheduler: !new:speechbrain.nnet.schedulers.WarmAndExpDecayLRSchedule
    lr: 0.0003
    n_warmup_steps: 5000
    total_steps: 80000
    decay_factor: 0.005
epoch_counter: !new:speechbrain.utils.epoch_loop.EpochCounter {limit: 1}
checkpointer: !new:speechbrain.utils.checkpoints.Checkpointer
    checkpoints_dir: !ref <save_folder>/ckpt
"""


def test_yaml_selects_task_and_mode(folders, tmp_path):
    from hyperpyyaml import load_hyperpyyaml

    overrides = {"pretrained": folders["pretrained"], "save_folder": str(tmp_path)}
    hparams = load_hyperpyyaml(HPARAMS, overrides)
    brain = CALDBrain(
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts={"device": "cpu", "noprogressbar": True},
        checkpointer=hparams["checkpointer"],
    )
    brain.on_fit_start()
    train(brain, make_batches(1))
    assert isinstance(brain.guidance.wrapped, g.Trajectory)
    assert brain.step_terms["ld"] > 0 and "guidance" in brain.checkpointer.recoverables


def test_trajectory_teacher_schedule_accumulation_and_clipping(folders, tmp_path):
    """The teacher's update = -lr_t * clip(sum over the window's micro-batches of
    grad(task loss) / accumulation), with lr_t from its own schedule (plain SGD makes
    the update readable)."""
    schedule = WarmupExpDecayHold(lr=0.5, n_warmup_steps=2, total_steps=3, decay_factor=0.1)
    guidance = g.Trajectory(
        folders["pretrained"],
        lambda p: torch.optim.SGD(p, lr=123.0),  # the schedule sets the LR
        1,
        STUDENT,
        GUIDED,
        lr_scheduler=schedule,
        max_grad_norm=1e-3,
    )
    brain = make_brain(guidance, tmp_path, run_opts={"grad_accumulation_factor": 2})
    brain.on_fit_start()
    task = CTCASR(VOCAB)
    batches = make_batches(8)
    for step in range(4):
        window = batches[2 * step : 2 * step + 2]
        before = [p.detach().clone() for p in guidance.model.parameters()]
        reference = copy.deepcopy(guidance.model).train()
        for batch in window:
            loss = task.loss(task.forward(reference, batch, sb.Stage.TRAIN), batch) / 2
            loss.backward()
        grads = [p.grad for p in reference.parameters() if p.requires_grad]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        lr = [0.0, 0.25, 0.5, 0.05][step]  # warm-up 2, decay to 0.5 * 0.1 at 3, then held
        train(brain, window)
        assert guidance.optimizer.param_groups[0]["lr"] == pytest.approx(lr)
        moved = [b - p.detach() for b, p in zip(before, guidance.model.parameters())]
        expected = [lr * min(1.0, 1e-3 / norm) * p.grad for p in reference.parameters()]
        for m, e in zip(moved, expected):
            torch.testing.assert_close(m, e, rtol=1e-3, atol=2e-7)  # float32 params ~1
    assert guidance.updates == 4 and schedule.current_step == 4


def test_trajectory_schedule_is_checkpointed(folders, tmp_path):
    def build(folder):
        schedule = WarmupExpDecayHold(lr=0.1, n_warmup_steps=3, total_steps=10)
        return g.Trajectory(
            folders["pretrained"], torch.optim.SGD, 1, STUDENT, GUIDED, lr_scheduler=schedule
        )

    first = make_brain(build(tmp_path / "a"), tmp_path)
    first.on_fit_start()
    train(first, make_batches(2))
    first.checkpointer.save_checkpoint()
    resumed = make_brain(build(tmp_path / "b"), tmp_path)
    resumed.on_fit_start()
    assert resumed.guidance.lr_scheduler.current_step == 2
    assert resumed.guidance.optimizer.state_dict() == first.guidance.optimizer.state_dict()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"hybrid_switch_step": 0}, "outside the run"),
        ({"hybrid_switch_step": -1}, "outside the run"),
        ({"hybrid_switch_step": 4}, "outside the run"),  # = max_steps: never switches
        ({"hybrid_switch_step": 100}, "outside the run"),
        ({"hybrid_switch_step": 2, "mode": "unguided"}, "needs a guided mode"),
        ({"mode": "trajectory", "trajectory_update_every": 0}, "update_every must be >= 1"),
    ],
)
def test_invalid_guidance_settings_raise(folders, kwargs, match):
    args = {"mode": "target", "pretrained": folders["pretrained"], "max_steps": 4, **kwargs}
    args.setdefault("teacher_folder", folders["finetuned"])
    args.setdefault("trajectory_opt_class", torch.optim.SGD)
    with pytest.raises(ValueError, match=match):
        g.from_mode(**args)


def test_speech_lr_schedule_is_held_at_its_floor():
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    schedule = WarmupExpDecayHold(lr=3e-4, n_warmup_steps=5, total_steps=80, decay_factor=0.005)
    lrs = []
    for _ in range(100):
        schedule(opt)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == 0 and lrs[5] == pytest.approx(3e-4)
    assert lrs[79] == pytest.approx(3e-4 * 0.005 ** (74 / 75))
    assert lrs[80:] == [pytest.approx(1.5e-6)] * 20


@pytest.mark.parametrize("warmup, total", [(20, "20 + -16"), (20, 4), (-1, 10), (3, 3)])
def test_speech_lr_schedule_rejects_a_run_shorter_than_its_warmup(warmup, total):
    """A warm-up longer than the run (hyperpyyaml leaves `20 + -16` unevaluated) is
    named, not a TypeError inside SpeechBrain or a negative decay."""
    with pytest.raises(ValueError, match="warmup_steps larger than max_steps"):
        WarmupExpDecayHold(lr=1e-3, n_warmup_steps=warmup, total_steps=total)


def test_lm_recipe_distils_layers_1_to_l_minus_1_not_the_final_norm_output():
    """With the Pile YAML's settings, L_LD is the mean over hidden states 1..L-1 only:
    HF's last GPT-NeoX hidden state is the final-LayerNorm output."""
    import ruamel.yaml

    from speechbrain_cald.losses import layerwise_distillation_loss

    with open(os.path.join(RECIPES, "Pile/LM/hparams/pythia_mamba.yaml"), encoding="utf-8") as f:
        yaml = ruamel.yaml.YAML(typ="rt").load(f)
    keys = ("distill_skip_first", "distill_skip_last", "ld_layer_norm")
    skip_first, skip_last, layer_norm = (yaml[k] for k in keys)
    config = transformers.GPTNeoXConfig(
        vocab_size=32, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
        intermediate_size=32,
    )  # fmt: skip
    teacher, student = (transformers.GPTNeoXForCausalLM(config).eval() for _ in range(2))
    ids, mask = torch.randint(0, 32, (2, 6)), torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    captured = []
    teacher.gpt_neox.layers[-1].register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        t = teacher(ids, attention_mask=mask, output_hidden_states=True).hidden_states
        s = student(ids, attention_mask=mask, output_hidden_states=True).hidden_states
        layer_out = captured[0][0] if isinstance(captured[0], tuple) else captured[0]
        final = teacher.gpt_neox.final_layer_norm(layer_out)
    assert len(t) == 4  # embeddings, layers 1 and 2, final norm of layer 3
    torch.testing.assert_close(t[-1], final)
    valid = mask.bool()
    loss = layerwise_distillation_loss(s, t, valid, None, layer_norm, skip_first, skip_last)

    def term(i):
        a = torch.nn.functional.layer_norm(s[i], (16,))
        b = torch.nn.functional.layer_norm(t[i], (16,))
        return ((a - b) ** 2).mean(-1)[valid].mean()

    assert loss.item() == pytest.approx(((term(1) + term(2)) / 2).item(), rel=1e-6)


@pytest.mark.parametrize("mode", [m for m in MODES if m != "std"])
def test_a_hybrid_student_trains_in_every_guided_mode(folders, tmp_path, mode, monkeypatch):
    """keep_attention in every mode: the kept layer trains as attention (pretrained
    role), the converted one as a mixer, and L_LD leaves the kept layer's output out."""
    hybrid = StudentConfig(mixer_config=STUDENT.mixer_config, keep_attention=[0])
    monkeypatch.setattr(sys.modules[__name__], "STUDENT", hybrid)
    brain = make_brain(MODES[mode](folders, tmp_path), tmp_path)
    seen = []
    real = brain_module.layerwise_distillation_loss
    monkeypatch.setattr(
        brain_module,
        "layerwise_distillation_loss",
        lambda *args: seen.append(args[-1]) or real(*args),
    )
    brain.on_fit_start()
    student = brain.modules.student
    kept = {
        k: v.clone() for k, v in student.base_model.encoder.layers[0].attention.state_dict().items()
    }
    losses = train(brain, make_batches(2))
    assert all(math.isfinite(loss) for loss in losses)
    assert conversion.kept_attention(student) == [0]
    layers = student.base_model.encoder.layers
    assert not isinstance(layers[0].attention, conversion.MixerSlot)
    assert isinstance(layers[1].attention, conversion.MixerSlot)
    moved = student.base_model.encoder.layers[0].attention.state_dict()
    assert any(not torch.equal(moved[k], v) for k, v in kept.items())  # it trains
    if brain.step_terms["ld"]:
        assert seen and all(list(k) == [0] for k in seen)
