"""Facet counts on every store kind against Python over seeded random payloads (arrays, nulls,
missing values included): for a declared keyword field under a store filter, each value with the
number of passing points holding it (a point with an array counts once per distinct value), most
frequent first, equal counts by value, cut at `limit`. Exact counts: edge and server ask Qdrant
for exact facets, FAISS groups its fields table."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexer.errors import SchemaError
from indexer.schema import CollectionSchema, ModelIdentity
from indexer.settings import Settings
from indexer.stores import VectorStore, open_store
from indexer.stores.base import Record
from indexer.stores.filters import Filter, matches, values_at
from tests.helpers import PAYLOAD_FIELDS, random_payloads

STORE_KINDS = ["edge", "qdrant", "faiss"]
DIM = 4
N = 300


def facet_reference(payloads: list[dict[str, Any]], ids: list[str], path: str, store_filter: Filter | None,
                    limit: int) -> list[tuple[str, int]]:
    counts: Counter[str] = Counter()
    for point_id, payload in zip(ids, payloads, strict=True):
        if matches(store_filter, point_id, payload):
            counts.update({v for v in values_at(payload, path) if isinstance(v, str)})
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:limit]


class Faceted:
    def __init__(self, kind: str, root: Path) -> None:
        self.payloads = random_payloads(np.random.default_rng(21), N)
        self.ids = [str(uuid.UUID(int=i + 1)) for i in range(N)]
        vectors = np.random.default_rng(22).standard_normal((N, DIM)).astype(np.float32)
        settings = Settings(home=root / "home", store=kind, qdrant={"path": root / "qdrant"})
        schema = CollectionSchema.new(ModelIdentity("t", "", "t", "", DIM), fields=dict(PAYLOAD_FIELDS))
        self.store: VectorStore = open_store(settings, "facets", create=schema)
        self.store.upsert([Record(i, {"default": v}, p)
                           for i, v, p in zip(self.ids, vectors, self.payloads, strict=True)])


@pytest.fixture(scope="module", params=STORE_KINDS)
def faceted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faceted]:
    data = Faceted(request.param, tmp_path_factory.mktemp(request.param))
    yield data
    data.store.close()


def _filter(data: dict[str, Any]) -> Filter:
    return Filter.model_validate(data)


FILTERS: dict[str, Filter | None] = {
    "none": None,
    "stock below 5": _filter({"must": [{"key": "metadata.stock", "range": {"lt": 5}}]}),
    "new or tagged gold": _filter({"should": [{"key": "metadata.new", "match": {"value": True}},
                                              {"key": "metadata.tags", "match": {"value": "gold"}}]}),
    "brand not empty, not acme": _filter({"must_not": [
        {"is_empty": {"key": "metadata.brand"}}, {"key": "metadata.brand", "match": {"value": "acme"}},
    ]}),
    "nothing": _filter({"must": [{"key": "metadata.brand", "match": {"value": "nobody"}}]}),
}


@pytest.mark.parametrize("case", list(FILTERS))
@pytest.mark.parametrize("field", ["brand", "tags"])
def test_facet_counts_equal_python_counts_under_the_filter(faceted: Faceted, case: str, field: str) -> None:
    store_filter = FILTERS[case]
    path = f"metadata.{field}"
    for limit in (10, 2):  # 2 cuts through the values: the order decides which stay
        expected = facet_reference(faceted.payloads, faceted.ids, path, store_filter, limit)
        assert faceted.store.facet(field, filter=store_filter, limit=limit) == expected, (case, limit)
    if case == "none":
        assert len(facet_reference(faceted.payloads, faceted.ids, path, None, 10)) == 4  # every value occurs


def test_facets_follow_payload_changes_and_deletes(faceted: Faceted, tmp_path: Path) -> None:
    store = faceted.store
    before = dict(store.facet("brand", limit=10))
    changed = next(i for i, p in zip(faceted.ids, faceted.payloads, strict=True)
                   if p["metadata"].get("brand") == "bolt")
    gone = next(i for i, p in zip(faceted.ids, faceted.payloads, strict=True)
                if p["metadata"].get("brand") == "core" and i != changed)
    store.set_payloads({changed: {"metadata": {"brand": ["zeta", "zeta", "core"]}}})
    store.delete([gone])

    after = dict(store.facet("brand", limit=10))

    assert after["zeta"] == 1 and after["bolt"] == before["bolt"] - 1 and after["core"] == before["core"]
    # restore the module's data for the other tests
    store.delete([changed])
    row = faceted.ids.index(changed), faceted.ids.index(gone)
    vectors = np.random.default_rng(22).standard_normal((N, DIM)).astype(np.float32)
    store.upsert([Record(faceted.ids[r], {"default": vectors[r]}, faceted.payloads[r]) for r in row])
    assert dict(store.facet("brand", limit=10)) == before


def test_facets_count_declared_keyword_fields_only(faceted: Faceted) -> None:
    for field in ("stock", "price", "new", "undeclared"):
        with pytest.raises(SchemaError):
            faceted.store.facet(field)
    assert faceted.store.facet("brand", limit=0) == []
