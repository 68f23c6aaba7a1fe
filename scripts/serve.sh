#!/usr/bin/env bash
# Start the service with working defaults (file store in ./larimar-data, models from their PyPI packages).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/larimar serve "$@"
