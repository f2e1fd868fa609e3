"""A trained recipe's inference folder gives the predictions of the Brain's test stage.

A tiny speech recipe (its recipes.csv row, `--mode unguided`: a converted BiMamba2
student) is trained on the fixtures by `train.py`, which ends by exporting
`<output_folder>/inference`. A fresh interpreter then loads that folder through the
interface (`load_inference_folder` -> `from_hparams(source=..., savedir=...)`) and
predicts every test file with `transcribe_file` / `classify_file`:

- ASR: the transcripts equal the hypotheses of the test stage's WER file, also
  with the stock `speechbrain.inference.ASR.EncoderASR` loading the same folder.
- Classification: the Brain's test stage is re-run on the best checkpoint (same
  hparams, `brain.evaluate`) recording each utterance's head outputs; the interface
  returns the same best index per head, the label the recipe's encoder gives it,
  and its log-probabilities within atol 1e-4 (float32, same operations, different
  processes).

The test stage runs one utterance per batch (`--eval_batch_size 1`): the tiny model's
CNN has wav2vec2's GroupNorm (statistics over the whole padded waveform), so the
padding of a batch changes its outputs, and a file given alone to the interface is
comparable only to an unpadded test batch.
"""

import json
import os
import shlex
import subprocess
import sys

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml
from recipe_runner import make_fixtures, read_table, run_train
from speechbrain.dataio.dataio import load_data_csv
from speechbrain.dataio.encoder import CategoricalEncoder

from speechbrain_cald import experiment, inference, speech_data
from speechbrain_cald.brain import CALDBrain
from speechbrain_cald.exports import padded_label_encoder

ROWS = {row["Recipe"]: row for row in read_table("recipes.csv")}
RUN_NAME, SEED = "unguided", "1986"
# Fresh process: argv = folder, savedir, test manifest; prints {id: prediction} as
# JSON: ASR {"asr": transcript, "stock": the stock EncoderASR's}; classifiers
# {head: [index, label, log-probs]}.
PREDICT = """
import json, sys
from speechbrain.dataio.dataio import load_data_csv
from speechbrain.inference.ASR import EncoderASR
from speechbrain_cald import inference

folder, savedir, manifest = sys.argv[1:]
interface = inference.load_inference_folder(folder, savedir + "/cald")
rows = load_data_csv(manifest)
if isinstance(interface, inference.ASR):
    stock = EncoderASR.from_hparams(source=folder, savedir=savedir + "/stock")
    out = {
        uid: {"asr": interface.transcribe_file(wav), "stock": stock.transcribe_file(wav)}
        for uid, wav in ((uid, row["wav"]) for uid, row in rows.items())
    }
else:
    out = {}
    for uid, row in rows.items():
        out[uid] = {}
        for head in interface.hparams.label_encoders:
            log_probs, _, index, labels = interface.classify_file(row["wav"], head=head)
            out[uid][head] = [index.item(), labels[0], log_probs[0].tolist()]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_fixtures(tmp_path_factory.mktemp("fixtures"))


def train_and_predict(recipe_name, data, output_root):
    """Train the tiny `recipe_name` run, then the fresh process's predictions on its
    test manifest; returns (run folder, manifest rows, predictions)."""
    row = ROWS[recipe_name]
    args = ["--data_folder", os.path.join(data, row["Fixture_root"])]
    args += shlex.split(row["test_flags"]) + ["--mode", RUN_NAME, "--eval_batch_size", "1"]
    run_train(row, output_root, args)
    run_folder = os.path.join(output_root, RUN_NAME, SEED)
    manifest = os.path.join(output_root, "manifests", "test.csv")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", PREDICT, os.path.join(run_folder, "inference")]
        + [str(output_root / "savedir"), manifest],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_folder, load_data_csv(manifest), json.loads(result.stdout.splitlines()[-1])


def wer_file_hypotheses(path):
    """{utterance id: hypothesis words} from an ErrorRateStats WER file.

    Each utterance block is a `<id>, %WER ...` line, then the reference, the edit
    operations and the hypothesis lines, with " ; " between aligned words and
    `<eps>` for a deleted word.
    """
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    start = lines.index("ALIGNMENTS") + 8  # the header block and its example
    hyps = {}
    for i, line in enumerate(lines[start:], start):
        if ", %WER" in line:
            words = [w.strip() for w in lines[i + 3].split(" ; ")]
            hyps[line.split(",")[0]] = [w for w in words if w not in ("<eps>", "")]
    return hyps


def test_asr_inference_folder_matches_test_stage(data, tmp_path):
    run_folder, rows, predictions = train_and_predict("TEDLIUM/ASR", data, tmp_path)
    hyps = wer_file_hypotheses(os.path.join(run_folder, "test_WER.txt"))
    assert set(hyps) == set(rows) == set(predictions)
    assert any(hyps.values())  # the random model emits words: the comparison is not vacuous
    for uid, hyp in hyps.items():
        assert predictions[uid]["asr"].split() == hyp, uid
        assert predictions[uid]["stock"] == predictions[uid]["asr"], uid


def brain_test_outputs(run_folder):
    """Re-run the Brain's test stage of a finished classification run on its best
    checkpoint ({id: {head: log-probs}}), with the hparams the run saved."""
    with open(os.path.join(run_folder, "hyperparams.yaml"), encoding="utf-8") as f:
        hparams = load_hyperpyyaml(f)
    test = speech_data.classification_datasets(hparams)["test"]
    brain = CALDBrain(
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts={"device": "cpu"},
        checkpointer=hparams["checkpointer"],
    )
    outputs = {}
    update_metrics = brain.task.update_metrics

    def record(metrics, student, batch):
        for head, logits in student.logits.items():
            for uid, row in zip(batch.id, logits.float()):
                outputs.setdefault(uid, {})[head] = row
        update_metrics(metrics, student, batch)

    brain.task.update_metrics = record
    keys = {name[:-1]: keys[0] for name, keys in brain.ckpt_keys().items()}
    brain.evaluate(test, test_loader_kwargs={"batch_size": 1}, progressbar=False, **keys)
    with open(os.path.join(run_folder, experiment.METRICS_FILE), encoding="utf-8") as f:
        assert json.load(f)["acc"] == pytest.approx(brain.last_stage_stats["acc"])
    return hparams, outputs


def test_classifier_inference_folder_matches_test_stage(data, tmp_path):
    run_folder, rows, predictions = train_and_predict("SLURP/IC", data, tmp_path)
    hparams, expected = brain_test_outputs(run_folder)
    assert set(expected) == set(rows) == set(predictions)
    for head in hparams["label_columns"]:
        encoder = CategoricalEncoder()
        encoder.load(speech_data.label_encoder_file(hparams["save_folder"], head))
        for uid, outputs in expected.items():
            index, label, log_probs = predictions[uid][head]
            # the test stage's logits over the training labels only: padding slots
            # (outputs beyond them) are never predicted
            padded = padded_label_encoder(encoder, outputs[head].shape[-1])
            reference = inference.without_padding_slots(outputs[head], padded)
            assert index == reference.argmax().item() and index < len(encoder), (uid, head)
            assert label == encoder.ind2lab[index]
            torch.testing.assert_close(torch.tensor(log_probs), reference, atol=1e-4, rtol=0)
