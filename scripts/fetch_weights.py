"""Download (or find cached) the default model's weights; exit 1 when they cannot be had.

The model and weights are the settings' (CLIPSEARCH_MODEL, CLIPSEARCH_PRETRAINED); it takes no arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file: the repository importable


def main(argv: list[str] | None = None) -> int:
    summary, takes = __doc__.split("\n\n")[:2]
    argparse.ArgumentParser(description=summary, epilog=takes).parse_args(argv)
    # Imported after parsing: --help answers without loading torch.
    from indexer.errors import ModelLoadError
    from indexer.models.loading import load_model
    from indexer.settings import Settings

    settings = Settings()
    try:
        load_model(settings.model, settings.pretrained, "cpu")
    except ModelLoadError as exc:
        print(f"fetch_weights: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
