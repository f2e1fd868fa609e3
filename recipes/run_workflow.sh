#!/usr/bin/env bash
# The whole CALD workflow of one recipe, in order, from the recipe's folder:
#   1. std: fine-tune the transformer (the target / src_init teacher and the waypoints);
#   2. every CALD mode (speechbrain_cald.guidance.MODES after std), then hybrid;
# each run tests its best dev checkpoint (test_metrics.json) and exports
# <output_root>/<run>/<seed>/inference. A finished run is skipped on a rerun
# (SpeechBrain resumes it from its last checkpoint and ends at once).
#
#   cd recipes/TEDLIUM/ASR
#   ../../run_workflow.sh 40000 --data_folder /data/TEDLIUM_release-3 [train.py overrides]
#
# First argument: the hybrid switch step (0: no hybrid run). Environment:
# CALD_HPARAMS (default hparams/wav2vec2_cald.yaml, else the only YAML in hparams/),
# CALD_LAUNCHER (default "python"; e.g. "torchrun --nproc_per_node=8").
set -euo pipefail
switch=${1:?usage: run_workflow.sh HYBRID_SWITCH_STEP [train.py overrides...]}
shift
yaml=${CALD_HPARAMS:-hparams/wav2vec2_cald.yaml}
[ -f "$yaml" ] || yaml=$(ls hparams/*.yaml)
read -r -a launcher <<< "${CALD_LAUNCHER:-python}"
modes=$(python -c "from speechbrain_cald.guidance import MODES; print(*MODES)")
for mode in $modes; do
    echo "[workflow] $(date +%T) mode $mode"
    "${launcher[@]}" train.py "$yaml" --mode "$mode" "$@"
done
if [ "$switch" != 0 ]; then
    echo "[workflow] $(date +%T) mode hybrid (target, L_LD off from step $switch)"
    "${launcher[@]}" train.py "$yaml" --mode target --hybrid_switch_step "$switch" \
        --run_name hybrid "$@"
fi
echo "[workflow] $(date +%T) done: test_metrics.json of every run under the YAML's output_root"
