"""Source-model families, one module each; importing this package registers them."""

from speechbrain_cald.conversion.families import (  # noqa: F401
    bert,
    gpt_neox,
    wav2vec2,
    wavlm,
    whisper,
)
