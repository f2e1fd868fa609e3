"""A corpus YAML that names a base YAML (`base_hparams`): what the merge keeps,
replaces and adds, checked on hand-written YAML files against the expected values."""

from hyperpyyaml import load_hyperpyyaml

from speechbrain_cald.hparams_yaml import merge_base_hparams

BASE = """\
lr: 0.001
heads: {speaker: 1251}
columns: {speaker: spk_id}
out: !ref results/<lr>
"""


def write(folder, name, text):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_yaml_without_base_is_not_merged(tmp_path):
    assert merge_base_hparams(write(tmp_path, "base.yaml", BASE)) is None


def test_keys_replace_whole_refs_follow_and_bases_chain(tmp_path):
    write(tmp_path, "recipes/A/hparams/base.yaml", BASE)
    write(
        tmp_path,
        "recipes/B/hparams/mid.yaml",
        "base_hparams: ../../A/hparams/base.yaml\nheads: {intent: 12}\n",
    )
    top = write(
        tmp_path,
        "recipes/C/hparams/top.yaml",
        "base_hparams: ../../B/hparams/mid.yaml\nlr: 0.5\nextra: 7\n",
    )
    hparams = load_hyperpyyaml(merge_base_hparams(top))
    assert hparams == {
        "lr": 0.5,  # the top file's value ...
        "heads": {"intent": 12},  # the middle file's mapping, not merged with the base's
        "columns": {"speaker": "spk_id"},  # untouched: the base's
        "out": "results/0.5",  # ... seen by the base's reference
        "extra": 7,  # a key the base lacks is added
    }
    # command-line overrides apply on top, merging a mapping key by key as usual
    hparams = load_hyperpyyaml(merge_base_hparams(top), "heads: {scenario: 3}")
    assert hparams["heads"] == {"intent": 12, "scenario": 3}


def test_workflow_runs_std_first_then_every_mode_then_hybrid():
    from speechbrain_cald import workflow
    from speechbrain_cald.guidance import MODES

    cmds = workflow.commands("h.yaml", ["--data_folder", "d"], 40, launcher=["torchrun"])
    assert [c[c.index("--mode") + 1] for c in cmds] == [*MODES, "target"]
    assert cmds[0][:3] == ["torchrun", "train.py", "h.yaml"] and cmds[0][-2:] == [
        "--data_folder",
        "d",
    ]
    assert cmds[-1][3:] == [
        "--mode",
        "target",
        "--hybrid_switch_step",
        "40",
        "--run_name",
        "hybrid",
    ] + [
        "--data_folder",
        "d",
    ]
    assert len(workflow.commands("h.yaml", [])) == len(MODES)  # no switch step: no hybrid run


def test_speech_yamls_are_mixer_neutral():
    """Every speech recipe YAML converts with any bidirectional mixer given on the
    command line (`--student_mixer`, plus its own `--student_mixer_config` where the
    mixer needs one), the base YAML's defaults being the mixer's own (the paper's for
    bimamba2); a YAML's small bimamba2 config under another mixer is one clear error."""
    from pathlib import Path

    import pytest
    from test_conversion import tiny_wav2vec2

    from speechbrain_cald.conversion import convert_to_student

    root = Path(__file__).resolve().parents[2] / "recipes"
    yamls = [
        root / "TEDLIUM/ASR/hparams/wav2vec2_cald.yaml",
        root / "SLURP/IC/hparams/wav2vec2_cald.yaml",
        root / "VoxCeleb1/SID/hparams/wav2vec2_cald.yaml",
        root / "FSDD/hparams/whisper_asr.yaml",
        root / "FSDD/hparams/whisper_sid.yaml",
    ]
    # (positions kept: the tiny model converted here is a wav2vec2, which adds none)
    placeholders = "data_folder: /nowhere\noutput_root: /nowhere\nsource_hub: /nowhere\n"
    placeholders += "student_positions: keep\n"
    for path in yamls:
        text = merge_base_hparams(path)
        for mixer, config in (
            ("bimamba2", "{}"),
            ("bimamba2_shared", "{}"),
            ("linformer", "{max_len: 4000, k: 8}"),
        ):
            overrides = f"{placeholders}student_mixer: {mixer}\nstudent_mixer_config: {config}"
            student = load_hyperpyyaml(text, overrides)["student_config"]
            report = convert_to_student(tiny_wav2vec2(), student)[1]
            assert report.mixer == mixer, path
        default = load_hyperpyyaml(text, placeholders)["student_config"]
        assert default.mixer == "bimamba2" and default.mixer_config == {}, path
    small = root / "FSDD/hparams/wav2vec2_cald.yaml"
    student = load_hyperpyyaml(
        merge_base_hparams(small) or small.read_text(), "data_folder: /x\nstudent_mixer: linformer"
    )["student_config"]
    with pytest.raises(ValueError, match=r"\['chunk_size', 'd_state', 'headdim'\]: not fields"):
        convert_to_student(tiny_wav2vec2(), student)
