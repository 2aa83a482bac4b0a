"""Real API servers over real indexed photos, for the fuzz and load tests.

Built from test_api.py's helpers (settings, photo copies, uvicorn on a loopback port); this adds only
"index these photos, then serve them", with the photos and ids the tests query with.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from indexer.models import ClipModel
from indexer.pipeline import index_sources
from indexer.settings import Settings
from indexer.stores import open_store
from search_api import create_app
from tests.test_api import copy_photos, make_settings, serve


@dataclass
class Served:
    url: str
    settings: Settings
    photos: list[Path]
    ids: list[str]  # every indexed item's id


def index_photos(root: Path, source: Path, checkpoint: Path, model: ClipModel, count: int,
                 **overrides: Any) -> tuple[Settings, list[Path], list[str]]:
    """Copy `count` real photos under root, index them with the tiny model; settings, photos, ids."""
    photos = copy_photos(source, root / "photos", count)
    settings = make_settings(root / "home", checkpoint, **overrides)
    report = index_sources(settings, [root / "photos"], model=model, progress=False)
    assert (report.embedded, report.failed) == (count, 0)
    store = open_store(settings, settings.collection)  # read before the server holds the collection
    try:
        ids = [record.id for record in store.scan()]
    finally:
        store.close()
    return settings, photos, ids


@contextmanager
def indexed_server(root: Path, source: Path, checkpoint: Path, model: ClipModel, count: int,
                   **overrides: Any) -> Iterator[Served]:
    """A real uvicorn server (in a thread) over `count` freshly indexed real photos."""
    settings, photos, ids = index_photos(root, source, checkpoint, model, count, **overrides)
    with serve(create_app(settings, model=model)) as url:
        yield Served(url, settings, photos, ids)
