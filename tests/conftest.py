"""Shared fixtures: a tiny random-initialised open_clip model saved as a real checkpoint, settings
pointing at a temporary home, and the shared real-image folders (skipped when absent)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing in the tests may reach a model hub

TESTS = Path(__file__).parent
TINY_CONFIG = TESTS / "tiny-clip.json"
SHARED_DATA = (TESTS.parent.parent / "shared" / "data").resolve()
IMAGENET = SHARED_DATA / "imagenet-samples"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real open_clip checkpoint file of the tiny architecture, with fixed random weights."""
    import open_clip
    import torch

    open_clip.add_model_config(TINY_CONFIG)
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_CONFIG.stem, pretrained=None)
    path = tmp_path_factory.mktemp("weights") / "tiny-clip.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint: Path):
    from indexer.models import load_model

    return load_model(str(TINY_CONFIG), str(tiny_checkpoint), "cpu")


@pytest.fixture
def settings(tmp_path: Path, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch):
    """Settings for a fresh home, using the tiny model; also exported as CLIPSEARCH_* for subprocesses."""
    from indexer.settings import Settings

    for name, value in settings_env(tmp_path / "home", tiny_checkpoint).items():
        monkeypatch.setenv(name, value)
    return Settings()


def settings_env(home: Path, checkpoint: Path) -> dict[str, str]:
    return {
        "CLIPSEARCH_HOME": str(home),
        "CLIPSEARCH_MODEL": str(TINY_CONFIG),
        "CLIPSEARCH_PRETRAINED": str(checkpoint),
        "CLIPSEARCH_DEVICE": "cpu",
        "CLIPSEARCH_WORKERS": "1",
        "CLIPSEARCH_BATCH_SIZE": "16",
    }


def copy_photos(source: Path, folder: Path, count: int) -> Path:
    """A private copy of `count` real photos that a test may add to, rewrite and delete."""
    folder.mkdir(parents=True, exist_ok=True)
    for photo in sorted(source.glob("*.JPEG"))[:count]:
        shutil.copy2(photo, folder / photo.name)
    return folder


def require_imagenet() -> Path:
    if not IMAGENET.is_dir():
        pytest.skip(f"real test images absent: {IMAGENET} (see ../shared/data/README.md)")
    return IMAGENET


@pytest.fixture(scope="session")
def imagenet_dir() -> Path:
    return require_imagenet()


@pytest.fixture
def photo_folder(tmp_path: Path, imagenet_dir: Path) -> Path:
    """A private copy of 40 real photos that a test may add to, rewrite and delete."""
    return copy_photos(imagenet_dir, tmp_path / "photos", 40)
