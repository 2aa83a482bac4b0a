"""Download (or find cached) the default model's weights; exit 1 when they cannot be had."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file: the repository importable
from indexer.errors import ModelLoadError  # noqa: E402
from indexer.models.loading import load_model  # noqa: E402
from indexer.settings import Settings  # noqa: E402

if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()  # no flags: --help, or an error
    settings = Settings()
    try:
        load_model(settings.model, settings.pretrained, "cpu")
    except ModelLoadError as exc:
        print(f"fetch_weights: {exc}", file=sys.stderr)
        sys.exit(1)
