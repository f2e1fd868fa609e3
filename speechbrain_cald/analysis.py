"""Analysis tools of the paper (CALD_METHOD.md section 5): feature shift and trajectories.

- `feature_shift`: per layer, the mean over valid frames / tokens of 1 - cosine
  similarity between the hidden states of two HF models on the same inputs (e.g. the
  pretrained vs a fine-tuned transformer, or a teacher vs its converted student).
- `hidden_state_trajectories` + `project_2d`: where the checkpoints of several runs
  sit in hidden-state space, projected to 2-D by one PCA fitted on all runs together.
- `plot_feature_shift`, `plot_trajectories`: PNG figures (matplotlib, Agg backend).

CLI (prints the per-layer / per-checkpoint table):

    python -m speechbrain_cald.analysis feature-shift --model-a DIR --model-b DIR \\
        --audio a.wav b.wav --out shift.png [--csv shift.csv]
    python -m speechbrain_cald.analysis trajectories --run std CKPT [CKPT ...] \\
        --run target CKPT [CKPT ...] --audio a.wav b.wav --layer 6 --out traj.png \\
        [--base DIR] [--csv traj.csv]

Model folders are HF `save_pretrained` folders; a converted CALD student (config with
a `cald_student` entry) is loaded through `speechbrain_cald.conversion`.
"""

import argparse
import csv
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from speechbrain_cald.audio import read_audio
from speechbrain_cald.models import MODEL_CLASSES, model_class
from speechbrain_cald.speech_input import speech_model_forward

SAMPLE_RATE = 16000

Batch = Mapping[str, torch.Tensor]


# ---------------------------------------------------------------------------------
# Valid frames and hidden states
# ---------------------------------------------------------------------------------


@torch.no_grad()
def _hidden_states(model: nn.Module, batch: Batch) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Hidden states (num_layers + 1 of `(batch, frames, d_model)`) and their valid
    mask `(batch, frames)` for one batch of model kwargs (model in eval mode).

    Raw waveforms (`input_values` with a sample `attention_mask`, as `audio_batches`
    makes them) go through the speech input path of training and inference
    (`speech_input.speech_model_forward`: the model's input normalisation, a
    padding-exact CNN); text batches (`input_ids`) are passed to the model as they are.
    """
    device = next(model.parameters()).device
    kwargs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    mask = kwargs.get("attention_mask")
    if "input_values" in kwargs:
        wavs = kwargs["input_values"]
        if mask is None:
            mask = torch.ones(wavs.shape, dtype=torch.long, device=device)
        rel_lens = mask.sum(1).double() / wavs.shape[1]
        out, mask = speech_model_forward(model, wavs, rel_lens, output_hidden_states=True)
        return out.hidden_states, mask
    states = model(**kwargs, output_hidden_states=True).hidden_states
    if mask is None:
        mask = torch.ones(states[0].shape[:2], dtype=torch.bool, device=device)
    mask = mask.bool()
    if mask.shape != states[0].shape[:2]:
        raise ValueError(
            f"valid mask {tuple(mask.shape)} does not fit hidden states {tuple(states[0].shape)}"
        )
    return states, mask


# ---------------------------------------------------------------------------------
# Feature shift
# ---------------------------------------------------------------------------------


def _cosine_distance_sum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sum over rows of 1 - cos(a, b) for `(frames, d_model)` inputs, in float64.

    Computed as |a/|a| - b/|b||^2 / 2: exactly 0 for a == b, and no cancellation for
    nearly parallel vectors (unlike 1 - a.b / (|a||b|)).
    """
    unit_a = F.normalize(a.double(), dim=-1)
    unit_b = F.normalize(b.double(), dim=-1)
    return 0.5 * (unit_a - unit_b).square().sum()


def feature_shift(model_a: nn.Module, model_b: nn.Module, batches: Iterable[Batch]) -> torch.Tensor:
    """Per-layer mean over valid frames of 1 - cos(h_a, h_b), in float64.

    Args:
        model_a, model_b: HF models with the same hidden-state layout (same number of
            layers and frames), e.g. the pretrained and a fine-tuned transformer, or a
            teacher and its converted student. Both are put in eval mode.
        batches: dicts of model kwargs (`input_values` or `input_ids`, and optionally
            `attention_mask`, 0/1 with right padding); the same inputs go to both models.

    Returns:
        `(num_layers + 1,)`: index 0 is the embedding output, i the output of layer i.
        Every valid frame of every batch weighs the same (sum over all frames / their
        count, not a mean of batch means); padded frames never count.
    """
    model_a.eval()
    model_b.eval()
    total, count = None, 0
    for batch in batches:
        states_a, mask = _hidden_states(model_a, batch)
        states_b, mask_b = _hidden_states(model_b, batch)
        if len(states_a) != len(states_b) or not torch.equal(mask, mask_b.to(mask.device)):
            raise ValueError("the two models' hidden states differ in layer count or frames")
        per_layer = torch.stack(
            [
                _cosine_distance_sum(a[mask], b.to(a.device)[mask])
                for a, b in zip(states_a, states_b)
            ]
        ).cpu()  # (num_layers + 1,)
        total = per_layer if total is None else total + per_layer
        count += int(mask.sum())
    if not count:
        raise ValueError("no valid frames in the given batches")
    return total / count


