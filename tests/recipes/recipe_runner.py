"""What the recipe smoke tests share: the recipe tables, one `train.py` run as a
subprocess (the README command), and the metric files a finished run must leave."""

import csv
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def read_table(name):
    """Rows of a recipe table (a CSV beside this file) as dicts."""
    with open(os.path.join(os.path.dirname(__file__), name), newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def make_fixtures(out, corpus="all", size="tiny"):
    """Fixture corpora in their official layouts under `out` (tools/make_fixtures.py,
    procedural voices: no espeak-ng needed); returns `out`."""
    script = os.path.join(ROOT, "tools", "make_fixtures.py")
    args = ["--out", str(out), "--corpus", corpus, "--size", size, "--synth", "tones"]
    subprocess.run([sys.executable, script, *args], check=True, capture_output=True)
    return out


def train_command(row, output_root, args, launcher=(sys.executable,)):
    """(command, cwd, env) of `python train.py <row's yaml> <args> --output_root ...`
    in the row's recipe folder, offline on CPU with one thread; `launcher` replaces
    `python` (e.g. a torchrun command line)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": ROOT}
    cmd = [*launcher, "train.py", row["Hparam_file"], *args]
    cmd += ["--output_root", str(output_root), "--device", "cpu", "--noprogressbar"]
    return cmd, os.path.join(ROOT, "recipes", row["Recipe"]), env


def run_train(row, output_root, args, launcher=(sys.executable,)):
    """Run `train_command`; fails with its stderr; returns seconds."""
    cmd, cwd, env = train_command(row, output_root, args, launcher)
    start = time.time()
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    return time.time() - start


def run_metrics(output_root, run_name, seed="1986"):
    """test_metrics.json of one run (loaded), after checking its log and export exist."""
    folder = os.path.join(output_root, run_name, seed)
    assert os.path.isfile(os.path.join(folder, "train_log.txt"))
    assert os.path.isfile(os.path.join(folder, "best_model", "config.json"))
    with open(os.path.join(folder, "test_metrics.json"), encoding="utf-8") as f:
        return json.load(f)


def tiny_whisper_folder(folder):
    """A tiny random Whisper checkpoint (2 encoder layers, width 16, 80 mel bins) with its
    feature extractor, saved to `folder`, standing in for tiny.en; returns `folder`."""
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=8, d_model=16, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        max_source_positions=1500, max_target_positions=8, pad_token_id=0, bos_token_id=1,
        eos_token_id=0, decoder_start_token_id=1,
    )  # fmt: skip
    WhisperModel(config).save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(folder)
    return folder


def shipped_fsdd_part(out, speakers=("george", "jackson", "theo"), last_index=8):
    """Part of the shipped FSDD subset (recipes/Demo/data), copied to `out/recordings`:
    `speakers`, indices 5..`last_index`; returns `out`."""
    shipped = os.path.join(ROOT, "recipes", "Demo", "data", "fsdd_subset", "recordings")
    recordings = os.path.join(out, "recordings")
    os.makedirs(recordings)
    for name in os.listdir(shipped):
        _, speaker, index = name[:-4].split("_")
        if speaker in speakers and int(index) <= last_index:
            shutil.copy(os.path.join(shipped, name), os.path.join(recordings, name))
    return out
