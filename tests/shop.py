"""A small synthetic shop collection written straight into a store, for the search-option tests
(tests/test_search_options.py, test_key_scopes.py): products with 1-3 images each, catalog fields
of every filterable type, a text field holding the title and the SKU, and seeded random unit
vectors in the tiny model's size, so that exact answers can be computed in numpy.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np

from indexer.models.loading import ClipModel
from indexer.schema import CollectionSchema, FieldType
from indexer.settings import Settings
from indexer.stores import Record, open_store
from indexer.stores.filters import Filter, matches

SHOP_FIELDS: dict[str, FieldType] = {
    "product_id": "keyword", "brand": "keyword", "category": "keyword", "colour": "keyword",
    "price": "float", "stock": "integer", "in_stock": "bool", "added": "datetime", "location": "geo",
    "title": "text",
}
BRANDS = ("acme", "zenith", "nordwind", "solenne", "kestrel")
CATEGORIES = ("shoes", "dresses", "bags", "hats")
COLOURS = ("red", "blue", "green", "black")
NOUNS = ("sneaker", "dress", "tote", "cap", "boot", "scarf")
LISBON = (38.7223, -9.1393)


@dataclass
class Shop:
    ids: list[str]
    vectors: np.ndarray  # unit rows, in id order
    payloads: list[dict[str, Any]]
    schema: CollectionSchema

    def kept(self, query_filter: dict[str, Any] | None) -> np.ndarray:
        """Which points a query filter keeps, by the reference meaning."""
        store_filter = Filter.model_validate(query_filter).resolve(self.schema) if query_filter else None
        return np.array([matches(store_filter, i, p) for i, p in zip(self.ids, self.payloads, strict=True)])

    def sku(self, product: int) -> str:
        return f"SKU-{product:05d}-Q{(product * 7919) % 1000:03d}"


def shop_payloads(products: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    payloads = []
    for p in range(products):
        brand, colour = BRANDS[int(rng.integers(len(BRANDS)))], COLOURS[int(rng.integers(len(COLOURS)))]
        noun = NOUNS[int(rng.integers(len(NOUNS)))]
        sku = f"SKU-{p:05d}-Q{(p * 7919) % 1000:03d}"
        metadata = {
            "product_id": f"P{p:04d}", "brand": brand, "category": CATEGORIES[p % len(CATEGORIES)],
            "colour": colour, "price": round(float(rng.uniform(5, 200)), 2),
            "stock": int(rng.integers(0, 20)), "in_stock": bool(p % 3),
            "added": f"{date(2019, 1, 1) + timedelta(days=int(rng.integers(0, 900)))}T00:00:00Z",
            "location": {"lat": round(LISBON[0] + float(rng.uniform(-0.3, 0.3)), 5),
                         "lon": round(LISBON[1] + float(rng.uniform(-0.3, 0.3)), 5)},
            "title": f"{brand} {colour} {noun} {sku}",
        }
        if p % 11 == 5:
            del metadata["brand"]  # some products without a brand: `is empty`
        for image in range(1 + p % 3):
            payloads.append({"uri": f"/shop/{p}-{image}.jpg", "path": f"/shop/{p}-{image}.jpg",
                             "fingerprint": f"{p}-{image}", "metadata": dict(metadata)})
    return payloads


def build_shop(settings: Settings, model: ClipModel, products: int = 120, seed: int = 5,
               collection: str | None = None) -> Shop:
    """Write the shop into `collection` (settings.collection by default) and close the store."""
    payloads = shop_payloads(products, seed)
    ids = [str(uuid.UUID(int=i + 1)) for i in range(len(payloads))]
    rng = np.random.default_rng(seed + 1)
    vectors = rng.standard_normal((len(ids), model.identity.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    schema = CollectionSchema.new(model.identity, fields=dict(SHOP_FIELDS))
    store = open_store(settings, collection or settings.collection, create=schema)
    try:
        store.upsert([Record(i, {"default": v}, p) for i, v, p in zip(ids, vectors, payloads, strict=True)])
        store.flush()
    finally:
        store.close()
    return Shop(ids, vectors, payloads, schema)
