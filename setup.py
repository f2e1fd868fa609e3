"""speechbrain-cald: Cross-Architecture Layerwise Distillation as SpeechBrain recipes.

`lobes/` (the student building blocks) is installed as `speechbrain_cald.lobes`
through `package_dir`: the lobes stay a top-level folder of the repository, as
the project layout asks, yet import under the package's own namespace, so a
generic name such as `lobes` never collides with another installed package.
"""

from setuptools import setup

setup(
    name="speechbrain-cald",
    version="0.1.0",
    description=(
        "Convert pretrained transformers into linear-complexity models "
        "(bidirectional Mamba2, Linformer, Mamba) with layerwise distillation"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=[
        "speechbrain_cald",
        "speechbrain_cald.conversion",
        "speechbrain_cald.conversion.families",
        "speechbrain_cald.guidance",
        "speechbrain_cald.lobes",
        "speechbrain_cald.models",
    ],
    package_dir={"speechbrain_cald": "speechbrain_cald", "speechbrain_cald.lobes": "lobes"},
    install_requires=[
        "torch>=2.4",
        "torchaudio",
        "speechbrain>=1.1",
        "transformers>=4.46",
        "hyperpyyaml",
        "sentencepiece",
        "soundfile",
        "scipy",  # the one resampler (speechbrain_cald.audio)
        "numpy",
        "safetensors",
        "matplotlib",
    ],
    extras_require={
        "cuda": ["mamba-ssm", "causal-conv1d"],
        "dev": ["pytest", "pytest-xdist", "ruff"],
        "lm": ["lm-eval[hf]>=0.4.2"],  # [hf]: accelerate, needed by its HFLM wrapper
    },
)
