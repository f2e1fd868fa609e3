"""Bad input and misuse: a clear error naming the file, row, key or folder, or a counted
skip; never a silently wrong number (one test per case of the issue)."""

import json
import logging
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
import transformers
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.utils.checkpoints import Checkpointer

from speechbrain_cald import (
    experiment,
    inference,
    pretrained,
    speech_data,
    speech_input,
    text_data,
    transcribe,
)
from speechbrain_cald import guidance as g
from speechbrain_cald.brain import CALDBrain
from speechbrain_cald.checkpoints import AtomicCheckpointer, verify_integrity
from speechbrain_cald.conversion import convert_to_student
from speechbrain_cald.dataprep import DataPrepError, write_csv_manifest
from speechbrain_cald.resumable import NonFiniteLossError
from speechbrain_cald.run_lock import RunLockedError, output_folder_lock
from speechbrain_cald.tasks import CTCASR

SR = 16000
VOCAB = ["<blank>", "|", *"abcdefghijklmnopqrstuvwxyz", "<unk>"]


def tiny_ctc(width=16, seed=0):
    torch.manual_seed(seed)
    config = transformers.Wav2Vec2Config(
        vocab_size=len(VOCAB), hidden_size=width, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 8),
        num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2, feat_extract_norm="layer",
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
        layerdrop=0.0, mask_time_prob=0.0, final_dropout=0.0, pad_token_id=0,
    )  # fmt: skip
    model = transformers.Wav2Vec2ForCTC(config).eval()
    return speech_input.attach_feature_extractor(model, speech_input.feature_extractor_for())


def write_wav(path, samples, subtype="PCM_16"):
    sf.write(path, np.asarray(samples, dtype=np.float32), SR, subtype=subtype)
    return str(path)


def noise(seconds, seed=0):
    return np.random.default_rng(seed).uniform(-0.5, 0.5, int(seconds * SR))


def manifests(tmp_path, rows_by_split):
    """CSV manifests {split: path} of `(ID, duration, wav, wrd)` rows."""
    paths = {}
    for split, rows in rows_by_split.items():
        paths[split] = str(tmp_path / f"{split}.csv")
        write_csv_manifest(
            paths[split], [dict(zip(("ID", "duration", "wav", "wrd"), row)) for row in rows]
        )
    return paths


def load(paths, bad_data="skip", skipped=None):
    items = [speech_data.audio_pipeline(SR), speech_data.char_pipeline(VOCAB, "wrd")]
    keys = ["id", "sig", "words", "tokens"]
    return speech_data.load_manifests(paths, items, keys, bad_data=bad_data, skipped=skipped)


