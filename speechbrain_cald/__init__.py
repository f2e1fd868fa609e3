"""speechbrain-cald: Cross-Architecture Layerwise Distillation (CALD) for SpeechBrain."""

import logging

__version__ = "0.1.0"


def _not_applicable(record):
    """SpeechBrain warns at import that torchvision is missing, for an image logger
    this package never uses: a warning that does not apply to any run here."""
    return "torchvision is not available" not in record.getMessage()


logging.getLogger("speechbrain.utils.train_logger").addFilter(_not_applicable)
