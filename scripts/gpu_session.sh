#!/usr/bin/env bash
# The GPU session in one command (docs/gpu.md, section 4), for a CUDA machine whose python3 has
# PyTorch and JAX, with the checkout and .whl/ (`make gpu-bundle`) copied there; no network, no .venv.
#
#   bash scripts/gpu_session.sh OUT [BUDGET_SECONDS [more options of `python3 -m gpu run`]]
#
# With the device tool: run(command='bash scripts/gpu_session.sh "$OUT" 520', carry=['.whl'], timeout_s=600).
# Here, on the CPU, the same order with a tiny network: bash scripts/gpu_session.sh runs/gpu-dry-run 900 --dry-run
# `timeout` sends SIGTERM 45 s after the budget, should the driver overrun it: the driver then stops its
# steps and writes its report; SIGKILL follows 10 s later.
set -u
cd "$(dirname "$0")/.." || exit 2
out=${1:-runs/gpu-session}
budget=${2:-520}
shift $(( $# < 2 ? $# : 2 ))
export PYTHONUNBUFFERED=1
exec timeout -s TERM -k 10 $(( ${budget%.*} + 45 )) "${PYTHON:-python3}" -m gpu run \
    --out "$out" --budget "$budget" --wheelhouse "${WHEELHOUSE:-.whl}" "$@"
