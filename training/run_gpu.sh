#!/usr/bin/env bash
# The full-size training runs (issue 12) for a machine with an NVIDIA GPU: the tuned recipe on the
# unchanged d2l network at 224x224 with all 60,000 training images, 15 epochs, test on all 10,000,
# in every backend that sees the GPU; then exercises 2 and 4 (same recipe, same seed) when asked.
#
#   training/run_gpu.sh [OUT_DIR] [BACKENDS...]          default: results/training/gpu torch jax
#   EXERCISES=1 training/run_gpu.sh                      also d2l-single-1x1 and d2l-gradual (torch)
#   SEEDS="0 1 2" training/run_gpu.sh                    more seeds (default 0)
#
# Needs the CUDA builds of the frameworks: docs/gpu.md (make setup GPU=1 on a machine of your own; on
# an offline CUDA machine, `python3 -m harness.wheelhouse install --target DIR` and PYTHONPATH=DIR,
# NIN_DATA_DIR=.whl/fashion-mnist). PyTorch and JAX have CUDA builds there; Keras runs on them as
# keras-torch / keras-jax (name them); keras-tf needs its own environment and MXNet stays on the CPU
# (NIN_PYTHON_<BACKEND> points at another interpreter). Every run checkpoints after
# each epoch: run the script again and it resumes what was interrupted (nin sweep skips finished
# runs). precision "fast" (TF32) is what a GPU user would run; fp32 forces deterministic kernels,
# which some frameworks lack on CUDA for this network's backward pass.
#
# Expected: each backend's final test accuracy >= 90% (the claim of docs/training.md, measured on CPU
# only at 96x96 on a subset). Look at OUT_DIR/d2l/report.md and curves.png; commit OUT_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/training/gpu}
shift || true
BACKENDS=${*:-torch jax}
SEEDS=${SEEDS:-0}
if [ -z "${NIN:-}" ]; then
  if [ -x .venv/bin/python ]; then NIN=".venv/bin/python -m nin.cli"; else NIN="python3 -m nin.cli"; fi
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

# 1. The tuned recipe at full size, every backend that has a GPU build (one process each, resumable).
for b in $BACKENDS; do
  $NIN sweep --backend "$b" --variant d2l --recipe tuned --device gpu --precision fast \
    --seed-list $SEEDS --out "$OUT/d2l" --title "d2l, tuned recipe, 224x224, all data, GPU" \
    || echo "run_gpu.sh: $b failed or diverged; see $OUT/d2l/d2l/$b"
done
$NIN report "$OUT/d2l" --out "$OUT/d2l" --title "d2l, tuned recipe, 224x224, all data, GPU"

# 2. Exercises 2 and 4 beside it: the same recipe and seeds, one backend (torch), when asked.
if [ "${EXERCISES:-0}" = 1 ]; then
  $NIN sweep --backend torch --variant-list d2l d2l-single-1x1 d2l-gradual --recipe tuned --device gpu \
    --precision fast --seed-list $SEEDS --out "$OUT/exercises" --title "Exercises 2 and 4 at 224x224, GPU"
fi

# 3. The chapter's own recipe beside it (SGD lr 0.1, 5 epochs), and its control without the final ReLU.
if [ "${CHAPTER:-0}" = 1 ]; then
  $NIN sweep --backend torch --variant-list d2l d2l-linear-head --recipe chapter --device gpu \
    --precision fast --seed-list $SEEDS --out "$OUT/chapter" --title "The chapter's recipe at 224x224, GPU"
fi
