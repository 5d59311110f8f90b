#!/usr/bin/env bash
# `make test`: ruff, then the test suite in each interpreter (each Keras backend is a process of its
# own: KERAS_BACKEND is read once, when Keras starts; MXNet has its own environment, numpy 1.23).
# Every step runs even when an earlier one failed; then one summary line per step, and the exit
# status is 1 if any step failed. NIN_REQUIRE turns a missing framework, or missing Fashion-MNIST
# (`data`), into a failure, never a skip.
#
#   scripts/test-all.sh                      what `make test` runs (PYTEST_ARGS passes flags to pytest)
#   TEST_REPORT=results/test-suite/x.md scripts/test-all.sh
#                                            also write the summary, machine, versions, command and date
set -u
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
MXVENV=${MXVENV:-.venv-mxnet}
read -r -a EXTRA <<< "${PYTEST_ARGS:-}"

names=() statuses=() lines=() seconds=()
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
step() {  # step NAME COMMAND...: run it, keep its status, its last pytest/ruff line and its time
  local name=$1; shift
  local log start rc
  log=$(mktemp)
  start=$(date +%s)
  printf '\n=== %s: %s\n' "$name" "$*"
  "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  names+=("$name")
  statuses+=("$rc")
  seconds+=("$(( $(date +%s) - start ))")
  lines+=("$(grep -E '(passed|failed|error|skipped|no tests ran| in [0-9.]+s)|All checks passed|Found [0-9]+ error' "$log" \
            | tail -n 1 | sed -E 's/^=+ //; s/ =+$//')")
  rm -f "$log"
}

step ruff "$VENV/bin/ruff" check .
step main env NIN_REQUIRE=torch,keras-tf,jax,data "$VENV/bin/python" -m pytest "${EXTRA[@]}" \
  --backends torch,keras-tf,jax
step keras-jax env KERAS_BACKEND=jax NIN_REQUIRE=keras-jax,data "$VENV/bin/python" -m pytest "${EXTRA[@]}" \
  --backends keras-jax -m "not main_env" tests/test_backends.py
step keras-torch env KERAS_BACKEND=torch NIN_REQUIRE=keras-torch,data "$VENV/bin/python" -m pytest "${EXTRA[@]}" \
  --backends keras-torch -m "not main_env" tests/test_backends.py tests/test_mutations.py
step mxnet env NIN_REQUIRE=mxnet,data "$MXVENV/bin/python" -m pytest "${EXTRA[@]}" --backends mxnet -m "not main_env"

failed=0 total=0
summary=$(
  printf '%-12s %-10s %8s  %s\n' step status seconds "last line"
  for i in "${!names[@]}"; do
    status=ok
    if [ "${statuses[$i]}" != 0 ]; then status="FAILED(${statuses[$i]})"; fi
    printf '%-12s %-10s %8s  %s\n' "${names[$i]}" "$status" "${seconds[$i]}" "${lines[$i]}"
  done
)
for i in "${!names[@]}"; do
  total=$(( total + seconds[i] ))
  [ "${statuses[$i]}" != 0 ] && failed=$(( failed + 1 ))
done
printf '\n=== make test: %d of %d steps failed, %d s in all\n%s\n' "$failed" "${#names[@]}" "$total" "$summary"

if [ -n "${TEST_REPORT:-}" ]; then
  mkdir -p "$(dirname "$TEST_REPORT")"
  {
    echo "# make test, measured"
    echo
    "$VENV/bin/python" -c 'import sys
from common import provenance as p
for line in p.lines(p.collect(argv=sys.argv[1:]))[:-1]:
    print("- " + line)' make test "${PYTEST_ARGS:+PYTEST_ARGS=$PYTEST_ARGS}"
    echo "- Memory: $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo);" \
         "load average when it started: $load_before; when it ended: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- Data: $("$VENV/bin/nin" data --no-download 2>&1 | tail -n 1)"
    echo
    echo '```'
    echo "$summary"
    echo '```'
    echo
    echo "Wall time of the steps, $total s in all; one run, not a median: the caches it fills change the next."
  } > "$TEST_REPORT.tmp" && mv "$TEST_REPORT.tmp" "$TEST_REPORT"
  echo "wrote $TEST_REPORT"
fi
[ "$failed" = 0 ]
