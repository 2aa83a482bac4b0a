#!/usr/bin/env bash
# Set up .venv from scratch if needed, then run the whole test suite offline.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest -q "$@"
