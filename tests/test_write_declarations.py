"""A write that fails leaves no field declarations behind (issue 18): the fields a write brings are
declared only once it is stored. A write whose image passes the checks made before anything is stored
(its header reads) but cannot be decoded fails at the embedding, after its new fields are known; the
collection's fields, its files and its items are then as before, through the real write API and the
Python API (`clipsearch.open`), on edge, qdrant (local mode) and FAISS. The same write with a good
image declares the fields, and a filter on them finds the item."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from indexer.collection import Collection
from indexer.errors import ClipsearchError
from indexer.settings import Settings
from search_api import create_app
from tests.helpers import make_settings, serve
from tests.shop import SHOP_FIELDS, build_shop

NEW_METADATA = {"fresh_count": 3, "fresh_tag": "spring"}
NEW_TEXT = {"fresh_blurb": "a bird on a branch"}
NEW_FIELDS = {"fresh_count": "integer", "fresh_tag": "keyword", "fresh_blurb": "text"}


@dataclass
class Home:
    settings: Settings
    photo: bytes  # a good JPEG
    broken: bytes  # the same JPEG cut short: its header reads, its pixels do not

    def files(self) -> set[Path]:
        return {p for p in self.settings.home.rglob("*") if p.is_file() and "items" in p.parts}


@pytest.fixture(params=["edge", "qdrant", "faiss"])
def home(request: pytest.FixtureRequest, tmp_path: Path, tiny_checkpoint: Path, tiny_model: Any,
         imagenet_dir: Path) -> Iterator[Home]:
    settings = make_settings(tmp_path / "home", tiny_checkpoint, store=request.param,
                             qdrant={"path": tmp_path / "q"})
    build_shop(settings, tiny_model, products=6)
    photo = sorted(imagenet_dir.glob("*.JPEG"))[0].read_bytes()
    yield Home(settings, photo, photo[: len(photo) // 3])


def test_a_failed_write_through_the_api_declares_nothing(home: Home, tiny_model: Any) -> None:
    app = create_app(home.settings, model=tiny_model)
    with serve(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        def fields() -> dict[str, str]:
            return client.get("/v1/collections/default/status").json()["fields"]

        def put(item: str, image: bytes) -> httpx.Response:
            form = {"metadata": json.dumps(NEW_METADATA), "text": json.dumps(NEW_TEXT)}
            return client.put(f"/v1/collections/default/items/{item}", data=form,
                              files={"file": ("p.jpg", image, "image/jpeg")})

        before, files = fields(), home.files()
        assert before == dict(SHOP_FIELDS)
        failed = put("BROKEN", home.broken)
        assert 400 <= failed.status_code < 500, failed.text  # the image's fault: a 4xx saying so
        assert fields() == before  # no declaration left behind
        assert home.files() == files
        assert client.get("/v1/collections/default/items/BROKEN").status_code == 404

        stored = put("GOOD", home.photo)
        assert stored.status_code == 200, stored.text
        assert fields() == {**before, **NEW_FIELDS}  # declared once the write is stored
        only_new = {"must": [{"key": "fresh_tag", "match": {"value": "spring"}},
                             {"key": "fresh_count", "range": {"gte": 3}}]}
        found = client.post("/v1/search", json={"text": "a bird", "k": 10, "filter": only_new})
        assert found.status_code == 200, found.text
        assert [hit["metadata"]["item_id"] for hit in found.json()["results"]] == ["GOOD"]


def test_a_failed_write_through_the_python_api_declares_nothing(home: Home) -> None:
    with Collection.open(None, home.settings) as shop:  # what clipsearch.open(**settings) gives
        before, files = shop.status().fields, home.files()
        assert before == dict(SHOP_FIELDS)
        with pytest.raises(ClipsearchError):
            shop.put_item("BROKEN", home.broken, metadata=NEW_METADATA, text=NEW_TEXT)
        assert shop.status().fields == before and home.files() == files
        with pytest.raises(ClipsearchError):
            shop.get_item("BROKEN")

        shop.put_item("GOOD", home.photo, metadata=NEW_METADATA, text=NEW_TEXT)
        assert shop.status().fields == {**before, **NEW_FIELDS}
        found = shop.search("a bird", k=10, where=["fresh_tag = spring", "fresh_count >= 3"])
        assert [hit.metadata["item_id"] for hit in found.hits] == ["GOOD"]
