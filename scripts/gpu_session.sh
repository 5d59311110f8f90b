#!/usr/bin/env bash
# The one command for an offline CUDA machine whose python3 has PyTorch and JAX (docs/gpu.md, section 4):
# the checkout and .whl/ (`make wheelhouse`) copied there, no network, no .venv.
#
#   bash scripts/gpu_session.sh OUT [BUDGET_SECONDS [more options of `python -m benchmarks.gpu_session run`]]
#
# `timeout` sends SIGTERM a minute after the budget, should the driver overrun it: the driver then
# stops its steps and writes its report; SIGKILL follows 20 s later.
set -u
cd "$(dirname "$0")/.." || exit 2
out=${1:-runs/gpu-session}
budget=${2:-480}
shift $(( $# < 2 ? $# : 2 ))
export PYTHONUNBUFFERED=1
exec timeout -s TERM -k 20 $(( ${budget%.*} + 60 )) "${PYTHON:-python3}" -m benchmarks.gpu_session run \
    --out "$out" --budget "$budget" --wheelhouse "${WHEELHOUSE:-.whl}" "$@"
