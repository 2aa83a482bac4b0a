#!/usr/bin/env bash
# Set up .venv if needed, then run the tests offline.
#   bash scripts/test.sh                 # the whole suite (what CI runs: .ci/run)
#   bash scripts/test.sh --fast          # the fast loop: unit and contract tests, not e2e, not slow
#   bash scripts/test.sh --fast -x tests/test_where.py   # other arguments go to pytest as they are
# Markers: `e2e` (set by tests/conftest.py on tests that start a process, a server, a browser or
# the UI) and `slow` (set by hand); see pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
pytest_args=()
for arg in "$@"; do  # read before installing anything, so --help answers at once
  case "$arg" in
    --fast) pytest_args+=(-m "not e2e and not slow") ;;
    -h|--help)
      echo "usage: bash scripts/test.sh [--fast] [PYTEST ARGUMENTS...]"
      sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
      exit 0 ;;
    *) pytest_args+=("$arg") ;;
  esac
done
source scripts/install.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest -q ${pytest_args[@]+"${pytest_args[@]}"}
