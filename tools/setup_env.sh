#!/usr/bin/env bash
# Create or refresh the project's virtualenv (.venv by default), idempotently.
#
#   bash tools/setup_env.sh            # CPU machine: torch pinned to the CPU build
#   CALD_GPU=1 bash tools/setup_env.sh # GPU machine: keep/choose your own torch,
#                                      # install the `cuda` extra (mamba-ssm)
#
# Environment: CALD_VENV (venv path), CALD_EXTRAS (default "dev"), PYTHON.
# A second run with unchanged requirements does nothing but check and print.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${CALD_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}
EXTRAS=${CALD_EXTRAS:-dev}
GPU=${CALD_GPU:-0}
say() { echo "[setup] $*"; }

if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtualenv $VENV"
    "$PYTHON" -m venv "$VENV"
else
    say "virtualenv $VENV exists"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check)
# Machines with an offline file:// extra index make pip warn once per package; hide that noise.
pip_install() { "${PIP[@]}" "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

# The stamp records what was installed; unchanged inputs mean nothing to do.
STAMP="$VENV/.cald-setup-stamp"
want=$(cat setup.py tools/constraints-cpu.txt tools/setup_env.sh | sha256sum | cut -d' ' -f1)-$GPU-$EXTRAS
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$PY" -c "import speechbrain_cald" 2>/dev/null; then
    say "requirements unchanged since last set-up: nothing to install"
else
    if [ "$GPU" = "1" ]; then
        say "GPU mode: torch is not pinned; installing extras [$EXTRAS,cuda]"
        pip_install -e ".[$EXTRAS,cuda]"
    else
        say "installing torch==2.13.0 (CPU build, about 190 MB when downloaded; pip shows progress)"
        pip_install --progress-bar on -c tools/constraints-cpu.txt "torch==2.13.0"
        # No CPU torchaudio exists for torch 2.13: the 2.11 wheel installs without
        # deps, and its CUDA-linked libraries are removed below.
        say "installing torchaudio==2.11.0 without dependencies"
        pip_install -q --no-deps "torchaudio==2.11.0"
        say "installing speechbrain-cald (editable) with extras [$EXTRAS]: speechbrain, transformers, ..."
        say "(about 300 MB of packages on a fresh machine, 1-2 minutes; pip lists each one)"
        pip_install --progress-bar on -c tools/constraints-cpu.txt -e ".[$EXTRAS]"
    fi
    echo "$want" > "$STAMP"
fi

# torchaudio's compiled libraries need CUDA's libc10_cuda on a CPU-only torch;
# without them it imports in pure-Python mode (resample, fbank work). All audio
# I/O in this project goes through soundfile, so nothing needs those libraries.
if ! "$PY" -c "import torchaudio" 2>/dev/null; then
    lib=$("$PY" -c "import importlib.util, os; s = importlib.util.find_spec('torchaudio'); print(os.path.join(os.path.dirname(s.origin), 'lib'))")
    say "torchaudio does not import on this torch: removing its compiled libraries in $lib"
    rm -f "$lib"/*.so
    "$PY" -c "import torchaudio" && say "torchaudio imports in pure-Python mode"
fi
"$PY" -c "import torch, torchaudio, speechbrain, transformers, speechbrain_cald; print('[setup] ready: torch', torch.__version__, '| torchaudio', torchaudio.__version__, '| speechbrain', speechbrain.__version__, '| transformers', transformers.__version__)"
