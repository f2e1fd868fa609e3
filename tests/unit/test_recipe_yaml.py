"""A corpus YAML that names a base YAML (`base_hparams`): what the merge keeps,
replaces and adds, checked on hand-written YAML files against the expected values."""

from hyperpyyaml import load_hyperpyyaml

from speechbrain_cald.experiment import merge_base_hparams

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
