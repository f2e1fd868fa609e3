"""The README's main job: runs the demo recipe on the embedded default corpus.

The demo recipe (recipes/Demo) has not landed yet; until it does this script
says so and exits cleanly, so the README's command stays true.
"""

from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "recipes" / "Demo" / "run_demo.py"

if __name__ == "__main__":
    if not DEMO.exists():
        print("no recipe yet: the demo recipe (recipes/Demo) has not landed; see README.md")
    else:
        import runpy

        runpy.run_path(str(DEMO), run_name="__main__")
