"""Save the tiny test architecture (tests/tiny-clip.json) with fixed random weights; print its path.

For smoke-testing the whole pipeline offline; its embeddings carry no meaning.
"""

import sys
from pathlib import Path

import open_clip
import torch

from indexer.settings import Settings

CONFIG = Path(__file__).resolve().parent.parent / "tests" / "tiny-clip.json"

if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Settings().home / "models" / "tiny-clip.pt"
    if not target.exists():
        open_clip.add_model_config(CONFIG)
        torch.manual_seed(0)
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save(open_clip.create_model(CONFIG.stem, pretrained=None).state_dict(), target)
    print(target)
