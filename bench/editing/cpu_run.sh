#!/usr/bin/env bash
# The rows measured on this CPU: the service (context decoding) in every protocol, and the peers at N=10
# so that every system's time per edit is also measured on one machine. Two runs at a time, one thread each
# (on 2 cores that beats one run with two threads for a 135M model). Logs in /tmp/bench-logs.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
mkdir -p /tmp/bench-logs
run() { local name=$1; shift; $PY -m bench.editing --threads 1 "$@" > "/tmp/bench-logs/$name.log" 2>&1; }
(
  run cf-ctx-seq --system larimar-context --protocol sequential --n 10 100 1000
  run cf-ctx-10k --system larimar-context --protocol sequential --n 10000 --limit 500
  run zsre-ctx-seq --dataset zsre --system larimar-context --protocol sequential --n 10 100 500
  run cf-forget --system larimar-context --protocol forgetting --n 512 1024
  run cf-rome-schema --schema rome --system larimar-context --protocol sequential --n 202
) &
(
  run cf-ctx-single --system larimar-context --protocol single --n 10 100 1000
  run zsre-ctx-single --dataset zsre --system larimar-context --protocol single --n 10 100 500
  for sys in ft-l rome grace; do run "cf-$sys-cpu" --system "$sys" --protocol single --n 10 --out bench/results/editing/cpu; done
) &
wait
