#!/usr/bin/env bash
# The latent decoder's rows, on this 2-core CPU in two lanes of one thread each (logs in /tmp/bench-logs).
# 1. dev (CounterFact case_id 2000+), N=1000 written, 100 evaluated: context, latent and hybrid over scope
#    thresholds, and the unedited model -> the default decoder and its adapter's scope_threshold (the best PS
#    with NS within 2 points of the unedited model's); results in bench/results/editing-dev/t<T>
#    (never in the reported tables).
# 2. reported set: latent and hybrid, sequential N=10/100/1000 and single N=10/100/1000 (see the sampling below).
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
  ( for t in 0.3 0.45 0.4; do dev hybrid $t; done ) &
  ( run dev-unedited --system unedited --split dev --protocol sequential --n 1000 --limit 100 \
      --out bench/results/editing-dev; dev latent 0.3; dev context 0.3; dev context 0.45 ) &
  wait
fi
if [[ $STAGE == all || $STAGE == report ]]; then
  # N=1000 evaluates every fifth case (200) sequentially and every tenth (100) for single edits: that is what
  # the CPU time allowed; the unedited model is run on the same 200 (bench/results/editing/sample200).
  for S in larimar-latent larimar-hybrid; do
    (
      run "cf-${S#larimar-}-seq" --system $S --protocol sequential --n 10 100
      run "cf-${S#larimar-}-seq1000" --system $S --protocol sequential --n 1000 --limit 200
      run "cf-${S#larimar-}-single" --system $S --protocol single --n 10 100
      run "cf-${S#larimar-}-single1000" --system $S --protocol single --n 1000 --limit 100
    ) &
  done
  wait
  run cf-unedited-200 --system unedited --protocol sequential --n 1000 --limit 200 --out bench/results/editing/sample200
fi
