"""speechbrain-cald: Cross-Architecture Layerwise Distillation (CALD) for SpeechBrain."""

__version__ = "0.1.0"
