#!/usr/bin/env bash
# under-load.sh [-r RUNS] LOOPS CMD...: runs CMD RUNS times (default 1)
# with LOOPS busy loops (`yes > /dev/null`) beside it, as on a busy CI or
# user machine, and reports each run's result and time; fails if any run
# failed. The loops are this script's own and end with it, by PID.
#   make test LOAD=2                                  # the suite under load
#   scripts/under-load.sh -r 10 2 scripts/e2e-cri.sh # hunting a flaky check
set -uo pipefail
runs=1
if [ "${1:-}" = "-r" ]; then runs=$2; shift 2; fi
loops=${1:?usage: under-load.sh [-r RUNS] LOOPS CMD...}
shift
[ $# -gt 0 ] || { echo "usage: under-load.sh [-r RUNS] LOOPS CMD..." >&2; exit 2; }

pids=()
stop_loops() { [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null; wait "${pids[@]}" 2>/dev/null; pids=(); }
trap stop_loops EXIT
trap 'stop_loops; exit 130' INT TERM
for _ in $(seq 1 "$loops"); do
  yes > /dev/null &
  pids+=($!)
done

failed=0
for run in $(seq 1 "$runs"); do
  start=$SECONDS
  if "$@"; then result=passed; else result=FAILED; failed=$((failed + 1)); fi
  [ "$runs" -eq 1 ] && [ "$loops" -eq 0 ] || echo "under-load: run $run/$runs with $loops busy loops: $result in $((SECONDS - start))s" >&2
done
[ "$runs" -eq 1 ] || echo "under-load: $((runs - failed))/$runs runs passed with $loops busy loops" >&2
[ "$failed" -eq 0 ]
