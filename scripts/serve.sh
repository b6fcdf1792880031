#!/usr/bin/env bash
# Quick start: set up, migrate the embedded database and run the server. Flags pass to `assistant serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/assistant migrate
exec .venv/bin/assistant serve "$@"
