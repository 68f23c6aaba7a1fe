#!/usr/bin/env bash
# The test command: bootstrap, then the whole suite. "No tests ran" (pytest exit 5) is a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh || exit 1
# Only the tests need a browser: the console's test drives Debian's Chromium (Playwright downloads none).
if ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium || exit 1
  else
    echo "warning: chromium is not installed; the console test is skipped (apt-get install chromium)" >&2
  fi
fi
. .venv/bin/activate
# Only the tests need an LLM engine: llama.cpp's OpenAI-compatible server (llama-cpp-python[server]), built from
# source with the machine's cmake and C compiler (about 4 min on 2 cores) once; the wheel is kept in
# $LARIMAR_WHEEL_CACHE and reused. Without it the engine tests are skipped.
# On x86-64 it is built for AVX2, not for the building CPU: a native build on a CPU with AMX
# (Sapphire Rapids) segfaulted on its first prompt, and one wheel then serves every machine the cache reaches.
LLAMA=llama-cpp-python==0.3.36
FLAVOUR=native
LLAMA_CMAKE=""
if [ "$(uname -m)" = x86_64 ]; then
  FLAVOUR=avx2
  LLAMA_CMAKE="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
fi
WHEELS=${LARIMAR_WHEEL_CACHE:-$HOME/.cache/larimar/wheels}/$FLAVOUR
MARK=.venv/.llama-cpp-build
if [ "$(cat "$MARK" 2>/dev/null)" != "$LLAMA $FLAVOUR" ] || ! python -c "import llama_cpp.server" 2>/dev/null; then
  if ! command -v cmake >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q cmake build-essential
  fi
  wheel=$(ls "$WHEELS"/llama_cpp_python-0.3.36-*.whl 2>/dev/null | head -1)
  if [ -z "$wheel" ]; then
    echo "building $LLAMA ($FLAVOUR) from source (once; kept in $WHEELS)" >&2
    CMAKE_ARGS="$LLAMA_CMAKE" python -m pip wheel -q --no-deps --no-cache-dir "$LLAMA" -w "$WHEELS" \
      && wheel=$(ls "$WHEELS"/llama_cpp_python-0.3.36-*.whl | head -1)
  fi
  if [ -n "$wheel" ] && python -m pip install -q --force-reinstall --no-deps "$wheel" \
      && python -m pip install -q "$wheel[server]"; then
    echo "$LLAMA $FLAVOUR" > "$MARK"
  else
    echo "warning: $LLAMA did not build or install; the LLM engine tests are skipped" >&2
  fi
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