def test_lying_durations_silent_damaged_audio_and_blank_transcripts_are_screened(tmp_path, caplog):
    good = write_wav(tmp_path / "good.wav", noise(0.5))
    long_file = write_wav(tmp_path / "long.wav", noise(3.0))
    silent = write_wav(tmp_path / "silent.wav", np.zeros(SR // 2))
    nan = np.array(noise(0.5))
    nan[100] = np.nan
    damaged = write_wav(tmp_path / "nan.wav", nan, subtype="FLOAT")
    rows = [
        ("ok", 0.5, good, "hello"),
        ("lies", 0.2, long_file, "hello"),  # a 3 s file listed as 0.2 s
        ("silent", 0.5, silent, "hello"),
        ("nan", 0.5, damaged, "hello"),
        ("blank", 0.5, good, "   "),
    ]
    paths = manifests(tmp_path, {"train": rows, "dev": rows[:1], "test": rows[:1]})
    skipped = {}
    with caplog.at_level(logging.WARNING):
        datasets = load(paths, skipped=skipped)
    assert len(datasets["train"]) == 1 and skipped == {"audio": 3, "vocabulary": 1}
    text = caplog.text
    assert "the manifest says 0.2 s, the file holds 3.000 s" in text and "long.wav" in text
    assert "silent.wav: silent" in text and "nan.wav: non-finite" in text
    assert "row ID 'blank': empty (whitespace-only) transcript" in text
    with pytest.raises(DataPrepError, match=r"train\.csv:3: row ID 'lies': .*long\.wav"):
        load(paths, bad_data="error")


def test_an_empty_split_is_a_named_error(tmp_path):
    good = write_wav(tmp_path / "good.wav", noise(0.5))
    silent = write_wav(tmp_path / "silent.wav", np.zeros(SR // 2))
    paths = manifests(
        tmp_path,
        {
            "train": [("a", 0.5, good, "hi")],
            "dev": [("b", 0.5, good, "hi")],
            "test": [("c", 0.5, silent, "hi")],
        },
    )
    with pytest.raises(DataPrepError, match=r"test\.csv: no usable row \(skipped: audio: 1\)"):
        load(paths)


def test_text_manifests_are_screened_too(tmp_path):
    rows = {"a": {"text_a": "fine", "label": 1}, "b": {"text_a": "  ", "label": 0}, "c": {}}
    for split in ("train", "dev", "test"):
        (tmp_path / f"{split}.json").write_text(json.dumps(rows))
    hparams = {"manifest_folder": str(tmp_path), "bad_data": "skip"}
    datasets = text_data.load_datasets(hparams, [], ["id"], ["text_a", "label"])
    assert len(datasets["train"]) == 1
    with pytest.raises(DataPrepError, match=r"train\.json:row 2: row ID 'b': 'text_a' is missing"):
        text_data.load_datasets({**hparams, "bad_data": "error"}, [], ["id"], ["text_a", "label"])


def test_a_stage_without_a_finite_batch_is_an_error_not_zero(tmp_path):
    model = tiny_ctc()
    model.save_pretrained(tmp_path / "m")
    brain = CALDBrain(
        hparams={"task": CTCASR(VOCAB), "guidance": g.Std(str(tmp_path / "m"))},
        run_opts={"device": "cpu", "noprogressbar": True},
    )
    signal = torch.full((SR // 2,), float("nan"))  # past screening (e.g. a changed file)
    batch = PaddedBatch([{"id": "x", "sig": signal, "tokens": torch.tensor([3]), "words": "a"}])
    loader = torch.utils.data.DataLoader([batch], batch_size=None, collate_fn=lambda b: b)
    with pytest.raises(NonFiniteLossError, match="TEST stage: no batch gave finite loss terms"):
        brain.evaluate(loader, progressbar=False)


def test_a_second_run_in_the_same_output_folder_is_refused(tmp_path):
    with output_folder_lock(tmp_path):
        with pytest.raises(RunLockedError, match=rf"{tmp_path} is in use by pid {os.getpid()}"):
            with output_folder_lock(tmp_path):
                pass
    with output_folder_lock(tmp_path):  # released: free again
        pass


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lerning_rate", "0.1"], "--lerning_rate: no such key in .*whisper_asr.yaml"),
        (["--lr", "0.1", "--lr", "0.2"], "--lr is given more than once"),
        (["--max_step", "3"], "did you mean --max_steps"),
    ],
)
def test_misspelled_or_repeated_overrides_are_named(tmp_path, extra, message):
    yaml = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "FSDD", "hparams")
    argv = [os.path.join(yaml, "whisper_asr.yaml"), "--data_folder", str(tmp_path / "d")]
    argv += ["--source_hub", str(tmp_path / "w"), "--output_root", str(tmp_path), *extra]
    with pytest.raises(ValueError, match=message):
        experiment.main(None, None, argv)
    assert not (tmp_path / "std").exists()  # nothing written


def test_a_refused_run_writes_nothing_into_the_busy_folder(tmp_path):
    """The lock is taken before the YAML, overrides or log are written: a second run in
    a busy folder leaves the first run's records as they were."""
    yaml = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "FSDD", "hparams")
    argv = [os.path.join(yaml, "whisper_asr.yaml"), "--data_folder", str(tmp_path / "d")]
    argv += ["--source_hub", str(tmp_path / "w"), "--output_root", str(tmp_path)]
    folder = tmp_path / "std" / "1986"
    folder.mkdir(parents=True)
    records = {name: f"the first run's {name}\n" for name in ("hyperparams.yaml", "log.txt")}
    records["hparams_merged.yaml"] = "merged\n"
    for name, text in records.items():
        (folder / name).write_text(text)

    def never(*args, **kwargs):
        raise AssertionError("nothing may run in a busy folder")

    with output_folder_lock(folder):
        with pytest.raises(RunLockedError, match="is in use by"):
            experiment.main(never, never, argv)
    assert {p.name: p.read_text() for p in folder.iterdir() if p.name in records} == records


def test_target_before_std_and_a_stale_teacher_are_named_errors(tmp_path):
    tiny_ctc(width=16).save_pretrained(tmp_path / "pretrained")
    mode = g.from_mode("target", str(tmp_path / "pretrained"), teacher_folder=str(tmp_path / "std"))
    with pytest.raises(FileNotFoundError, match="std.*run --mode std first"):
        mode.init_student(CTCASR(VOCAB))
    tiny_ctc(width=32).save_pretrained(tmp_path / "std")  # another architecture
    with pytest.raises(ValueError, match="hidden_size 32 vs 16"):
        mode.init_student(CTCASR(VOCAB))
    waypoints = g.from_mode("waypoint", str(tmp_path / "pretrained"), waypoint_folder=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="No step_<s> waypoints .* run --mode std"):
        waypoints.init_student(CTCASR(VOCAB))


def test_an_inference_savedir_is_never_reused_for_another_model(tmp_path):
    """The YAML path links the files into a savedir (the default path links nothing)."""
    wav = torch.from_numpy(noise(0.5, seed=3)).float()[None]
    outputs = []
    for name, seed in (("one", 0), ("two", 1)):
        student = convert_to_student(
            tiny_ctc(seed=seed), {"mixer_config": {"d_state": 8, "headdim": 8}}
        )
        inference.export_inference_folder(tmp_path / name, CTCASR(VOCAB), student[0].eval())
        asr = inference.load_inference_folder(tmp_path / name, tmp_path / "shared", trust_yaml=True)
        outputs.append(asr.encode_batch(wav, torch.ones(1)))
    fresh = inference.load_inference_folder(tmp_path / "two", tmp_path / "fresh", trust_yaml=True)
    torch.testing.assert_close(outputs[1], fresh.encode_batch(wav, torch.ones(1)))
    assert not torch.allclose(outputs[0], outputs[1])
    (tmp_path / "shared" / "notes.txt").write_text("a user's file")
    with pytest.raises(ValueError, match="savedir .*shared holds files of another model"):
        inference.load_inference_folder(tmp_path / "one", tmp_path / "shared", trust_yaml=True)


@pytest.fixture(scope="module")
def asr_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("asr")
    inference.export_inference_folder(folder, CTCASR(VOCAB), tiny_ctc())
    return folder


@pytest.mark.parametrize(
    "case, match",
    [
        ("missing", "not found"),
        ("file", "a file, not a folder"),
        ("no_interface", "`interface` is None"),
        ("cuda", "no CUDA device"),
    ],
)
def test_transcribe_cli_errors_are_one_line_with_status_2(
    case, match, asr_folder, tmp_path, capsys
):
    folder, extra = str(asr_folder), []
    if case == "missing":
        folder = str(tmp_path / "nowhere")
    elif case == "file":
        folder = write_wav(tmp_path / "a.wav", noise(0.1))
    elif case == "no_interface":
        folder = str(tmp_path / "copy")
        shutil.copytree(asr_folder, folder)
        path = os.path.join(folder, "hyperparams.yaml")
        lines = open(path).read().splitlines()
        open(path, "w").write("\n".join(l for l in lines if not l.startswith("interface:")))
        extra = ["--trust-yaml"]  # the default path refuses the changed file earlier
    elif case == "cuda":
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        extra = ["--device", "cuda"]
    with pytest.raises(SystemExit) as exit_info:
        transcribe.main([folder, "x.wav", *extra])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and match in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_checkpoint_leftovers_are_removed_and_deletion_is_atomic(tmp_path, caplog, monkeypatch):
    module = torch.nn.Linear(2, 2)
    ckpt = AtomicCheckpointer(tmp_path, recoverables={"m": module})
    kept = ckpt.save_checkpoint()
    for name in ("partial-CKPT+x", "deleting-CKPT+y", "CKPT+half-deleted"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "m.ckpt").write_bytes(b"leftover")
    with caplog.at_level(logging.WARNING):
        assert ckpt.recover_if_possible().path == kept.path
    assert sorted(p.name for p in tmp_path.iterdir()) == [kept.path.name]
    assert (
        "half-deleted" in caplog.text and "interrupted checkpoint save or deletion" in caplog.text
    )

    def interrupted(path):  # Ctrl-C in the middle of the clean-up's rmtree
        (path / "m.ckpt").unlink()
        raise KeyboardInterrupt

    newer = ckpt.save_checkpoint()
    monkeypatch.setattr(shutil, "rmtree", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ckpt.delete_checkpoints(num_to_keep=1)  # deletes the older one
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("CKPT")] == [newer.path.name]
    assert Checkpointer(tmp_path).find_checkpoint().path == newer.path  # stock reader too
    assert ckpt.recover_if_possible().path == newer.path
    verify_integrity(newer.path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [newer.path.name]


def test_a_changed_model_under_the_same_run_is_one_named_error(tmp_path):
    """The starting model and a run's checkpoints are keyed by what made them: a
    resumed run with another width, source, mode or student is refused naming the
    setting (before: the old model kept silently, or 'damaged' checkpoints)."""
    from speechbrain_cald.conversion import StudentConfig

    tiny = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 32, "conv_dim": (8, 8), "conv_stride": (5, 4),
            "conv_kernel": (10, 8), "num_conv_pos_embeddings": 4,
            "num_conv_pos_embedding_groups": 2}  # fmt: skip
    task = CTCASR(["<blank>", "|", "a", "b"])
    folder = tmp_path / "pretrained"
    pretrained.prepare_pretrained(task, folder, config=tiny)
    pretrained.prepare_pretrained(task, folder, config=tiny)  # the same: reused
    with pytest.raises(ValueError, match=r"source_config: was .*'hidden_size': 16.*now .*32"):
        pretrained.prepare_pretrained(task, folder, config={**tiny, "hidden_size": 32})

    def hparams(**changes):
        base = {"mode": "target", "hybrid_switch_step": None, "source_hub": None,
                "source_config": tiny, "source_overrides": {}, "task": task,
                "student_config": StudentConfig(mixer_config={"d_state": 8}),
                "output_folder": str(tmp_path / "run"),
                "save_folder": str(tmp_path / "run" / "save")}  # fmt: skip
        return {**base, **changes}

    os.makedirs(tmp_path / "run")
    pretrained.check_run_checkpoints(hparams())
    pretrained.check_run_checkpoints(hparams(mode="src_init"))  # no checkpoint yet: free
    os.makedirs(tmp_path / "run" / "save" / "CKPT+2026-12-04+00-00-00+00")
    pretrained.check_run_checkpoints(hparams(mode="src_init"))
    with pytest.raises(ValueError, match=r"checkpoints in .* \(mode: was 'src_init', now 'target'"):
        pretrained.check_run_checkpoints(hparams())
    with pytest.raises(ValueError, match=r"student: was .*'d_state': 8.*now .*'d_state': 16"):
        pretrained.check_run_checkpoints(
            hparams(mode="src_init", student_config=StudentConfig(mixer_config={"d_state": 16}))
        )


def test_an_unknown_test_checkpoint_is_named_before_training():
    with pytest.raises(ValueError, match="test_checkpoint: 'best_on_test', not one of"):
        experiment.tested_checkpoint(None, {"test_checkpoint": "best_on_test"})
