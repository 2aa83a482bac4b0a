"""Field types in one place (indexer.fieldtypes) and what stores do with them, on every backend:
inference with a minority that does not fit, a field's type changed in place (indexer.stores.retype:
converted values, filters and facets under the new type, refused with nothing changed when a value
does not convert), and searchable keyword fields (exact for filters and facets, found by words)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from indexer.errors import SchemaError
from indexer.fieldtypes import TypeTally, convert, infer_type
from indexer.schema import CollectionSchema, ModelIdentity
from indexer.settings import Settings
from indexer.stores import VectorStore, open_store
from indexer.stores.base import Record
from indexer.stores.filters import Filter
from indexer.stores.retype import retype_field

STORE_KINDS = ["edge", "qdrant", "faiss"]
DIM = 4


def tally(values: list[object]) -> tuple[str, int, list[tuple[object, object]]]:
    counted = TypeTally()
    for row, value in enumerate(values, start=2):
        counted.add(value, row)
    inferred = counted.infer()
    return inferred.kind, inferred.misfits, inferred.examples


def test_a_minority_that_does_not_fit_is_counted_and_named() -> None:
    prices = [f"{i}.5" for i in range(21)] + ["cheap"]
    assert tally(prices) == ("float", 1, [(23, "cheap")])
    assert tally(["1", "2", "3.5"]) == ("float", 0, [])  # integers with decimals: float
    assert tally(["1", "2", "x"])[0] == "keyword"  # a third is no minority
    assert tally([str(i) for i in range(30)] + ["01234"])[0] == "keyword"  # a code keeps its zeros
    assert tally(["2024-03-01", "2024-03-02T10:00:00+02:00"] * 10 + ["soon"])[:2] == ("datetime", 1)


def test_the_write_api_and_catalogs_share_the_rule() -> None:
    assert [infer_type(v) for v in (True, 3, 2.5, "2024-03-01", "2024-03-01 10:00", {"lat": 1, "lon": 2},
                                    "acme", [1, 2.5], ["a", 1], "01234")] == [
        "bool", "integer", "float", "datetime", "datetime", "geo", "keyword", "float", "keyword", "keyword"]
    assert convert("2024-03-01 10:00", "datetime", "when") == "2024-03-01T10:00:00Z"
    with pytest.raises(ValueError, match="'cheap' is not a float"):
        convert("cheap", "float", "price")


class Typed:
    def __init__(self, kind: str, root: Path) -> None:
        settings = Settings(home=root / "home", store=kind, qdrant={"path": root / "qdrant"})
        fields = {"price": "keyword", "title": "text", "sku": "keyword"}
        schema = CollectionSchema.new(ModelIdentity("t", "", "t", "", DIM), fields=fields)
        schema = schema.with_roles(("sku",), "sku")
        self.store: VectorStore = open_store(settings, "typed", create=schema)
        rng = np.random.default_rng(3)
        self.ids = [str(uuid.UUID(int=i + 1)) for i in range(8)]
        records = []
        for i, point in enumerate(self.ids):
            metadata = {"price": f"{10 * i}.5", "title": f"{'red' if i % 2 else 'blue'} boot",
                        "sku": f"SKU-{i:03d}"}
            records.append(Record(point, {"default": rng.standard_normal(DIM).astype(np.float32)},
                                  {"uri": f"/x/{i}.jpg", "metadata": metadata}))
        self.store.upsert(records)


@pytest.fixture(params=STORE_KINDS)
def typed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Typed]:
    data = Typed(request.param, tmp_path)
    yield data
    data.store.close()


def resolved(store: VectorStore, data: dict[str, object]) -> Filter:
    return Filter.model_validate(data).resolve(store.schema)


def test_a_field_changes_type_in_place_on_every_store(typed: Typed) -> None:
    store = typed.store
    assert retype_field(store, "price", "float") == 8
    assert store.schema.fields["price"] == "float"
    cheap = store.scan(resolved(store, {"must": [{"key": "price", "range": {"lt": 30}}]}))
    assert sorted(r.payload["metadata"]["price"] for r in cheap) == [0.5, 10.5, 20.5]

    # text -> keyword: still found by its words, and now a facet
    retype_field(store, "title", "keyword")
    assert "title" in store.schema.searchable
    assert dict(store.facet("title")) == {"red boot": 4, "blue boot": 4}
    found = store.search(None, 3, mode="keyword", text="red")
    assert len(found) == 3 and all(h.payload["metadata"]["title"] == "red boot" for h in found)

    # a value that does not convert: refused, nothing changed
    with pytest.raises(SchemaError, match=r"cannot become integer: 8 of its 8 stored values"):
        retype_field(store, "title", "integer")
    assert store.schema.fields["title"] == "keyword"


def test_searchable_keyword_fields_are_exact_for_filters_and_found_by_words(typed: Typed) -> None:
    store = typed.store
    hits = store.search(None, 3, mode="keyword", text="SKU-005")
    assert hits[0].payload["metadata"]["sku"] == "SKU-005"
    assert hits[0].score > 2 * hits[1].score  # "sku" is in every document; "005" in one
    exact = store.scan(resolved(store, {"must": [{"key": "sku", "match": {"value": "SKU-005"}}]}))
    assert [r.payload["metadata"]["sku"] for r in exact] == ["SKU-005"]
    assert store.schema.id_fields == ("sku",)
