"""Save the tiny test architecture (tests/tiny-clip.json) with fixed random weights; print its path.

For smoke-testing the whole pipeline offline; its embeddings carry no meaning.

    .venv/bin/python scripts/make_tiny_checkpoint.py [PATH]   # default: CLIPSEARCH_HOME/models/tiny-clip.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file: the repository importable


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", type=Path,
                        help="where to write the checkpoint (default: CLIPSEARCH_HOME/models/tiny-clip.pt)")
    args = parser.parse_args(argv)
    # Imported after parsing: --help answers without loading torch.
    from indexer.settings import Settings
    from scripts.benchlib import random_checkpoint

    target = args.path or Settings().home / "models" / "tiny-clip.pt"
    print(random_checkpoint("tiny", target)[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
