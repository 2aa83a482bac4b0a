"""Shared fixtures: a tiny random-initialised open_clip model saved as a real checkpoint, settings
pointing at a temporary home, and the shared real-image folders (skipped when absent).
Plain helpers live in tests/helpers.py: import them from there, not from here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing in the tests may reach a model hub: set before any import of it

from scripts.benchlib import random_checkpoint  # noqa: E402
from tests.helpers import TINY_CONFIG, copy_photos, require_imagenet, settings_env  # noqa: E402


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real open_clip checkpoint file of the tiny architecture, with fixed random weights."""
    return random_checkpoint("tiny", tmp_path_factory.mktemp("weights") / "tiny-clip.pt")[1]


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint: Path):
    from indexer.models.loading import load_model

    return load_model(str(TINY_CONFIG), str(tiny_checkpoint), "cpu")


@pytest.fixture
def settings(tmp_path: Path, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch):
    """Settings for a fresh home, using the tiny model; also exported as CLIPSEARCH_* for subprocesses."""
    from indexer.settings import Settings

    for name, value in settings_env(tmp_path / "home", tiny_checkpoint).items():
        monkeypatch.setenv(name, value)
    return Settings()


@pytest.fixture(scope="session")
def imagenet_dir() -> Path:
    return require_imagenet()


@pytest.fixture
def photo_folder(tmp_path: Path, imagenet_dir: Path) -> Path:
    """A private copy of 40 real photos that a test may add to, rewrite and delete."""
    return copy_photos(imagenet_dir, tmp_path / "photos", 40)
