"""Crash-safe checkpoints (AtomicCheckpointer) and non-finite losses in CALDBrain.

Checkpoints: a save is all-or-nothing (a save that dies half-way leaves no
checkpoint folder), and recovery skips a truncated, altered or unloadable newest
checkpoint with a warning, loading the previous good one; a plain SpeechBrain
checkpoint (no integrity record) still loads. Non-finite losses, including the
distillation terms, make no update, are counted, and stop the run with a clear
error after `nonfinite_patience`.
"""

import logging
import math
import pickle

import pytest
import torch
from speechbrain.dataio.dataloader import SaveableDataLoader
from speechbrain.utils.checkpoints import Checkpointer
from speechbrain.utils.epoch_loop import EpochCounter
from test_guidance_brain import (
    GUIDED,
    STUDENT,
    as_loader,
    flat,
    make_batches,
    make_brain,
    save_model,
)

from speechbrain_cald import brain as brain_module
from speechbrain_cald import guidance as g
from speechbrain_cald.checkpoints import (
    INTEGRITY_FILE,
    PARTIAL_PREFIX,
    AtomicCheckpointer,
    CheckpointIntegrityError,
)
from speechbrain_cald.resumable import NonFiniteLossError, rng_state, set_rng_state


def make_checkpointer(folder):
    """An AtomicCheckpointer over a Linear layer and an epoch counter."""
    layer, counter = torch.nn.Linear(3, 2), EpochCounter(10)
    ckpt = AtomicCheckpointer(folder, recoverables={"layer": layer, "counter": counter})
    return ckpt, layer, counter


def save_states(ckpt, layer, values):
    """One checkpoint per value, the layer's weight filled with it; returns them."""
    saved = []
    for value in values:
        torch.nn.init.constant_(layer.weight, value)
        saved.append(ckpt.save_checkpoint(meta={"value": value}))
    return saved


def test_save_is_atomic_and_recorded(tmp_path):
    ckpt, layer, _ = make_checkpointer(tmp_path)
    saved = save_states(ckpt, layer, [1.0, 2.0])
    assert [c.path.name.startswith("CKPT+") for c in saved] == [True, True]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(PARTIAL_PREFIX)]
    assert all((c.path / INTEGRITY_FILE).is_file() for c in saved)
    assert all(p.is_file() for c in saved for p in c.paramfiles.values())
    # the Checkpointer sees exactly the finished ones, newest first by default
    assert ckpt.find_checkpoint().path == saved[-1].path


def test_a_save_killed_half_way_leaves_no_checkpoint(tmp_path, caplog):
    ckpt, layer, counter = make_checkpointer(tmp_path)
    save_states(ckpt, layer, [1.0])

    def die(obj, path):  # the process dies while writing the second file
        raise KeyboardInterrupt

    ckpt.custom_save_hooks["counter"] = die
    torch.nn.init.constant_(layer.weight, 2.0)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint()
    assert len(ckpt.list_checkpoints()) == 1  # the half-written folder is not one
    partial = [p for p in tmp_path.iterdir() if p.name.startswith(PARTIAL_PREFIX)]
    assert len(partial) == 1
    with caplog.at_level(logging.WARNING):
        ckpt.recover_if_possible()
    assert torch.all(layer.weight == 1.0)
    assert not partial[0].exists() and "interrupted checkpoint save" in caplog.text


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "garbage_unrecorded"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, caplog, damage):
    ckpt, layer, _ = make_checkpointer(tmp_path)
    older, newest = save_states(ckpt, layer, [1.0, 2.0])
    target = newest.paramfiles["layer"]
    data = target.read_bytes()
    if damage == "truncate":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "flip":  # same size, one byte changed: only the SHA-256 sees it
        target.write_bytes(data[:-20] + bytes([data[-20] ^ 0xFF]) + data[-19:])
    elif damage == "delete":
        target.unlink()
    else:  # no integrity record (a plain Checkpointer's folder) and an unreadable file
        (newest.path / INTEGRITY_FILE).unlink()
        target.write_bytes(b"not a torch file")
    torch.nn.init.constant_(layer.weight, 0.0)
    with caplog.at_level(logging.WARNING):
        recovered = ckpt.recover_if_possible()
    assert recovered.path == older.path
    assert torch.all(layer.weight == 1.0)
    assert f"Checkpoint {newest.path} cannot be loaded" in caplog.text
    assert f"falling back to {older.path}" in caplog.text


def test_every_checkpoint_damaged_is_an_error(tmp_path):
    ckpt, layer, _ = make_checkpointer(tmp_path)
    for saved in save_states(ckpt, layer, [1.0, 2.0]):
        path = saved.paramfiles["layer"]
        path.write_bytes(path.read_bytes()[:10])
    with pytest.raises(CheckpointIntegrityError, match="all 2 are damaged"):
        ckpt.recover_if_possible()


def test_plain_speechbrain_checkpoints_still_load(tmp_path):
    _, layer, counter = make_checkpointer(tmp_path)
    torch.nn.init.constant_(layer.weight, 3.0)
    Checkpointer(tmp_path, recoverables={"layer": layer, "counter": counter}).save_checkpoint()
    ckpt, fresh, _ = make_checkpointer(tmp_path)
    assert ckpt.recover_if_possible() is not None and torch.all(fresh.weight == 3.0)