# ---------------------------------------------------------------------------------
# Trajectories
# ---------------------------------------------------------------------------------


def load_model(folder: str | Path) -> nn.Module:
    """An HF `save_pretrained` folder: a CALD student (config has `cald_student`) via
    `speechbrain_cald.conversion.from_pretrained`, anything else via transformers'
    AutoModel (the class in `architectures`, e.g. Wav2Vec2ForCTC or this package's
    WhisperEncoderForCTC, when it is known)."""
    import transformers

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    if "cald_student" in config:
        from speechbrain_cald.conversion import from_pretrained  # lazy: heavy, optional

        return from_pretrained(folder)
    for name in config.get("architectures") or []:
        if name in MODEL_CLASSES or hasattr(transformers, name):
            return model_class(name).from_pretrained(folder)
    return transformers.AutoModel.from_pretrained(folder)


def _checkpoint(item: nn.Module | str | Path, build_model: Callable[[], nn.Module] | None):
    """A model from a model (as is), an HF folder, or a state-dict file loaded into
    `build_model()`."""
    if isinstance(item, nn.Module):
        return item
    path = Path(item)
    if path.is_dir():
        return load_model(path)
    if build_model is None:
        raise ValueError(f"{path} is a state-dict file: give build_model to hold it")
    model = build_model()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model


@torch.no_grad()
def pooled_features(model: nn.Module, batches: Sequence[Batch], layer: int) -> np.ndarray:
    """Masked mean over frames of hidden state `layer` for each probe input, concatenated
    over inputs: `(num_inputs * d_model,)` float64."""
    model.eval()
    pooled = []
    for batch in batches:
        states, mask = _hidden_states(model, batch)
        h = states[layer].double() * mask[..., None]  # (batch, frames, d_model)
        pooled.append((h.sum(1) / mask.sum(1, keepdim=True)).cpu())  # (batch, d_model)
    return torch.cat(pooled).flatten().numpy()


def hidden_state_trajectories(
    checkpoints_per_run: Mapping[str, Sequence[nn.Module | str | Path]],
    build_model: Callable[[], nn.Module] | None,
    batches: Iterable[Batch],
    layer: int,
) -> dict[str, np.ndarray]:
    """Each run's checkpoints as points in hidden-state space.

    Args:
        checkpoints_per_run: run name -> its checkpoints in training order, each a
            model, an HF folder, or a state-dict file (loaded into `build_model()`).
        build_model: returns a fresh model of the runs' architecture (only needed for
            state-dict files).
        batches: the fixed probe inputs (model kwargs), the same for every checkpoint.
        layer: hidden-state index (0 = embedding output).

    Returns:
        run -> `(num_checkpoints, num_inputs * d_model)`: `pooled_features` per checkpoint.
    """
    batches = list(batches)  # read once per checkpoint
    return {
        run: np.stack(
            [pooled_features(_checkpoint(item, build_model), batches, layer) for item in items]
        )
        for run, items in checkpoints_per_run.items()
    }


def project_2d(trajectories: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, np.ndarray]:
    """PCA to 2-D fitted on all runs' points together: run -> `(num_checkpoints, 2)`.

    Scores on the first two principal components of the jointly centred points (SVD,
    float64); each component's sign is fixed so that its largest-magnitude score is
    positive. With fewer than two directions of variation the missing column is 0.
    """
    points = [torch.as_tensor(np.asarray(t), dtype=torch.float64) for t in trajectories.values()]
    x = torch.cat([p.reshape(len(p), -1) for p in points])  # (total_checkpoints, features)
    x = x - x.mean(0)
    u, s, _ = torch.linalg.svd(x, full_matrices=False)
    scores = (u * s)[:, :2]
    signs = torch.sign(scores.gather(0, scores.abs().argmax(0, keepdim=True)))
    scores = scores * torch.where(signs == 0, 1.0, signs)
    scores = F.pad(scores, (0, 2 - scores.shape[1]))  # (total_checkpoints, 2)
    return dict(
        zip(trajectories, (part.numpy() for part in scores.split([len(p) for p in points])))
    )


