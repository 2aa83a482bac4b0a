"""Download (or find cached) the default model's weights; exit 1 when they cannot be had."""

import sys

from indexer.models import ModelLoadError, load_model
from indexer.settings import Settings

if __name__ == "__main__":
    settings = Settings()
    try:
        load_model(settings.model, settings.pretrained, "cpu")
    except ModelLoadError as exc:
        print(f"fetch_weights: {exc}", file=sys.stderr)
        sys.exit(1)
