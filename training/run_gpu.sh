#!/usr/bin/env bash
# Training toward 90 % on a machine with an NVIDIA GPU (docs/gpu.md, section 5): the tuned recipe of
# training/recipe.py (SGD with momentum 0.9, lr 0.02 after one epoch of warm-up, cosine to 0, weight
# decay 5e-4, batch 64, 20 epochs) on the unchanged d2l network at 224x224, all 60,000 training images,
# tested on all 10,000 after every epoch; one backend after another; exercises 2 and 4 when asked.
#
#   training/run_gpu.sh [OUT_DIR] [BACKENDS...]     default: results/training/gpu torch jax
#   EXERCISES=1 training/run_gpu.sh                 also d2l-single-1x1 and d2l-gradual (torch)
#   CHAPTER=1 training/run_gpu.sh                   also the chapter's recipe and its control (torch)
#   SEEDS="0 1 2" training/run_gpu.sh               more seeds (default 0)
#
# These are the GPU session's runs (python3 -m gpu, gpu/plan.py): the same settings and the same folders,
# OUT_DIR/d2l/<backend>/seed<k>. Each run checkpoints after every epoch, and a run found there is
# resumed, whichever of the two started it (`python -m gpu collect` puts a session's runs there).
# PyTorch runs eager and Flax under jax.jit: each framework's fast path for a short run.
# Offline: with .whl/ here (make gpu-bundle), what the interpreter lacks is installed into
# /tmp/nin-site and Fashion-MNIST is read from .whl/fashion-mnist; nothing needs setting by hand.
# Whether each backend reaches 90 % is what this measures: docs/gpu.md gives only an estimate.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/training/gpu}
shift || true
BACKENDS=${*:-torch jax}
SEEDS=${SEEDS:-0}
PY=${PYTHON:-python3}
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m gpu.bundle install --dest .whl --target /tmp/nin-site >/dev/null
  export PYTHONPATH=/tmp/nin-site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -d .whl/fashion-mnist ]; then export NIN_DATA_DIR=${NIN_DATA_DIR:-$PWD/.whl/fashion-mnist}; fi
NIN="$PY -m nin.cli"
compile_for() { if [ "$1" = torch ]; then echo eager; else echo compiled; fi; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

# 1. The tuned recipe at full size, each backend (one process each, resumable).
for b in $BACKENDS; do
  $NIN sweep --backend "$b" --variant d2l --recipe tuned --device gpu --precision fast --compile "$(compile_for "$b")" \
    --seed-list $SEEDS --out "$OUT" --title "d2l, tuned recipe, 224x224, all data, GPU" \
    || echo "run_gpu.sh: $b failed or diverged; see $OUT/d2l/$b"
done
$NIN report "$OUT/d2l" --out "$OUT" --title "d2l, tuned recipe, 224x224, all data, GPU"

# 2. Exercises 2 and 4 beside it: the same recipe and seeds, one backend (torch), when asked.
if [ "${EXERCISES:-0}" = 1 ]; then
  $NIN sweep --backend torch --variant-list d2l d2l-single-1x1 d2l-gradual --recipe tuned --device gpu \
    --precision fast --compile eager --seed-list $SEEDS --out "$OUT/exercises" \
    --title "Exercises 2 and 4 at 224x224, GPU"
fi

# 3. The chapter's own recipe beside it (SGD lr 0.1, 5 epochs), and its control without the final ReLU.
if [ "${CHAPTER:-0}" = 1 ]; then
  $NIN sweep --backend torch --variant-list d2l d2l-linear-head --recipe chapter --device gpu \
    --precision fast --compile eager --seed-list $SEEDS --out "$OUT/chapter" --title "The chapter's recipe at 224x224, GPU"
fi
