"""Scan backend selection: pure PyTorch ("torch") or the mamba-ssm CUDA kernels.

The CPU path never needs mamba-ssm: it is imported lazily and only on CUDA.
"""

import functools
import logging

import torch

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "mamba_ssm")
_logged: set[tuple[str, str]] = set()


@functools.cache
def mamba_ssm_available() -> bool:
    """True when `mamba_ssm` (and its compiled CUDA extensions) import."""
    try:
        import mamba_ssm  # noqa: F401
    except Exception:  # ImportError, or a missing compiled extension raised as OSError
        return False
    return True


def resolve_backend(requested: str, device, kind: str = "mixer") -> str:
    """Concrete backend ("torch" or "mamba_ssm") for a module on `device`.

    Args:
        requested: "auto", "torch" or "mamba_ssm". "auto" picks mamba_ssm only on
            CUDA when it imports; an explicit "mamba_ssm" that cannot run raises.
        device: torch.device (or string) the module's tensors live on.
        kind: module kind used in the log line (e.g. "mamba", "mamba2"); the choice is
            logged once per (kind, backend).
    """
    if requested not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {requested!r}")
    on_cuda = torch.device(device).type == "cuda"
    if requested == "mamba_ssm":
        if not on_cuda:
            raise RuntimeError("backend 'mamba_ssm' needs CUDA tensors; use 'torch' or 'auto'")
        if not mamba_ssm_available():
            raise RuntimeError("backend 'mamba_ssm' requested but mamba_ssm does not import")
        backend = "mamba_ssm"
    elif requested == "auto" and on_cuda and mamba_ssm_available():
        backend = "mamba_ssm"
    else:
        backend = "torch"
    if (kind, backend) not in _logged:
        _logged.add((kind, backend))
        logger.info(
            "%s scan backend: %s (requested %r, device %s)", kind, backend, requested, device
        )
    return backend
