#!/usr/bin/env bash
# Fill .gpu_carry/ (git-ignored) with what tools/gpu_check.py needs on the device
# machine, which has torch, triton, transformers and einops but no package registry:
#   .gpu_carry/wheels/     SpeechBrain and the packages it needs that the device image
#                          lacks (Python 3.12, manylinux x86-64 wheels)
#   .gpu_carry/mamba_src/  mamba-ssm's Python sources (its Triton kernels; the compiled
#                          CUDA extensions are neither built nor needed)
# Run it once from the repository root on a machine that reaches PyPI (about 30 s,
# about 12 MB), then carry .gpu_carry (docs/ENVIRONMENT.md, "The GPU check").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=.gpu_carry
MAMBA=mamba-ssm==2.3.2.post1
rm -rf "$OUT" && mkdir -p "$OUT/wheels" "$OUT/mamba_src"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${platforms[@]}" -d "$OUT/wheels" \
  "speechbrain==$("$PY" -c 'import speechbrain; print(speechbrain.__version__)')" \
  hyperpyyaml ruamel.yaml ruamel.yaml.clib soundfile cffi pycparser
tmp=$(mktemp -d)
MAMBA_SKIP_CUDA_BUILD=TRUE "$PY" -m pip download -q --no-deps --no-build-isolation \
  --no-binary :all: -d "$tmp" "$MAMBA"
tar xzf "$tmp"/mamba_ssm-*.tar.gz -C "$tmp"
cp -r "$tmp"/mamba_ssm-*/mamba_ssm "$OUT/mamba_src/"
rm -rf "$tmp"
du -sh "$OUT"
