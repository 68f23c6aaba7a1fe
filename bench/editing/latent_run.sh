#!/usr/bin/env bash
# The latent decoder's rows, on this 2-core CPU in two lanes of one thread each (logs in /tmp/bench-logs).
# 1. dev (CounterFact case_id 2000+): context, latent and hybrid at N=100 and 1000 (100 cases evaluated) -> the
#    adapter's preferred_decoder; results in bench/results/editing-dev (never in the reported tables).
# 2. reported set: latent and hybrid, sequential N=10/100/1000 and single N=10/100/1000.
# STAGE=dev or STAGE=report runs one stage alone.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
STAGE=${STAGE:-all}
mkdir -p /tmp/bench-logs
run() { local name=$1; shift; echo "$(date +%T) $name"; $PY -m bench.editing --threads 1 "$@" > "/tmp/bench-logs/$name.log" 2>&1; }
DEV="--split dev --out bench/results/editing-dev"
if [[ $STAGE == all || $STAGE == dev ]]; then
  (
    run dev-latent --system larimar-latent --protocol sequential --n 100 1000 --limit 100 $DEV
    run dev-context --system larimar-context --protocol sequential --n 100 1000 --limit 100 $DEV
  ) &
  (
    run dev-hybrid --system larimar-hybrid --protocol sequential --n 100 1000 --limit 100 $DEV
  ) &
  wait
fi
if [[ $STAGE == all || $STAGE == report ]]; then
  for S in larimar-latent larimar-hybrid; do
    (
      run "cf-${S#larimar-}-seq" --system $S --protocol sequential --n 1000 10 100
      run "cf-${S#larimar-}-single" --system $S --protocol single --n 10 100 1000
    ) &
  done
  wait
fi
