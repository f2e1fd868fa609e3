"""speechbrain-cald: Cross-Architecture Layerwise Distillation (CALD) for SpeechBrain."""

import logging

__version__ = "0.1.0"


def _not_applicable(record):
    """SpeechBrain warns at import that torchvision is missing, for an image logger
    this package never uses: a warning that does not apply to any run here."""
    return "torchvision is not available" not in record.getMessage()


logging.getLogger("speechbrain.utils.train_logger").addFilter(_not_applicable)


def _check_one_tree():
    """Warn when the package and its lobes come from different trees: with two
    checkouts and one editable install, `speechbrain_cald` can import from the
    checkout on `sys.path` and `speechbrain_cald.lobes` from the installed one (its
    `package_dir` mapping), so edits to one tree's lobes would silently not run."""
    import importlib.util
    import os
    import warnings

    spec = importlib.util.find_spec("speechbrain_cald.lobes")
    if spec is None or spec.origin is None:
        return
    package = os.path.dirname(os.path.abspath(__file__))
    lobes = os.path.dirname(os.path.abspath(spec.origin))
    expected = (os.path.join(package, "lobes"), os.path.join(os.path.dirname(package), "lobes"))
    if lobes not in expected:
        warnings.warn(
            f"speechbrain_cald is imported from {package} but speechbrain_cald.lobes from "
            f"{lobes} (two checkouts with one editable install?): reinstall with `pip install "
            f"-e` in the checkout you run, or put both on the same tree",
            RuntimeWarning,
            stacklevel=2,
        )


_check_one_tree()
