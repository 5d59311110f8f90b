#!/usr/bin/env bash
# The data-parallel case of every backend on simulated CPU devices, and its matrix (docs/distributed.md):
# paper (no batch norm) and d2l-bn under each engine's default batch norm, then d2l-bn synchronised
# where the framework has a synchronised form on this device, on 2 and 4 replicas, fp64.
#
#   scripts/data_parallel.sh [BACKEND...]     default: every registered backend
#
# Records go to records/data-parallel/ (not committed: ~15 MB each), the matrix to
# results/distributed/matrix.{md,json,png,html}. A backend that cannot (not installed, or no
# synchronised batch norm here) is skipped with its reason.
set -u
cd "$(dirname "$0")/.."
NIN=${NIN:-.venv/bin/nin}
if [ $# -eq 0 ]; then
  read -r -a BACKENDS <<< "$("${NIN%/nin}/python" -c 'from common import backends; print(*backends.BACKENDS)')"
else
  BACKENDS=("$@")
fi
out=records/data-parallel
mkdir -p "$out" results/distributed
for b in "${BACKENDS[@]}"; do
  for n in 2 4; do
    "$NIN" record --backend "$b" --variant paper d2l-bn --precision fp64 --devices "$n" --overwrite \
      --out "$out/$b-cpu-fp64-dp$n.safetensors" || echo "skipped $b on $n replicas" >&2
    "$NIN" record --backend "$b" --variant d2l-bn --precision fp64 --devices "$n" --sync-batch-norm --overwrite \
      --out "$out/$b-cpu-fp64-dp$n-syncbn.safetensors" || echo "skipped $b synchronised on $n replicas" >&2
  done
done
"$NIN" compare "$out"/*.safetensors --report results/distributed/matrix.md --json-out results/distributed/matrix.json
