"""Diagnostic (not a test): why FSDD ASR students lose accuracy on long inputs.

The long strings of `bench_fsdd_long.py` (same seeded strings, `--split dev` to choose
anything) are transcribed by each run's best model in the training code's forward
(`CTCASR.load`, greedy CTC) in three ways, to separate the candidate causes:

- `one pass`: the whole string's log-mel, one encoder pass (as deployed);
- `norm per group`: one pass over log-mel computed per group of `--group` recordings
  and joined (Whisper's floor, max - 8, then follows each group, as in training);
- `independent groups`: each group of recordings its own pass, transcripts joined
  (training-length contexts; the cut points are the recordings' ends, known here);

and the one-pass transcript split at the middle group boundary gives the WER of the
first and the second half (a drift along the string shows as a worse second half).
Then, per run, the memory of its scans' heads on the first string of the longest
length: 1 / (dt |A|) in encoder frames (the state's decay time), the median over the
string's frames, summarised over every head of every Mamba2 mixer.

    OMP_NUM_THREADS=1 python benchmarks/diag_fsdd_long_context.py --fsdd ../shared/data/fsdd \\
        --runs results/bench_fsdd_whisper/asr --modes target --seeds 1986 1987 1988 \\
        --seconds 30 60 --split dev [--group 4] [--out results/fsdd_long_context]
"""

import argparse
import os
import sys
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from speechbrain.utils.edit_distance import wer_details_for_batch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_fsdd_long  # noqa: E402  (the long strings)
import machine  # noqa: E402

from speechbrain_cald import hyperyaml, speech_input  # noqa: E402
from speechbrain_cald.dataprep import read_audio, read_csv_manifest  # noqa: E402
from speechbrain_cald.lobes.mamba2 import Mamba2Mixer  # noqa: E402
from speechbrain_cald.tasks import CTCASR  # noqa: E402

ROOT = bench_fsdd_long.ROOT
VOCAB_YAML = os.path.join(ROOT, "recipes", "FSDD", "hparams", "whisper_asr.yaml")
CONDITIONS = ("one pass", "norm per group", "independent groups", "first half", "second half")


def word_errors(pairs):
    """WER in % over (reference words, hypothesis words) pairs."""
    details = wer_details_for_batch(list(range(len(pairs))), *zip(*pairs))
    return 100 * sum(d["num_edits"] for d in details) / sum(d["num_ref_tokens"] for d in details)


def string_audio(row):
    """The waveform of a manifest row's string at the models' rate, float32 `(samples,)`."""
    return torch.from_numpy(read_audio(row["wav"], bench_fsdd_long.SAMPLE_RATE)).float()


def log_mel(wav, filters):
    """Whisper's log-mel of one waveform `(samples,)` -> `(mel, frames)`."""
    return speech_input.log_mel(wav[None], torch.tensor([len(wav)]), filters)[0][0]


def mel_filters(model):
    """The mel filter bank of `model`'s feature extractor."""
    return speech_input.feature_extractor_from_config(model.config).mel_filters


def memory_spans(model, row):
    """Every Mamba2 head's memory 1 / (dt |A|) in encoder frames, the median over the
    frames of `row`'s string (one pass): a 1-D array over all heads of all mixers."""
    spans, hooks = {}, []  # mixer -> [(time, heads)] (long inputs run in time blocks)
    for mixer in (m for m in model.modules() if isinstance(m, Mamba2Mixer)):

        def record(module, args, out, mixer=mixer):
            dt = out[0, :, -mixer.config.nheads :]  # in_proj's last block, (l, h)
            rate = F.softplus(dt + mixer.dt_bias) * torch.exp(mixer.A_log)
            spans.setdefault(mixer, []).append(1 / rate)

        hooks.append(mixer.in_proj.register_forward_hook(record))
    with torch.no_grad():
        model(input_features=log_mel(string_audio(row), mel_filters(model))[None])
    for hook in hooks:
        hook.remove()
    return torch.cat([torch.cat(blocks).median(dim=0).values for blocks in spans.values()]).numpy()


