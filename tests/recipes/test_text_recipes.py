"""Smoke tests of the text recipes (GLUE/IMDB classification, Pile LM) on the tiny
text fixtures (tools/make_text_fixtures.py), SpeechBrain style.

Each row of text_recipes.csv is one recipe YAML, its fixture data and offline
teacher folder, the modes to run ("all": std, then every CALD mode) and the flags
that make it tiny. Each run is `python train.py <yaml> --data_folder ...
--source_hub ...` (the README commands) and must write its metric files. The
`slow` test checks that CALD distillation trains the LM student. The lm-eval test
scores a trained student on a local task through lm_eval_student.py; it is skipped
when lm-evaluation-harness (the `lm` extra) is not installed.
"""

import json
import os
import random
import shlex
import subprocess
import sys

import pytest
import torch
import transformers
from recipe_runner import ROOT, read_table, run_metrics, run_train

from speechbrain_cald.guidance import RUN_MODES, mode_overrides

ROWS = read_table("text_recipes.csv")
IDS = [f"{r['Recipe']}:{r['Fixture_root']}:{r['Modes']}" for r in ROWS]
# run name -> flags, as `python -m speechbrain_cald.workflow` runs them; hybrid =
# target with L_LD off from step 2
MODES = {mode: mode_overrides(mode, hybrid_switch_step=2) for mode in RUN_MODES}


@pytest.fixture(scope="session")
def text_data(tmp_path_factory):
    """The text fixtures and tiny teacher folders."""
    out = tmp_path_factory.mktemp("text_fixtures")
    script = os.path.join(ROOT, "tools", "make_text_fixtures.py")
    subprocess.run([sys.executable, script, "--out", str(out)], check=True, capture_output=True)
    return out


def train(row, data, output_root, flags=()):
    """One `train.py` run of a text recipe row (data + teacher folder); returns seconds."""
    args = ["--data_folder", os.path.join(data, row["Fixture_root"])]
    args += ["--source_hub", os.path.join(data, row["Teacher"])]
    args += shlex.split(row["test_flags"]) + list(flags)
    return run_train(row, output_root, args)


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_text_recipe(row, text_data, tmp_path):
    """The row's modes in order (std first: teacher and waypoints); metric files."""
    names = list(MODES) if row["Modes"] == "all" else row["Modes"].split()
    metric = "acc" if "GLUE" in row["Recipe"] else "ppl"
    seconds = {}
    for name in names:
        seconds[name] = train(row, text_data, tmp_path, MODES[name])
        stats = run_metrics(tmp_path, name)
        assert metric in stats and stats["step"] > 0, stats
        assert os.path.isfile(os.path.join(tmp_path, name, "1986", f"test_{metric}.txt"))
    if "std" in names and "waypoint" in names:
        assert os.listdir(os.path.join(tmp_path, "std", "1986", "waypoints"))
    print(row["Recipe"], {k: round(v, 1) for k, v in seconds.items()})


def train_log(output_root, run_name, seed="1986"):
    """Train and valid stats of each epoch line of train_log.txt."""
    epochs = []
    with open(os.path.join(output_root, run_name, seed, "train_log.txt"), encoding="utf-8") as f:
        for line in filter(lambda line: line.startswith("epoch"), f):
            stats = {}
            for part in line.strip().split(" - ")[-2:]:
                for item in part.split(", "):
                    key, value = item.rsplit(": ", 1)
                    stats[key] = float(value)
            epochs.append(stats)
    return epochs


@pytest.mark.slow
def test_lm_student_learns(text_data, tmp_path):
    """Target-guided Mamba student: held-out perplexity drops and L_LD falls."""
    row = next(r for r in ROWS if r["Recipe"] == "Pile/LM" and r["Modes"] == "all")
    flags = "--seq_len 32 --batch_size 4 --grad_accumulation_factor 1 --lr 0.003"
    steps = "--max_steps 60 --eval_every_steps 20 --waypoint_every 20"
    row = {**row, "test_flags": f'{flags} {steps} --student_mixer_config "{{d_state: 4}}"'}
    train(row, text_data, tmp_path, MODES["std"])
    train(row, text_data, tmp_path, MODES["target"])
    epochs = train_log(tmp_path, "target")
    first, last = epochs[0], epochs[-1]
    assert last["valid ppl"] < first["valid ppl"], (first, last)
    assert last["train ld"] < first["train ld"], (first, last)
    print("target", {k: (first[k], last[k]) for k in ("valid ppl", "train ld")})


