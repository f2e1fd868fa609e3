"""Crash-safe checkpoints: SpeechBrain's Checkpointer with atomic saves, an integrity
record, and recovery that falls back past a damaged checkpoint.

SpeechBrain 1.1's `Checkpointer.save_checkpoint` writes `CKPT.yaml` into the final
`CKPT+<time>` folder *first* and the parameter files after it, so a process killed
while saving leaves a folder that looks complete (it has its meta file) but misses or
truncates files; the next `recover_if_possible` then picks it as the most recent
checkpoint and fails. `AtomicCheckpointer` keeps everything else of SpeechBrain's
class (names, meta, keep-only rules, DDP handling, hooks) and changes three things:

- saving goes into `partial-CKPT+...` (ignored by the Checkpointer, whose folders
  must start with `CKPT`), then the files are fsync'ed, the size and SHA-256 of every
  file are recorded in `integrity.json`, and the folder is renamed in one
  `os.rename`: a checkpoint folder is either complete or absent;
- recovery checks the record of the chosen checkpoint before loading anything and,
  when a file is missing, truncated or altered, or a load hook fails, warns and tries
  the next checkpoint in the same order (most recent first, or best by key);
- deleting a checkpoint renames it to `deleting-CKPT+...` first, so an interrupted
  clean-up never leaves a half-deleted folder under a checkpoint's name;
- leftovers of interrupted saves and deletions (`partial-*`, `deleting-*`, and
  `CKPT+...` folders that lost their `CKPT.yaml`) are removed at recovery time, each
  with a warning.

Loading goes through SpeechBrain's hooks, which read tensors with `torch.load`
(weights-only by default since torch 2.6); the hooks of this package pass
`weights_only=True` explicitly.
"""

import hashlib
import json
import logging
import os
import pathlib
import shutil

from speechbrain.dataio.dataloader import SaveableDataLoader
from speechbrain.utils.checkpoints import Checkpoint, Checkpointer
from speechbrain.utils.distributed import ddp_barrier, if_main_process, main_process_only

logger = logging.getLogger(__name__)
PARTIAL_PREFIX = "partial-"
DELETING_PREFIX = "deleting-"
INTEGRITY_FILE = "integrity.json"


class CheckpointIntegrityError(RuntimeError):
    """A checkpoint folder whose files do not match its integrity record."""


