"""Collections written by the previous release open, answer as they did, and are migrated at their
first write. The fixtures in tests/fixtures/v1/ were written by that release's own store code
(scripts/make_v1_fixtures.py); expected.json holds its points, its info and its answers."""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexer.schema import SCHEMA_VERSION, ModelIdentity
from indexer.settings import Settings
from indexer.stores import open_store
from indexer.stores.base import Record, VectorStore
from indexer.stores.filters import Filter

FIXTURES = Path(__file__).parent / "fixtures" / "v1"
EXPECTED: dict[str, Any] = json.loads((FIXTURES / "expected.json").read_text())
NEW_ID = "00000000-0000-4000-8000-000000000999"
# The stored schema document, wherever and however a backend keeps it (JSON, or JSON in a string).
SCHEMA_KEY = re.compile(rb'\\?"schema\\?"\s*:')
VERSION_2 = re.compile(rb'\\?"version\\?"\s*:\s*' + str(SCHEMA_VERSION).encode() + rb"\b")


def unpack(kind: str, root: Path) -> Settings:
    with tarfile.open(FIXTURES / f"{kind}.tar.gz") as tar:
        tar.extractall(root, filter="data")
    return Settings(home=root / "home", store=kind, qdrant={"path": root / "qdrant"})


def files_matching(root: Path, pattern: re.Pattern[bytes]) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and p.stat().st_size < 10_000_000
            and pattern.search(p.read_bytes())]


def assert_old_answers(store: VectorStore, kind: str) -> None:
    expected = EXPECTED["stores"][kind]["results"]
    for query, answer in zip(EXPECTED["queries"], expected, strict=True):
        hits = store.search(np.array(query, dtype=np.float32), k=EXPECTED["k"])
        assert [h.id for h in hits] == [a["id"] for a in answer]
        np.testing.assert_allclose([h.score for h in hits], [a["score"] for a in answer], atol=1e-5)


@pytest.fixture(params=["edge", "faiss", "qdrant"])
def old_collection(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Settings, Path]]:
    yield request.param, unpack(request.param, tmp_path), tmp_path


def test_the_fixtures_are_small_and_were_written_by_the_previous_release() -> None:
    assert sum(p.stat().st_size for p in FIXTURES.iterdir()) < 300_000
    assert EXPECTED["release"] == "243966a" and len(EXPECTED["points"]) == 20
    for kind in ("edge", "faiss", "qdrant"):
        assert EXPECTED["stores"][kind]["info"] == {"model": EXPECTED["model"], "failed": EXPECTED["failed"]}


def test_a_version_1_collection_opens_migrated_answers_as_before_and_is_rewritten_at_its_first_write(
    old_collection: tuple[str, Settings, Path],
) -> None:
    kind, settings, root = old_collection
    points = {p["id"]: p for p in EXPECTED["points"]}
    assert not files_matching(root, SCHEMA_KEY)  # nothing of the new format before the first write

    store = open_store(settings, EXPECTED["collection"])
    try:
        schema = store.schema
        assert schema.version == SCHEMA_VERSION and list(schema.vectors) == ["default"]
        assert schema.active == "default" and schema.vector("default").storage_key == ""
        assert schema.vector("default").model == ModelIdentity.from_dict(EXPECTED["model"])
        assert schema.fields == {"width": "integer", "height": "integer"}
        assert store.read_info() == {"failed": EXPECTED["failed"]}
        assert store.count() == 20
        assert_old_answers(store, kind)
        for record in store.retrieve(list(points), with_vectors=True):
            assert record.payload == points[record.id]["payload"]
            np.testing.assert_allclose(record.vectors["default"], points[record.id]["vector"], atol=1e-6)
        assert not files_matching(root, SCHEMA_KEY)  # reading alone writes nothing

        # The first write: a point far from every query, so the old answers stay the answers.
        away = -np.sum(np.array(EXPECTED["queries"], dtype=np.float32), axis=0)
        away /= np.linalg.norm(away)
        store.upsert([Record(NEW_ID, {"default": away},
                             {"uri": "/photos/new.jpg", "path": "new.jpg", "fingerprint": "f",
                              "metadata": {"width": 1, "height": 2}})])
        store.flush()
        assert_old_answers(store, kind)
    finally:
        store.close()

    assert files_matching(root, SCHEMA_KEY) and files_matching(root, VERSION_2)
    reopened = open_store(settings, EXPECTED["collection"])
    try:
        assert reopened.schema == schema and reopened.count() == 21
        assert reopened.read_info() == {"failed": EXPECTED["failed"]}
        assert_old_answers(reopened, kind)
        assert reopened.search(away, k=1)[0].id == NEW_ID
        # The fields of the migrated schema are declared: filters on them work.
        wide = Filter.parse({"must": [{"key": "width", "range": {"gte": 250}}]})
        assert wide is not None
        assert reopened.count(wide.resolve(reopened.schema)) == sum(
            p["payload"]["metadata"]["width"] >= 250 for p in EXPECTED["points"])
    finally:
        reopened.close()