def _recipe_module(recipe, name):
    """Import a recipe's prepare module (recipes are not a package)."""
    sys.path.insert(0, os.path.join(ROOT, "recipes", recipe))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


def test_glue_prepare_rows_and_errors(text_data, tmp_path):
    """QQP pairs are read; a malformed row or label names its file and line."""
    glue = _recipe_module("GLUE/Classification", "glue_prepare")
    rows = glue.read_glue_tsv(os.path.join(text_data, "glue", "QQP", "dev.tsv"), "qqp")
    first = next(iter(rows.values()))
    assert set(first) == {"text_a", "text_b", "label"} and first["label"] in (0, 1)
    bad = tmp_path / "dev.tsv"
    bad.write_text("index\tquestion\tsentence\tlabel\n0\tq ?\ts .\tentailment\n1\tq ?\n")
    with pytest.raises(ValueError, match=f"{bad}:3: expected 4"):
        glue.read_glue_tsv(str(bad), "qnli")
    bad.write_text("sentence\tlabel\ngood .\tmaybe\n")
    with pytest.raises(ValueError, match=f"{bad}:2: label 'maybe'"):
        glue.read_glue_tsv(str(bad), "sst2")


def test_glue_tsv_as_editors_and_spreadsheets_write_it(tmp_path):
    """A byte-order mark, CRLF line endings and a 200,000-character field are read; a
    file in another encoding is one error naming the file and the line."""
    glue = _recipe_module("GLUE/Classification", "glue_prepare")
    tsv = tmp_path / "dev.tsv"
    long_review = "word " * 40000
    text = f"sentence\tlabel\r\ngood .\t1\r\n{long_review}\t0\r\n"
    tsv.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    rows = list(glue.read_glue_tsv(str(tsv), "sst2").values())
    assert [r["label"] for r in rows] == [1, 0] and rows[1]["text_a"] == long_review
    tsv.write_bytes("sentence\tlabel\ngood .\t1\ncaf\u00e9 .\t0\n".encode("latin-1"))
    with pytest.raises(ValueError, match=f"{tsv}:3: not UTF-8 text \\(byte 0xe9\\)"):
        glue.read_glue_tsv(str(tsv), "sst2")


def test_pile_rows_and_errors(text_data, tmp_path):
    """Rows hold seq_len + 1 tokens; a bad jsonl line names its file and line."""
    pile = _recipe_module("Pile/LM", "pile_prepare")
    tokenizer = transformers.AutoTokenizer.from_pretrained(text_data / "pythia_tiny")
    rows = pile.token_rows([str(text_data / "pile" / "val.jsonl")], tokenizer, 16)
    assert rows and all(len(r) == 17 for r in rows)
    bad = tmp_path / "train_00.jsonl"
    bad.write_text('{"text": "the film ."}\n{"txt": 1}\n')
    with pytest.raises(ValueError, match=f"{bad}:2"):
        pile.token_rows([str(bad)], tokenizer, 16)


