"""One run per output folder: `output_folder_lock` holds `run.lock` for the whole run; a
second process gets `RunLockedError` naming the holder before it writes anything."""

import contextlib
import fcntl
import os
import socket
import time

import speechbrain as sb


class RunLockedError(RuntimeError):
    """Another process is running in the same output folder."""


LOCK_FILE = "run.lock"


@contextlib.contextmanager
def output_folder_lock(folder):
    """Hold an exclusive lock on `<folder>/run.lock` (fcntl.flock: released when the
    block or the process ends, a crash included). A second run in the same folder
    gets `RunLockedError` naming the process that holds it; two runs writing the same
    checkpoints would break each other's. Main process only under DDP."""
    if not sb.utils.distributed.if_main_process():
        yield
        return
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_FILE)
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunLockedError(
                f"{folder} is in use by {holder}: wait for that run to end, or give this "
                "one another --output_folder (or --seed / --run_name)"
            ) from None
        handle.seek(0)
        handle.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {started}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
