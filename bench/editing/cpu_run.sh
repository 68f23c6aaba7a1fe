#!/usr/bin/env bash
# The rows measured on this 2-core CPU, in two lanes of one thread each (for a 135M model on 2 cores that beats
# one run with two threads). The peers' N=100 runs get a time budget (23 min): the summaries then give the largest
# N reached and the measured time per edit. The committed N=1000 rows for unedited, oracle and 928 of the
# service's cases came from the H200 (gpu_run.sh); rerun here they take about an hour each. Logs in /tmp/bench-logs.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
PEER_BUDGET_S=${PEER_BUDGET_S:-1380}
mkdir -p /tmp/bench-logs
run() { local name=$1; shift; echo "$(date +%T) $name"; $PY -m bench.editing --threads 1 "$@" > "/tmp/bench-logs/$name.log" 2>&1; }
S=larimar-context
(
  run cf-ctx-seq --system $S --protocol sequential --n 1000 10 100
  run cf-ctx-single --system $S --protocol single --n 10 100
  run zsre-ctx-seq --dataset zsre --system $S --protocol sequential --n 10 100 500 --limit 100
  run cf-forget --system $S --protocol forgetting --n 512 1024 --forget-sample 100
  run cf-ctx-10k --system $S --protocol sequential --n 10000 --limit 100
) &
(
  run cf-stateless --system unedited --protocol sequential --n 10 100
  run cf-oracle --system oracle --protocol sequential --n 10 100
  run zsre-unedited --dataset zsre --system unedited --protocol sequential --n 10 100 500 --limit 100
  for sys in rome ft-l grace; do
    run "cf-$sys-single" --system "$sys" --protocol single --n 10
    run "cf-$sys-seq10" --system "$sys" --protocol sequential --n 10
    run "cf-$sys-seq100" --system "$sys" --protocol sequential --n 100 --budget-s "$PEER_BUDGET_S"
    run "zsre-$sys-seq" --dataset zsre --system "$sys" --protocol sequential --n 10
  done
) &
wait
