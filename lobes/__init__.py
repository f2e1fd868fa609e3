"""Student building blocks (imported as `speechbrain_cald.lobes`); no training logic."""
