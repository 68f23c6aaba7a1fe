#!/usr/bin/env bash
# Every editing benchmark row on a lent CUDA machine, all runs in parallel (a 135M model leaves the GPU idle).
#
# A device call carries at most 64 MiB, so earlier calls on the same warm machine leave in $GPU_FILES (default
# /tmp/gpu) the two halves of the 98 MB SmolLM2 GGUF (llm_00, llm_01) and whl/ (wheels for packages that
# machine's python lacks, opentelemetry-api included: fastapi imports it); this call carries .gpu/enc
# (all-MiniLM-L6-v2 in float16, put back to float32 here) and .gpu/data (the ../shared/data files the runs read,
# 6 MB: the device only gets this repository). Every run stops starting new edits/cases BUDGET_S seconds after
# this script starts (summaries then give the N reached). The device returns only a few files per call, so
# everything comes back as one archive, $OUT/editing.tgz (results and logs).
set -uo pipefail
G=${GPU_FILES:-/tmp/gpu}
END=$(( $(date +%s) + ${BUDGET_S:-380} ))
cat "$G/llm_00" "$G/llm_01" > /tmp/smol.gguf
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$G"/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export LARIMAR_LLM=/tmp/smol.gguf LARIMAR_ENCODER=/tmp/enc LARIMAR_DEVICE=cuda LARIMAR_MODEL_CACHE_DIR=/tmp/lcache
mkdir -p "$OUT/editing" "$OUT/logs" /tmp/enc /work/shared
[ -d /work/shared/data ] || cp -r .gpu/data /work/shared/data   # where bench.editing looks by default
cp -r .gpu/enc/. /tmp/enc/
nvidia-smi -L
# Encoder back to float32; GGUF converted and ROME's second moments computed once, before the parallel runs.
python3 - <<'EOF' 2>&1 | grep -v Warning | tail -4
from pathlib import Path
import torch, transformers
from safetensors.torch import load_file, save_file
save_file({k: v.float() for k, v in load_file("/tmp/enc/model16.safetensors").items()}, "/tmp/enc/model.safetensors")
Path("/tmp/enc/model16.safetensors").unlink()
from models.llm import CausalLM
from bench.baselines.rome import Rome
print("torch", torch.__version__, "transformers", transformers.__version__)
Rome(CausalLM("/tmp/smol.gguf", Path("/tmp/lcache"), "cuda"), Path("/tmp/lcache/rome-stats"))
EOF
bench() { python3 -m bench.editing --out "$OUT/editing" --device cuda --batch 64 --budget-s $(( END - $(date +%s) )) "$@"; }
chain() {  # name, then runs separated by ";;"
  local name=$1; shift
  ( local args=()
    for a in "$@" ";;"; do
      if [ "$a" = ";;" ]; then [ ${#args[@]} -gt 0 ] && bench "${args[@]}"; args=(); else args+=("$a"); fi
    done ) > "$OUT/logs/$name.log" 2>&1 &
}
for sys in ft-l rome grace; do
  chain "cf-$sys-seq" --system "$sys" --protocol sequential --n 10 100 1000
  chain "cf-$sys-single" --system "$sys" --protocol single --n 10 100 1000
  chain "zsre-$sys" --dataset zsre --system "$sys" --protocol sequential --n 10 100 500 ";;" \
    --dataset zsre --system "$sys" --protocol single --n 10 100 500
done
for sys in unedited oracle; do
  chain "$sys" --system "$sys" --protocol sequential --n 10 100 1000 ";;" \
    --dataset zsre --system "$sys" --protocol sequential --n 10 100 500
done
S=larimar-context
chain ctx-seq --system $S --protocol sequential --n 10 100 1000 ";;" --dataset zsre --system $S --protocol sequential --n 10 100 500
chain ctx-single --system $S --protocol single --n 10 100 1000 ";;" --dataset zsre --system $S --protocol single --n 10 100 500
chain ctx-10k --system $S --protocol sequential --n 10000 --limit 500 ";;" --schema rome --system $S --protocol sequential --n 202
chain ctx-forget --system $S --protocol forgetting --n 512 1024
wait
nvidia-smi --query-gpu=name,memory.used --format=csv
grep -h "bench.editing:" "$OUT"/logs/*.log | cut -c1-300
grep -l -E "Traceback|Error" "$OUT"/logs/*.log | while read -r f; do echo "== $f"; grep -B2 -A8 Traceback "$f" | tail -20; done
ls "$OUT/editing" | wc -l
tar czf "$OUT/editing.tgz" -C "$OUT" editing logs && rm -rf "$OUT/editing" "$OUT/logs"
