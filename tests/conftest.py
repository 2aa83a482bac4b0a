"""Shared fixtures: a tiny random-initialised open_clip model saved as a real checkpoint, settings
pointing at a temporary home, and the shared real-image folders (skipped when absent).
Plain helpers live in tests/helpers.py: import them from there, not from here.

Markers (registered in pyproject.toml):
- `e2e` is set here, at collection, on every test that starts a process (the CLI through
  tests/clirun.py, any subprocess), a server on a loopback port, a browser, the Streamlit UI or a Ray
  cluster, or drives the CLI or the API through click's or Starlette's test client, in the test or
  in any fixture or helper it uses: tests/markers.py reads that from the code,
  so a new test is classified as it is written, without a list to keep up to date. Reading the code
  rather than going by file keeps a file's unit checks in the fast loop beside its CLI runs.
- `slow` is set by hand on the few tests that take minutes on their own (big data sizes).
`bash scripts/test.sh --fast` runs `-m "not e2e and not slow"`: the unit and contract tests.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing in the tests may reach a model hub: set before any import of it

from scripts.benchlib import random_checkpoint  # noqa: E402
from tests.helpers import TINY_CONFIG, copy_photos, require_imagenet, settings_env  # noqa: E402
from tests.markers import is_end_to_end  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    try:
        from playwright.sync_api import expect
    except ImportError:
        return
    # A browser assertion retries until it holds or this passes: Playwright's default of 5 s would be a
    # timed assertion on a loaded machine, where a page takes longer to re-render.
    expect.set_options(timeout=60_000)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if is_end_to_end(item):
            item.add_marker(pytest.mark.e2e)


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


# A second tiny architecture (model upgrades: re-embedding into another vector).
WIDE_CONFIG = {
    "embed_dim": 48,
    "vision_cfg": {"image_size": 64, "layers": 1, "width": 48, "head_width": 24, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 48, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def wide(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(model config path, checkpoint path) of a second tiny architecture with other random weights."""
    import open_clip
    import torch

    folder = tmp_path_factory.mktemp("wide")
    config = folder / "tiny-wide.json"
    config.write_text(json.dumps(WIDE_CONFIG))
    open_clip.add_model_config(config)
    torch.manual_seed(1)
    checkpoint = folder / "tiny-wide.pt"
    torch.save(open_clip.create_model("tiny-wide", pretrained=None).state_dict(), checkpoint)
    return str(config), str(checkpoint)
