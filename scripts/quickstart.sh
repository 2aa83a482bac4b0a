#!/usr/bin/env bash
# Install clipsearch into .venv, index a folder into the embedded store (no server), search it, and
# print the lines that let the README's next commands use the same collection and model.
#   bash scripts/quickstart.sh [--no-install] [FOLDER] [QUERY]
# --no-install: use .venv as it is (already installed). Uses ViT-B-32 / laion2b_s34b_b79k (downloaded
# once) unless CLIPSEARCH_MODEL/CLIPSEARCH_PRETRAINED say otherwise. With no model hub reachable and no
# local checkpoint given, it says so and runs the whole pipeline with a tiny random-weight model
# instead, so the set-up is still proven.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--no-install" ]; then
  shift
  [ -x .venv/bin/clipsearch ] || { echo "quickstart: no .venv/bin/clipsearch: run without --no-install" >&2; exit 2; }
else
  source scripts/install.sh
fi
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

# What this run used, so that `clipsearch search` and `clipsearch index ~/Pictures` go on with the same
# collection and model in the user's shell (offline too: a checkpoint path or the cached weights).
.venv/bin/python - <<'PY'
import shlex
from pathlib import Path

from indexer.settings import Settings

settings = Settings()
exports = {"CLIPSEARCH_HOME": str(Path(settings.home).expanduser().resolve()),
           "CLIPSEARCH_COLLECTION": settings.collection, "CLIPSEARCH_MODEL": settings.model,
           "CLIPSEARCH_PRETRAINED": settings.pretrained}
print("\nquickstart: done. To go on in your shell with this collection and model, paste:\n")
print(f"source {shlex.quote(str(Path('.venv/bin/activate').resolve()))}")
print("export " + " ".join(f"{name}={shlex.quote(value)}" for name, value in exports.items()))
print('clipsearch search "sunset over the sea" -k 5')
print("clipsearch index ~/Pictures")
PY