def _digest(path, chunk=1 << 20):
    """SHA-256 (hex) of a file, read in 1 MiB chunks."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            sha.update(block)
    return sha.hexdigest()


def _fsync(path):
    """Flush a file (or a folder entry, on POSIX) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_integrity(folder):
    """fsync every file of `folder` and record its size and SHA-256 in `integrity.json`."""
    folder = pathlib.Path(folder)
    record = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name != INTEGRITY_FILE:
            _fsync(path)
            record[path.name] = {"size": path.stat().st_size, "sha256": _digest(path)}
    with open(folder / INTEGRITY_FILE, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def verify_integrity(folder):
    """Raise `CheckpointIntegrityError` naming the first file that is missing, has
    another size or another SHA-256 than recorded. A folder without a record (saved
    by a plain Checkpointer) passes."""
    folder = pathlib.Path(folder)
    try:
        with open(folder / INTEGRITY_FILE, encoding="utf-8") as f:
            record = json.load(f)
    except FileNotFoundError:
        return
    except ValueError as err:
        raise CheckpointIntegrityError(f"{folder / INTEGRITY_FILE}: unreadable ({err})") from err
    for name, expected in record.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointIntegrityError(f"{path}: missing")
        size = path.stat().st_size
        if size != expected["size"]:
            raise CheckpointIntegrityError(
                f"{path}: {size} bytes, {expected['size']} when saved (truncated?)"
            )
        if _digest(path) != expected["sha256"]:
            raise CheckpointIntegrityError(f"{path}: content differs from when it was saved")


@main_process_only  # as SpeechBrain's: the other processes wait at its barriers
def _delete_atomically(checkpoint, verbosity=logging.INFO):
    """Rename a checkpoint folder out of the checkpoints' namespace (one step), then
    delete it: an interrupted deletion leaves `deleting-CKPT+...`, never a half-deleted
    folder under a checkpoint's name."""
    path = pathlib.Path(checkpoint.path)
    doomed = path.with_name(DELETING_PREFIX + path.name)
    os.rename(path, doomed)
    _fsync(path.parent)
    shutil.rmtree(doomed)
    logger.log(verbosity, "Deleted checkpoint in %s", path)


class AtomicCheckpointer(Checkpointer):
    """`speechbrain.utils.checkpoints.Checkpointer` with atomic saves and recovery
    that falls back to the previous good checkpoint (see the module docstring).
    Same arguments; use it in YAML as the `checkpointer`."""

    def _new_checkpoint_dirpath(self):
        final = super()._new_checkpoint_dirpath()
        return final.with_name(PARTIAL_PREFIX + final.name)

    def _custom_checkpoint_dirpath(self, name):
        final = super()._custom_checkpoint_dirpath(name)
        return final.with_name(PARTIAL_PREFIX + final.name)

    def save_checkpoint(self, meta=None, end_of_epoch=True, name=None, verbosity=logging.INFO):
        """`Checkpointer.save_checkpoint` into a partial folder, then the integrity
        record and one rename to the final `CKPT+...` name (main process)."""
        partial = super().save_checkpoint(meta or {}, end_of_epoch, name, verbosity=logging.DEBUG)
        ddp_barrier()  # savers that run on every process have finished writing
        saved = self._publish(partial, end_of_epoch, verbosity) if if_main_process() else None
        ddp_barrier()  # every process sees the same checkpoints from here on
        return saved

    @staticmethod
    def _publish(partial, end_of_epoch, verbosity):
        """Integrity record, then the atomic rename of a partial checkpoint folder."""
        write_integrity(partial.path)
        final = partial.path.with_name(partial.path.name[len(PARTIAL_PREFIX) :])
        if final.exists():  # a custom name saved again: replace the old folder
            shutil.rmtree(final)
        os.rename(partial.path, final)
        _fsync(final.parent)
        ckpt_type = "end-of-epoch" if end_of_epoch else "intra-epoch"
        logger.log(verbosity, "Saved an %s checkpoint in %s", ckpt_type, final)
        paramfiles = {key: final / path.name for key, path in partial.paramfiles.items()}
        return Checkpoint(final, partial.meta, paramfiles)

    def delete_checkpoints(self, **kwargs):
        """`Checkpointer.delete_checkpoints` (same keep rules) with each deletion atomic
        (`_delete_atomically`). SpeechBrain calls `Checkpointer._delete_checkpoint` by
        its class name, so it is swapped for the duration of the call."""
        stock = Checkpointer._delete_checkpoint
        Checkpointer._delete_checkpoint = staticmethod(_delete_atomically)
        try:
            return super().delete_checkpoints(**kwargs)
        finally:
            Checkpointer._delete_checkpoint = stock

    def recover_if_possible(
        self, importance_key=None, max_key=None, min_key=None, ckpt_predicate=None
    ):
        """Load the first checkpoint, in `find_checkpoint`'s order, that passes its
        integrity check and loads; warn about each one skipped. Returns it, or None
        when there is none; raises when every existing checkpoint is damaged."""
        self._remove_leftovers()
        candidates = self.find_checkpoints(importance_key, max_key, min_key, ckpt_predicate)
        if not candidates:
            logger.info("Would load a checkpoint here, but none found yet.")
            return None
        for index, ckpt in enumerate(candidates):
            try:
                verify_integrity(ckpt.path)
                self.load_checkpoint(ckpt)
            except Exception as err:  # any failed load: try the next one
                nxt = candidates[index + 1].path if index + 1 < len(candidates) else None
                logger.warning(
                    "Checkpoint %s cannot be loaded (%s: %s); falling back to %s",
                    ckpt.path,
                    type(err).__name__,
                    err,
                    nxt or "nothing",
                )
                self._forget_partial_load()
                continue
            if index:
                logger.warning("Recovered from %s after skipping %d damaged", ckpt.path, index)
            return ckpt
        raise CheckpointIntegrityError(
            f"No loadable checkpoint in {self.checkpoints_dir}: all {len(candidates)} are "
            "damaged (see the warnings above); move them away to start afresh"
        )

    def _forget_partial_load(self):
        """Undo the one load-hook side effect the next checkpoint may not overwrite:
        a data loader's resume position (an end-of-epoch checkpoint leaves it as is).
        Every other recoverable is fully reloaded from the next checkpoint."""
        for obj in self.recoverables.values():
            if isinstance(obj, SaveableDataLoader):
                obj._speechbrain_recovery_skip_to = None

    def _remove_leftovers(self):
        """Delete what interrupted saves and deletions left: `partial-CKPT+...` and
        `deleting-CKPT+...` folders, and `CKPT+...` folders without their `CKPT.yaml`."""
        if not if_main_process() or not self.checkpoints_dir.is_dir():
            return
        for path in sorted(self.checkpoints_dir.iterdir()):
            if not path.is_dir():
                continue
            if path.name.startswith((PARTIAL_PREFIX, DELETING_PREFIX)):
                what = "an interrupted checkpoint save or deletion"
            elif path.name.startswith("CKPT") and not (path / "CKPT.yaml").exists():
                what = "a checkpoint folder without its CKPT.yaml (half-deleted)"
            else:
                continue
            logger.warning("Removing %s: %s", what, path)
            shutil.rmtree(path)
