"""Saving and loading students: `student.save_pretrained(folder)` writes them (the
config's `cald_student` entry says how to rebuild); `from_pretrained` rebuilds the
architecture and loads the weights strictly, on transformers' own key renamings."""

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel
from transformers.conversion_mapping import get_model_conversion_mapping
from transformers.core_model_loading import PrefixChange, WeightRenaming, apply_renamings

from speechbrain_cald.conversion.convert import build_student_from_config


def _read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    """Weights written by `save_pretrained`, single file or sharded."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"no model.safetensors(.index.json) in {folder}")
    state = {}
    for name in files:
        state.update(load_file(folder / name))
    return state


def _hf_key_renamings(model: PreTrainedModel) -> list[WeightRenaming]:
    """The key renamings `save_pretrained` reverts (e.g. GPT-NeoX lm_head -> embed_out).

    The same list HF's own loader applies; weight *converters* (tensor merges) do not
    occur in the supported families.
    """
    transforms = get_model_conversion_mapping(model, add_legacy=False)
    return [
        t for t in transforms if isinstance(t, WeightRenaming) and not isinstance(t, PrefixChange)
    ]


def _load_strict(model: PreTrainedModel, state: Mapping[str, torch.Tensor]) -> None:
    """Load `state` into `model`; every tensor must be covered by a key or a tied alias."""
    renamings = _hf_key_renamings(model)
    state = {apply_renamings(key, renamings): tensor for key, tensor in state.items()}
    expected = model.state_dict()
    groups: dict[int, list[str]] = {}
    for name, tensor in [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]:
        groups.setdefault(id(tensor), []).append(name)
    aliases = {name: names for names in groups.values() for name in names}
    unexpected = sorted(set(state) - set(expected))
    missing = sorted(
        name
        for name in expected
        if name not in state and not any(alias in state for alias in aliases.get(name, ()))
    )
    if missing or unexpected:
        raise RuntimeError(
            f"student weights do not match the rebuilt student: missing keys {missing}, "
            f"unexpected keys {unexpected}"
        )
    for names in groups.values():
        stored = [state[name] for name in names if name in state]
        if any(not torch.equal(stored[0], tensor) for tensor in stored[1:]):
            raise RuntimeError(
                f"tied student keys {names} hold different tensors in the checkpoint "
                "(saved with another parameter sharing?)"
            )
    model.load_state_dict(state, strict=False)


def from_pretrained(folder: str | Path) -> PreTrainedModel:
    """Load a student saved with `student.save_pretrained(folder)` (no teacher needed)."""
    folder = Path(folder)
    model = build_student_from_config(AutoConfig.from_pretrained(folder))
    _load_strict(model, _read_safetensors(folder))
    return model


def load_student(folder_or_config: str | Path | PretrainedConfig) -> PreTrainedModel:
    """A saved student (folder) or a random-weight one (config), e.g. before loading a
    SpeechBrain checkpoint, which holds the plain `state_dict`."""
    if isinstance(folder_or_config, PretrainedConfig):
        return build_student_from_config(folder_or_config)
    return from_pretrained(folder_or_config)