def test_rng_state_round_trip_through_a_weights_only_load(tmp_path):
    import random

    import numpy as np

    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2] == again[2]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("nonfinite") / "pretrained")


def nan_ld_at(monkeypatch, calls):
    """Make the layerwise distillation term NaN at the given (0-based) calls."""
    real, count = brain_module.layerwise_distillation_loss, [0]

    def patched(*args, **kwargs):
        value = real(*args, **kwargs)
        count[0] += 1
        return value * math.nan if count[0] - 1 in calls else value

    monkeypatch.setattr(brain_module, "layerwise_distillation_loss", patched)


def test_nonfinite_distillation_term_skips_the_update(pretrained, tmp_path, monkeypatch, caplog):
    """Batches 2 and 4 of 5 have a NaN L_LD: two updates are skipped (weights,
    LR schedule and step count untouched), the run goes on and its averages stay
    finite."""
    nan_ld_at(monkeypatch, {1, 3})
    brain = make_brain(g.Target(pretrained, STUDENT, GUIDED), tmp_path)
    weights = []
    real_step = brain.optimizers_step

    def record():
        before = flat(brain.modules.student)
        real_step()
        weights.append((before, flat(brain.modules.student), brain.step_terms["ld"]))

    brain.optimizers_step = record
    with caplog.at_level(logging.WARNING):
        brain.fit(EpochCounter(1), as_loader(make_batches(5)), progressbar=False)
    assert brain.nonfinite_skipped == 2 and brain.optimizer_step == 3
    assert brain.hparams.lr_scheduler.current_step == 3
    assert [math.isnan(ld) for _, _, ld in weights] == [False, True, False, True, False]
    # weights unchanged by the NaN batches (batch 1 runs at LR 0: warm-up step 1)
    assert [torch.equal(a, b) for a, b, _ in weights[1:]] == [True, False, True, False]
    assert all(s["step"].item() == 3 for s in brain.optimizer.state.values())
    assert all(math.isfinite(v) for v in brain.train_stats.values())
    assert torch.isfinite(flat(brain.modules.student)).all()
    assert "Non-finite loss at optimizer step 2" in caplog.text and "ld=nan" in caplog.text


def test_nonfinite_losses_beyond_patience_stop_the_run(pretrained, tmp_path, monkeypatch):
    nan_ld_at(monkeypatch, {0, 1, 2})
    brain = make_brain(g.Target(pretrained, STUDENT, GUIDED), tmp_path, nonfinite_patience=1)
    with pytest.raises(NonFiniteLossError, match=r"ld=nan.*exceed nonfinite_patience=1"):
        brain.fit(EpochCounter(1), as_loader(make_batches(3)), progressbar=False)
    assert brain.optimizer_step == 0 and brain.nonfinite_skipped == 2


class Payload:
    """An object whose unpickling would run code: a weights-only load refuses it."""

    def __reduce__(self):
        return (print, ("unpickled arbitrary code",))


def test_checkpoint_loading_is_weights_only(tmp_path, caplog):
    """A checkpoint file holding a pickled object (not tensors) is refused by the
    loading hooks (SpeechBrain's and this package's), and recovery falls back."""
    ckpt, layer, _ = make_checkpointer(tmp_path)
    older, newest = save_states(ckpt, layer, [1.0, 2.0])
    torch.save({"weight": Payload()}, newest.paramfiles["layer"])
    (newest.path / INTEGRITY_FILE).unlink()  # as if written by someone else
    with caplog.at_level(logging.WARNING):
        assert ckpt.recover_if_possible().path == older.path
    assert "Weights only load failed" in caplog.text
    guidance_file = tmp_path / "guidance.ckpt"  # this package's own loaders
    torch.save({"waypoint_step": Payload()}, guidance_file)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        g.Waypoint("unused", "unused")._load(guidance_file, end_of_epoch=False)


def test_fallback_forgets_the_data_position_of_the_damaged_checkpoint(tmp_path):
    """The loader's position (read first) comes from a damaged intra-epoch checkpoint
    whose next file fails; the end-of-epoch fallback must start the epoch afresh."""
    loader = SaveableDataLoader(list(range(6)), batch_size=1)
    layer = torch.nn.Linear(2, 2)
    ckpt = AtomicCheckpointer(tmp_path, recoverables={"loader": loader, "layer": layer})
    ckpt.save_checkpoint(end_of_epoch=True)
    iterator = iter(loader)
    next(iterator), next(iterator)
    intra = ckpt.save_checkpoint(end_of_epoch=False)
    (intra.path / INTEGRITY_FILE).unlink()
    intra.paramfiles["layer"].write_bytes(b"damaged")
    fresh = SaveableDataLoader(list(range(6)), batch_size=1)
    ckpt = AtomicCheckpointer(tmp_path, recoverables={"loader": fresh, "layer": layer})
    assert ckpt.recover_if_possible().meta["end-of-epoch"]
    assert [int(b) for b in fresh] == list(range(6))
