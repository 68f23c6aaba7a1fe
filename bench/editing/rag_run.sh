#!/usr/bin/env bash
# The retrieval baselines (bench.baselines.rag) beside the service's rows, on this 2-core CPU in two lanes of one
# thread each (issue 26): the generation suite (held-out and reworded) in one lane, CounterFact (1,000 edits, 200
# evaluated, then in memories of 10,000 and 100,000 facts) and zsRE (500 edits, 100 evaluated) in the other, the
# same commands and sizes as the service's rows. Logs in /tmp/bench-logs.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
SYSTEMS=${SYSTEMS:-"rag rag-threshold rag-bias rag-threshold-bias"}
SCALED=${SCALED:-"rag-bias rag-threshold-bias"}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
mkdir -p /tmp/bench-logs
run() { local name=$1; shift; echo "$(date +%T) $name"; "$PY" "$@" > "/tmp/bench-logs/$name.log" 2>&1; }
(
  for split in heldout reworded; do
    for s in $SYSTEMS; do run "gen-$split-$s" -m bench.generation --threads 1 --split "$split" --system "$s"; done
  done
) &
(
  for s in $SYSTEMS; do run "cf-$s" -m bench.editing --threads 1 --system "$s" --n 1000 --limit 200; done
  for s in $SYSTEMS; do run "zsre-$s" -m bench.editing --threads 1 --dataset zsre --system "$s" --n 500 --limit 100; done
  for f in 9000 99000; do
    for s in $SCALED; do run "cf-$s-$f" -m bench.editing --threads 1 --system "$s" --n 1000 --limit 200 --filler "$f"; done
  done
) &
wait
