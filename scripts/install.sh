#!/usr/bin/env bash
# Create .venv in the project root and install clipsearch with indexing (torch), Ray and the test tools.
# Sourced by quickstart.sh and test.sh; safe to re-run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# Pinned so pip takes the local copy where there is one instead of a newer multi-GB download.
.venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install -q -e '.[index,ray,test]'