def transcripts(task, model, row, group):
    """{condition: (reference words, hypothesis words)} for one manifest row."""
    scale = bench_fsdd_long.SAMPLE_RATE // bench_fsdd_long.RATE
    wav = string_audio(row)
    ends = [int(e) * scale for e in row["ends"].split()]
    words = row["wrd"].split()
    cuts = ends[group - 1 :: group]
    cuts = cuts if cuts and cuts[-1] == ends[-1] else [*cuts, ends[-1]]  # fewer than a group
    spans = list(zip([0, *cuts[:-1]], cuts))
    filters = mel_filters(model)

    def logits(features):
        with torch.no_grad():
            return model(input_features=features[None]).logits

    def decode(out):
        return task.decode(SimpleNamespace(logits=out, mask=torch.ones(out.shape[:2], dtype=int)))[
            0
        ]

    whole = logits(log_mel(wav, filters))
    joined = logits(torch.cat([log_mel(wav[a:b], filters) for a, b in spans], dim=-1))
    independent = sum((decode(logits(log_mel(wav[a:b], filters))) for a, b in spans), [])
    half = len(spans) // 2
    middle = spans[half][0] // (2 * speech_input.HOP)  # encoder frames: 2 mel frames each
    n_first = min(half * group, len(words))
    return {
        "one pass": (words, decode(whole)),
        "norm per group": (words, decode(joined)),
        "independent groups": (words, independent),
        "first half": (words[:n_first], decode(whole[:, :middle])),
        "second half": (words[n_first:], decode(whole[:, middle:])),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fsdd", required=True, help="FSDD root (recordings/)")
    parser.add_argument("--runs", required=True, help="the recipe's output_root")
    parser.add_argument("--modes", nargs="+", default=["target"])
    parser.add_argument("--seeds", nargs="+", default=["1986"])
    parser.add_argument("--seconds", nargs="+", type=float, default=[30, 60])
    parser.add_argument("--count", type=int, default=4, help="strings per length")
    parser.add_argument("--split", default="dev", choices=["test", "dev"])
    parser.add_argument("--group", type=int, default=4, help="recordings per group")
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "fsdd_long_context"))
    args = parser.parse_args(argv)
    print(machine.describe(), flush=True)
    manifests = bench_fsdd_long.long_strings(
        args.fsdd, args.split, args.seconds, args.count, args.out
    )
    task = CTCASR(hyperyaml.load_value(VOCAB_YAML, "vocab"))  # blank 0, "|": the YAML's
    print("| run | length | " + " | ".join(CONDITIONS) + " |")
    print("|---" * (len(CONDITIONS) + 2) + "|")
    for mode in args.modes:
        for seed in args.seeds:
            model, _ = task.load(os.path.join(args.runs, mode, str(seed), "best_model"))
            model.eval()
            for length, manifest in manifests.items():
                pairs = {c: [] for c in CONDITIONS}
                for row in read_csv_manifest(manifest):
                    for condition, pair in transcripts(task, model, row, args.group).items():
                        pairs[condition].append(pair)
                cells = " | ".join(f"{word_errors(pairs[c]):.1f}" for c in CONDITIONS)
                print(f"| {mode}/{seed} | {length:g} s | {cells} |", flush=True)
            spans = memory_spans(model, read_csv_manifest(manifest)[0])
            quartiles = " / ".join(f"{q:.0f}" for q in np.percentile(spans, [25, 50, 75]))
            print(
                f"{mode}/{seed}: heads' memory (frames, {len(spans)} heads, {length:g} s "
                f"string): quartiles {quartiles}, max {spans.max():.0f}; over 50: "
                f"{(spans > 50).sum()}, over 200: {(spans > 200).sum()}, over 1000: "
                f"{(spans > 1000).sum()}",
                flush=True,
            )


if __name__ == "__main__":
    main()
