"""Save the tiny test architecture (tests/tiny-clip.json) with fixed random weights; print its path.

For smoke-testing the whole pipeline offline; its embeddings carry no meaning.

    .venv/bin/python scripts/make_tiny_checkpoint.py [PATH]   # default: CLIPSEARCH_HOME/models/tiny-clip.pt
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file: the repository importable
from indexer.settings import Settings  # noqa: E402
from scripts.benchlib import random_checkpoint  # noqa: E402

if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Settings().home / "models" / "tiny-clip.pt"
    print(random_checkpoint("tiny", target)[1])
