"""Save the tiny test architecture (tests/tiny-clip.json) with fixed random weights; print its path.

For smoke-testing the whole pipeline offline; its embeddings carry no meaning.

    .venv/bin/python scripts/make_tiny_checkpoint.py [PATH]   # default: CLIPSEARCH_HOME/models/tiny-clip.pt
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file: the repository importable
from indexer.settings import Settings  # noqa: E402
from scripts.benchlib import random_checkpoint  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", type=Path,
                        help="where to save it [CLIPSEARCH_HOME/models/tiny-clip.pt]")
    args = parser.parse_args()  # an unknown flag is an error, never a file name
    print(random_checkpoint("tiny", args.path or Settings().home / "models" / "tiny-clip.pt")[1])
