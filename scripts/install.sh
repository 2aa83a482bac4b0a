#!/usr/bin/env bash
# Create .venv in the project root and install clipsearch with indexing (torch), Ray and the test tools.
# Sourced by quickstart.sh and test.sh; safe to re-run. A re-run with the same pyproject.toml, this
# script and this checkout installs nothing (the stamp in .venv says what was installed); a fresh
# .venv (CI removes it first) always installs everything.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
install_stamp=".venv/.clipsearch-install"
installed_for="$(pwd) $(cat pyproject.toml scripts/install.sh | cksum)"
if [ "$(cat "$install_stamp" 2>/dev/null)" != "$installed_for" ]; then
  rm -f "$install_stamp"
  .venv/bin/python -m pip install -q --upgrade pip
  # Pinned so pip takes the local copy where there is one instead of a newer multi-GB download.
  .venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
  .venv/bin/python -m pip install -q -e '.[index,ray,test]'
  echo "$installed_for" > "$install_stamp"
fi
