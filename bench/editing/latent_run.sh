#!/usr/bin/env bash
# The latent decoder's rows, on this 2-core CPU in two lanes of one thread each (logs in /tmp/bench-logs).
# 1. dev (CounterFact case_id 2000+), N=1000 written, 100 evaluated: context, latent and hybrid over scope
#    thresholds, and the unedited model -> the default decoder and its adapter's scope_threshold (the best PS
#    with NS within 2 points of the unedited model's); results in bench/results/editing-dev/t<T>
#    (never in the reported tables).
# 2. reported set: latent and hybrid, sequential N=10/100/1000 and single N=10/100/1000.
# STAGE=dev or STAGE=report runs one stage alone.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
STAGE=${STAGE:-all}
mkdir -p /tmp/bench-logs
run() { local name=$1; shift; echo "$(date +%T) $name"; $PY -m bench.editing --threads 1 "$@" > "/tmp/bench-logs/$name.log" 2>&1; }
dev() { local sys=$1 t=$2; LARIMAR_SCOPE_THRESHOLD=$t run "dev-$sys-t$t" --system "larimar-$sys" --split dev \
  --protocol sequential --n 1000 --limit 100 --out "bench/results/editing-dev/t$t"; }
if [[ $STAGE == all || $STAGE == dev ]]; then
  ( for t in 0.3 0.4 0.45 0.5; do dev hybrid $t; done ) &
  ( run dev-unedited --system unedited --split dev --protocol sequential --n 1000 --limit 100 \
      --out bench/results/editing-dev; dev latent 0.3; dev latent 0.45; dev context 0.3; dev context 0.45 ) &
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
