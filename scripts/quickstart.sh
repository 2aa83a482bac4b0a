#!/usr/bin/env bash
# Install clipsearch into .venv, index a folder into the embedded store (no server), search it.
#   bash scripts/quickstart.sh [FOLDER] [QUERY]
# Uses ViT-B-32 / laion2b_s34b_b79k (downloaded once) unless CLIPSEARCH_MODEL/CLIPSEARCH_PRETRAINED
# say otherwise. With no model hub reachable and no local checkpoint given, it says so and runs
# the whole pipeline with a tiny random-weight model instead, so the set-up is still proven.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install.sh
FOLDER="${1:-../shared/data/imagenet-samples}"
QUERY="${2:-a dog on the beach}"
[ -d "$FOLDER" ] || { echo "no such folder: $FOLDER (usage: bash scripts/quickstart.sh FOLDER [QUERY])" >&2; exit 2; }

if [ -z "${CLIPSEARCH_PRETRAINED:-}" ] && ! .venv/bin/python scripts/fetch_weights.py; then
  echo "quickstart: default weights unavailable (offline?). Running with a tiny random-weight model;" >&2
  echo "quickstart: results are meaningless. Pass a real checkpoint with CLIPSEARCH_PRETRAINED=/path." >&2
  export CLIPSEARCH_MODEL="$PWD/tests/tiny-clip.json"
  export CLIPSEARCH_PRETRAINED
  CLIPSEARCH_PRETRAINED=$(.venv/bin/python scripts/make_tiny_checkpoint.py)
  export CLIPSEARCH_COLLECTION="${CLIPSEARCH_COLLECTION:-quickstart-tiny}"
fi

.venv/bin/clipsearch index "$FOLDER"
.venv/bin/clipsearch status
.venv/bin/clipsearch search "$QUERY" -k 5
