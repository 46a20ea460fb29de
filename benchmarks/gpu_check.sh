#!/usr/bin/env bash
# The prepared GPU check (issue 19): golden-file parity, device parity and throughput of every task, in torch on the
# GPU, against golden files recorded on CPU by both backends; one JSON + Markdown report (gpu-check.json/.md).
#
#   bash benchmarks/gpu_check.sh [GOLDEN_DIR] [OUT_DIR] [extra options of dualkit.benchmarks.gpu_check]
#
# GOLDEN_DIR: default bench-results/golden, recorded beforehand where TensorFlow is installed:
#   python -m dualkit.benchmarks.gpu_check --record --golden bench-results/golden
# OUT_DIR: default $OUT, else bench-results/gpu-check-<time>. Needs python3 with torch (>= 2.2), numpy, safetensors
# and tqdm; runs from the repository without installing dualkit. Pure-Python packages carried in
# ${DUALKIT_GPU_SITE:-bench-results/gpu-site} (e.g. a copy of gymnasium and farama_notifications, for DQN's end-to-end
# env steps/s; the golden files need no Gymnasium) are put on the path.
set -euo pipefail
cd "$(dirname "$0")/.."
GOLDEN=${1:-bench-results/golden}
OUTDIR=${2:-${OUT:-bench-results/gpu-check-$(date +%Y%m%d-%H%M%S)}}
shift $(( $# < 2 ? $# : 2 ))
SITE=${DUALKIT_GPU_SITE:-bench-results/gpu-site}
if [ -d "$SITE" ]; then
  export PYTHONPATH="$(cd "$SITE" && pwd)${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" -m dualkit.benchmarks.gpu_check --golden "$GOLDEN" --out "$OUTDIR" "$@"
