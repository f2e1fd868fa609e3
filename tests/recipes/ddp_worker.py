"""One process of the DDP test (tests/recipes/test_recipe_reliability.py), started by torchrun.

    torchrun --nproc_per_node=2 ddp_worker.py train.py hparams.yaml [--overrides]

runs the recipe's `train.py` unchanged (as `__main__`, from the recipe folder), and
records for the test, in `$CALD_DDP_AUDIT/rank<r>.*`:
- `rank<r>.pt`: this process's student weights after `fit` (and the trajectory
  teacher's, if any);
- `rank<r>.json`: every file or folder this process created, wrote, renamed or
  removed under the run's output root (Python audit hooks: open, os.rename, ...).
"""

import json
import os
import runpy
import sys

import torch

from speechbrain_cald.brain import CALDBrain
from speechbrain_cald.resumable import unwrapped

AUDIT = os.environ["CALD_DDP_AUDIT"]
RANK = int(os.environ["RANK"])
OUTPUT_ROOT = os.path.realpath(sys.argv[sys.argv.index("--output_root") + 1])
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
writes = []


def audit(event, args):
    """Record writes under the output root (opens for writing, renames, removals)."""
    if event == "open":
        path, mode, flags = args
        writing = (mode and any(c in mode for c in "wax+")) or (
            mode is None and isinstance(flags, int) and flags & WRITE_FLAGS
        )
        paths = [path] if writing else []
    elif event in ("os.rename", "os.replace", "os.mkdir", "os.remove", "shutil.rmtree"):
        paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
    else:
        return
    for path in paths:
        if isinstance(path, (str, os.PathLike)):
            real = os.path.realpath(os.fspath(path))
            if real.startswith(OUTPUT_ROOT + os.sep):
                writes.append([event, os.path.relpath(real, OUTPUT_ROOT)])


def fit_and_dump(self, *args, **kwargs):
    """CALDBrain.fit, then this process's weights to `rank<r>.pt`."""
    real_fit(self, *args, **kwargs)
    state = {f"student.{k}": v for k, v in unwrapped(self.modules.student).state_dict().items()}
    teacher = getattr(self.guidance, "wrapped", self.guidance)
    if hasattr(teacher, "model"):  # the trajectory teacher, trained alongside
        state.update({f"teacher.{k}": v for k, v in teacher.model.state_dict().items()})
    torch.save(state, os.path.join(AUDIT, f"rank{RANK}.pt"))


real_fit = CALDBrain.fit
CALDBrain.fit = fit_and_dump
sys.addaudithook(audit)
script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
try:
    runpy.run_path(script, run_name="__main__")
finally:
    with open(os.path.join(AUDIT, f"rank{RANK}.json"), "w", encoding="utf-8") as f:
        json.dump(writes, f)