# ---------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_feature_shift(shifts: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """One curve per label of feature shift `(num_layers + 1,)` against layer index."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, shift in shifts.items():
        values = torch.as_tensor(shift).cpu().numpy()
        ax.plot(range(len(values)), values, marker="o", label=label)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("layer (0 = embedding output)")
    ax.set_ylabel("feature shift (1 - cosine similarity)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_trajectories(projected: Mapping[str, np.ndarray], path: str | Path) -> None:
    """One 2-D line per run (`(num_checkpoints, 2)`), circle = first checkpoint,
    star = last."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    for run, xy in projected.items():
        xy = np.asarray(xy)
        (line,) = ax.plot(xy[:, 0], xy[:, 1], marker=".", label=run)
        ax.plot(*xy[0], marker="o", markersize=9, color=line.get_color())
        ax.plot(*xy[-1], marker="*", markersize=14, color=line.get_color())
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------


def audio_batches(paths: Sequence[str | Path], batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Right-padded `{"input_values": (batch, samples), "attention_mask": (batch, samples)}`
    batches of the given audio files."""
    wavs = [torch.from_numpy(read_audio(p, SAMPLE_RATE)) for p in paths]
    batches = []
    for start in range(0, len(wavs), batch_size):
        chunk = wavs[start : start + batch_size]
        values = torch.zeros(len(chunk), max(len(w) for w in chunk))
        mask = torch.zeros(values.shape, dtype=torch.long)
        for row, wav in enumerate(chunk):
            values[row, : len(wav)] = wav
            mask[row, : len(wav)] = 1
        batches.append({"input_values": values, "attention_mask": mask})
    return batches


def _write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _feature_shift_cli(args) -> None:
    model_a, model_b = load_model(args.model_a), load_model(args.model_b)
    shift = feature_shift(model_a, model_b, audio_batches(args.audio, args.batch_size))
    rows = [(layer, f"{value:.6f}") for layer, value in enumerate(shift.tolist())]
    print(f"feature shift (1 - cos), {args.model_a} vs {args.model_b}")
    print(f"{'layer':>5}  {'shift':>10}")
    for layer, value in rows:
        print(f"{layer:>5}  {value:>10}")
    plot_feature_shift({f"{Path(args.model_b).name} vs {Path(args.model_a).name}": shift}, args.out)
    if args.csv:
        _write_csv(args.csv, ["layer", "feature_shift"], rows)


def _resolve_checkpoint(path: str, ckpt_name: str) -> Path:
    """An HF folder or a state-dict file as is; a SpeechBrain checkpoint folder
    (no config.json) -> its `ckpt_name` file."""
    path = Path(path)
    if path.is_dir() and not (path / "config.json").exists():
        return path / ckpt_name
    return path


def _trajectories_cli(args) -> None:
    given = {run[0]: run[1:] for run in args.run}  # run -> checkpoint paths as given
    runs = {
        run: [_resolve_checkpoint(c, args.ckpt_name) for c in paths] for run, paths in given.items()
    }
    build_model = (lambda: load_model(args.base)) if args.base else None
    trajectories = hidden_state_trajectories(
        runs, build_model, audio_batches(args.audio, args.batch_size), args.layer
    )
    projected = project_2d(trajectories)
    rows = [
        (run, step, ckpt, f"{x:.6f}", f"{y:.6f}")
        for run, xy in projected.items()
        for step, (ckpt, (x, y)) in enumerate(zip(given[run], xy.tolist()))
    ]
    print(f"hidden-state trajectories, layer {args.layer}, joint PCA to 2-D")
    print(f"{'run':<12} {'#':>3} {'pc1':>12} {'pc2':>12}  checkpoint")
    for run, step, ckpt, x, y in rows:
        print(f"{run:<12} {step:>3} {x:>12} {y:>12}  {ckpt}")
    plot_trajectories(projected, args.out)
    if args.csv:
        _write_csv(args.csv, ["run", "index", "checkpoint", "pc1", "pc2"], rows)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `python -m speechbrain_cald.analysis`."""
    parser = argparse.ArgumentParser(
        prog="python -m speechbrain_cald.analysis",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    shift = sub.add_parser("feature-shift", help="per-layer 1 - cos between two models")
    shift.add_argument("--model-a", required=True, help="HF folder, e.g. the pretrained model")
    shift.add_argument("--model-b", required=True, help="HF folder, e.g. a fine-tuned model")
    shift.set_defaults(func=_feature_shift_cli)

    traj = sub.add_parser("trajectories", help="2-D PCA of several runs' checkpoints")
    traj.add_argument(
        "--run",
        nargs="+",
        action="append",
        required=True,
        metavar=("NAME", "CKPT"),
        help="a run name, then its checkpoints in order "
        "(HF folders, state-dict files, or SpeechBrain CKPT folders); repeatable",
    )
    traj.add_argument("--layer", type=int, required=True, help="hidden-state index (0 = embedding)")
    traj.add_argument("--base", help="HF folder of the runs' architecture (for state-dict files)")
    traj.add_argument(
        "--ckpt-name",
        default="student.ckpt",
        help="state-dict file inside a SpeechBrain CKPT folder",
    )
    traj.set_defaults(func=_trajectories_cli)

    for p in (shift, traj):
        p.add_argument("--audio", nargs="+", required=True, help="probe audio files")
        p.add_argument("--out", required=True, help="PNG to write")
        p.add_argument("--csv", help="also write the table as CSV")
        p.add_argument("--batch-size", type=int, default=8)

    args = parser.parse_args(argv)
    if args.command == "trajectories" and any(len(run) < 2 for run in args.run):
        parser.error("each --run needs a name and at least one checkpoint")
    args.func(args)


if __name__ == "__main__":
    main()
