#!/usr/bin/env bash
# The GPU checks, as one script for a lent CUDA machine (its own python3 with torch; no network there).
# A call carries at most 64 MiB, so earlier calls on the same warm machine leave in $GPU_FILES (default /tmp/gpu):
# .whl/ (wheels of fastapi, pydantic(-core/-settings), starlette, redis, gguf ... for that python) and llm_a + llm_b
# (the SmolLM2 GGUF split in two); this call carries .gpu/enc (all-MiniLM-L6-v2 saved in float16).
# Writes logs and JSON under $OUT.
set -uo pipefail
G=${GPU_FILES:-/tmp/gpu}
cat "$G/llm_a" "$G/llm_b" > /tmp/smol.gguf
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$G"/.whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export LARIMAR_LLM=/tmp/smol.gguf LARIMAR_ENCODER=$PWD/.gpu/enc LARIMAR_DEVICE=cuda LARIMAR_MODEL_CACHE_DIR=/tmp/lcache
nvidia-smi -L
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
python3 -m pytest tests/test_cuda.py tests/test_episodic.py tests/test_models.py -q -p no:cacheprovider -rs \
  2>&1 | tee "$OUT/gpu_tests.log"
python3 -m bench.service_bench --sections update --out "$OUT" --md "$OUT/RESULTS_gpu.md" 2>&1 | tail -15
ls "$OUT"