def write_local_choice_task(text_data, folder, n_items=24, seed=0):
    """A local lm-eval multiple-choice task: its YAML and jsonl dataset in `folder`.

    Items come from the fixture's SST-2 dev sentences ("<subject> <verb> <word> ..."):
    the context is the first three words and the choices the sentence's sentiment word
    and two other sentiment words of the fixture, so the model's preferred choice
    varies from item to item. Returns the items.
    """
    import yaml

    with open(text_data / "glue" / "SST-2" / "dev.tsv", encoding="utf-8") as f:
        sentences = [line.split("\t")[0].split() for line in list(f)[1:]]
    words = sorted({s[3] for s in sentences})
    rng = random.Random(seed)
    items = []
    for s in sentences[:n_items]:
        choices = rng.sample([w for w in words if w != s[3]], 2) + [s[3]]
        rng.shuffle(choices)
        items.append({"context": " ".join(s[:3]), "choices": choices, "label": choices.index(s[3])})
    data = folder / "items.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in items))
    task = {
        "task": "cald_tiny_choice",
        "dataset_path": "json",  # datasets' local json builder: no hub access
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{context}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "label",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }
    (folder / "cald_tiny_choice.yaml").write_text(yaml.safe_dump(task))
    return items


def choice_loglikelihoods(model, tokenizer, context, choices):
    """log P(" " + choice | context) of each choice, summed over the choice's tokens,
    from one unpadded forward pass per choice (the reference for the harness)."""
    n_context = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    scores = []
    for choice in choices:
        ids = tokenizer(f"{context} {choice}", add_special_tokens=False)["input_ids"]
        ids = torch.tensor([ids])
        with torch.no_grad():
            logprobs = model(input_ids=ids).logits.float().log_softmax(-1)[0]
        targets = ids[0, n_context:]
        scores.append(logprobs[n_context - 1 : -1].gather(1, targets[:, None]).sum().item())
    return scores


@pytest.fixture(scope="session")
def lm_eval_harness():
    """lm-evaluation-harness, or a skip (session scope: before the fixtures are built)."""
    return pytest.importorskip(
        "lm_eval", reason='lm-evaluation-harness not installed (the `lm` extra: "lm-eval[hf]")'
    )


def test_lm_eval_local_task(lm_eval_harness, text_data, tmp_path):
    """lm_eval_student.py (the README command) scores a trained Mamba student on a local
    multiple-choice task; the harness' accuracy must equal the accuracy of the choice of
    highest log-likelihood computed directly with the model (exactly: every item's top
    two choices differ by more than 1e-5 nats, so float32 rounding differences
    between the harness' batched passes and these cannot flip a choice)."""
    from speechbrain_cald.tasks import CausalLM

    row = next(r for r in ROWS if r["Recipe"] == "Pile/LM" and r["Modes"] == "all")
    train(row, text_data, tmp_path / "run", MODES["unguided"])
    model_folder = tmp_path / "run" / "unguided" / "1986" / "best_model"
    tokenizer_folder = text_data / row["Teacher"]
    task_folder = tmp_path / "tasks"  # only task YAMLs: the harness reads every YAML there
    task_folder.mkdir()
    items = write_local_choice_task(text_data, task_folder)
    out = tmp_path / "lm_eval.json"
    cmd = [sys.executable, "lm_eval_student.py", "--model", str(model_folder)]
    cmd += ["--tokenizer", str(tokenizer_folder), "--tasks", "cald_tiny_choice"]
    cmd += ["--include_path", str(task_folder), "--batch_size", "4", "--out", str(out)]
    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env = {**os.environ, **offline, "HF_DATASETS_CACHE": str(tmp_path / "datasets_cache")}
    cwd = os.path.join(ROOT, "recipes", row["Recipe"])
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    accs = json.loads(out.read_text())

    model = CausalLM().load(str(model_folder))[0].eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_folder)
    predicted = []
    for item in items:
        scores = choice_loglikelihoods(model, tokenizer, item["context"], item["choices"])
        top, second = sorted(scores)[-2:][::-1]
        assert top - second > 1e-5, (item, scores)
        predicted.append(scores.index(top))
    assert len(set(predicted)) > 1, predicted  # the choice depends on the item
    expected = sum(p == item["label"] for p, item in zip(predicted, items)) / len(items)
    assert accs["cald_tiny_choice"] == pytest.approx(expected, abs=1e-9), (accs, expected)
    assert accs["mean"] == pytest.approx(expected, abs=1e-9)
    print("lm-eval acc", accs["cald_tiny_choice"], "reference", expected)
