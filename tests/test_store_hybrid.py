"""Keyword (BM25), hybrid (weighted RRF), recommend, MMR, group_by, min_score and paging on every
store kind, against Python references written from the definitions (indexer/stores/keyword.py, base.py):

- keyword, edge and server: Qdrant's BM25 with IDF over the points with a document (`qdrant_bm25`);
  FAISS: SQLite FTS5's bm25() (`fts5_bm25`). The documents use synthetic terms that no stemmer
  changes and no stop-word list holds, so every tokeniser sees the same terms.
- hybrid: the two rankings cut at HYBRID_CANDIDATES (keyword also at KEYWORD_CUT of its best),
  fused by 1 / ((position + 1) / weight + 60 - 1).
- recommend: sum of similarities to the positives minus to the negatives (Qdrant's sum_scores).
- MMR: Qdrant's greedy selection over the nearest MMR_CANDIDATES.
Scores are compared within 1e-4 relative (edge computes in float32); ids exactly, except among
scores equal within that tolerance. Document lengths are all different, so BM25 scores do not tie.
"""

from __future__ import annotations

import math
import re
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexer.errors import BadInput, SchemaError
from indexer.schema import CollectionSchema, ModelIdentity
from indexer.settings import Settings
from indexer.stores import VectorStore, open_store
from indexer.stores.base import MMR_CANDIDATES, Hit, Record
from indexer.stores.filters import Filter
from indexer.stores.keyword import HYBRID_CANDIDATES, KEYWORD_CUT, RRF_WEIGHTS, fuse

STORE_KINDS = ["edge", "qdrant", "faiss"]
DIM = 8
MODEL = ModelIdentity("tiny", "", "tiny", "", DIM)
TERMS = [f"t{n}k" for n in range(300)]  # no stemmer changes these, no stop word list has them
N_DOCS = 120
TOLERANCE = 1e-4


def settings_for(kind: str, root: Path) -> Settings:
    return Settings(home=root / "home", store=kind, qdrant={"path": root / "qdrant"})


def point_id(i: int) -> str:
    return str(uuid.UUID(int=i + 1))


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


# --- references ----------------------------------------------------------------------------------


def tokens(text: str) -> list[str]:
    return re.findall(r"[^\W_]+", text.lower())


def qdrant_bm25(docs: list[str], query: str) -> list[float]:
    """Qdrant's BM25 (k=1.2, b=0.75, avg_len=256) with IDF over the points that have a document."""
    counted = [Counter(tokens(d)) for d in docs]
    n_docs = sum(1 for c in counted if c)
    terms = set(tokens(query))
    df = {t: sum(1 for c in counted if t in c) for t in terms}
    scores = []
    for c in counted:
        length = sum(c.values())
        score = 0.0
        for t in terms:
            if c[t]:
                idf = math.log(1 + (n_docs - df[t] + 0.5) / (df[t] + 0.5))
                score += idf * c[t] * 2.2 / (c[t] + 1.2 * (1 - 0.75 + 0.75 * length / 256))
        scores.append(score)
    return scores


def fts5_bm25(docs: list[str], query: str) -> list[float]:
    """SQLite FTS5's bm25() (k1=1.2, b=0.75, real average length, idf floored at 1e-6), negated."""
    counted = [Counter(tokens(d)) for d in docs]
    rows = [c for c in counted if c]
    avg = sum(sum(c.values()) for c in rows) / len(rows)
    terms = set(tokens(query))
    idf = {}
    for t in terms:
        hits = sum(1 for c in rows if t in c)
        value = math.log((len(rows) - hits + 0.5) / (hits + 0.5))
        idf[t] = value if value > 0 else 1e-6
    scores = []
    for c in counted:
        length = sum(c.values())
        norm = 1.2 * (0.25 + 0.75 * length / avg)
        scores.append(sum(idf[t] * c[t] * 2.2 / (c[t] + norm) for t in terms if c[t]))
    return scores


def ranking(ids: list[str], scores: Any, keep: Any = None) -> list[tuple[str, float]]:
    """(id, score) best first, equal scores by id; `keep`: a mask of the points that may rank."""
    pairs = enumerate(zip(ids, scores, strict=True))
    rows = [(i, float(s)) for n, (i, s) in pairs if keep is None or keep[n]]
    return sorted(rows, key=lambda r: (-r[1], r[0]))


def mmr_reference(candidates: list[tuple[str, float]], vectors: dict[str, np.ndarray], lambda_: float,
                  limit: int) -> list[str]:
    chosen = [candidates[0][0]]
    pending = dict(candidates[1:])
    while pending and len(chosen) < limit:
        def value(i: str) -> float:
            return lambda_ * pending[i] - (1 - lambda_) * max(float(vectors[i] @ vectors[c]) for c in chosen)
        best = max(pending, key=value)
        chosen.append(best)
        del pending[best]
    return chosen


def assert_ranking(hits: list[Hit], expected: list[tuple[str, float]], what: str = "") -> None:
    """Same scores (within TOLERANCE) and the same ids, except that ids whose expected scores are
    equal within the tolerance may come in either order."""
    assert len(hits) == len(expected), what
    scores = [e[1] for e in expected]
    np.testing.assert_allclose([h.score for h in hits], scores, rtol=TOLERANCE, err_msg=what)
    for position, (hit, (want, score)) in enumerate(zip(hits, expected, strict=True)):
        if hit.id != want:
            tied = {i for i, s in expected if abs(s - score) <= TOLERANCE * max(abs(score), 1e-9)}
            assert hit.id in tied, f"{what}: position {position}: {hit.id} instead of {want}"


# --- the documents collection: every document of another length -------------------------------------


class Docs:
    def __init__(self, kind: str, root: Path) -> None:
        rng = np.random.default_rng(7)
        self.kind = kind
        self.ids = [point_id(i) for i in range(N_DOCS)]
        self.vectors = unit(rng, N_DOCS)
        self.docs: list[str] = []
        self.payloads: list[dict[str, Any]] = []
        for i in range(N_DOCS):
            title = " ".join(rng.choice(TERMS, size=3 + 3 * i)) if i % 17 != 5 else ""  # some have none
            tags = list(rng.choice(TERMS, size=2)) if i % 3 == 0 else None  # arrays join the document
            meta: dict[str, Any] = {"title": title, "group": f"g{i % 40}", "shelf": ["a", "b"][i % 2]}
            if tags:
                meta["tags"] = tags
            self.docs.append("\n".join([title, *(tags or [])]).strip())
            self.payloads.append({"uri": f"/{i}", "path": f"{i}", "fingerprint": str(i), "metadata": meta})
        fields = {"title": "text", "tags": "text", "group": "keyword", "shelf": "keyword"}
        schema = CollectionSchema.new(MODEL, fields=fields)
        self.store = open_store(settings_for(kind, root), "docs", create=schema)
        self.store.upsert([Record(i, {"default": v}, p) for i, v, p in
                           zip(self.ids, self.vectors, self.payloads, strict=True)])

    def bm25(self, query: str) -> list[float]:
        return (fts5_bm25 if self.kind == "faiss" else qdrant_bm25)(self.docs, query)

    def keyword(self, query: str, keep: Any = None) -> list[tuple[str, float]]:
        return [r for r in ranking(self.ids, self.bm25(query), keep) if r[1] > 0]

    def vector(self, query: np.ndarray, keep: Any = None) -> list[tuple[str, float]]:
        return ranking(self.ids, self.vectors @ query, keep)

    def hybrid(self, query: np.ndarray, text: str, keep: Any = None) -> list[tuple[str, float]]:
        dense = self.vector(query, keep)[:HYBRID_CANDIDATES]
        sparse = self.keyword(text, keep)[:HYBRID_CANDIDATES]
        sparse = [r for r in sparse if r[1] >= KEYWORD_CUT * sparse[0][1]] if sparse else []
        fused = fuse([[i for i, _ in dense], [i for i, _ in sparse]], RRF_WEIGHTS)
        return sorted(fused.items(), key=lambda r: (-r[1], r[0]))


@pytest.fixture(scope="module", params=STORE_KINDS)
def docs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Docs]:
    corpus = Docs(request.param, tmp_path_factory.mktemp(request.param))
    yield corpus
    corpus.store.close()


def query_text(seed: int) -> str:
    return " ".join(np.random.default_rng(seed).choice(TERMS, size=3))


def query_vector(seed: int) -> np.ndarray:
    return unit(np.random.default_rng(1000 + seed), 1)[0]


SHELF_A = Filter.model_validate({"must": [{"key": "metadata.shelf", "match": {"value": "a"}}]})


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_keyword_search_equals_the_bm25_reference(docs: Docs, seed: int) -> None:
    text = query_text(seed)
    expected = docs.keyword(text)
    assert 5 < len(expected) < N_DOCS  # the query matches some documents, not all

    assert_ranking(docs.store.search(None, N_DOCS, mode="keyword", text=text), expected, text)


def test_keyword_search_under_a_filter_keeps_the_collection_wide_idf(docs: Docs) -> None:
    text = query_text(4)
    keep = [p["metadata"]["shelf"] == "a" for p in docs.payloads]

    hits = docs.store.search(None, N_DOCS, mode="keyword", text=text, filter=SHELF_A)

    assert_ranking(hits, docs.keyword(text, keep))


def test_a_text_without_terms_finds_nothing_and_points_without_a_document_are_never_found(docs: Docs) -> None:
    assert docs.store.search(None, 10, mode="keyword", text="") == []
    assert docs.store.search(None, 10, mode="keyword", text="?! ...") == []
    found = {h.id for h in docs.store.search(None, N_DOCS, mode="keyword", text=" ".join(TERMS))}
    assert found == {i for i, d in zip(docs.ids, docs.docs, strict=True) if d}


@pytest.mark.parametrize("seed", [1, 5])
def test_hybrid_search_equals_weighted_rrf_of_the_two_references(docs: Docs, seed: int) -> None:
    text, vector = query_text(seed), query_vector(seed)

    hits = docs.store.search(vector, N_DOCS, mode="hybrid", text=text)

    assert_ranking(hits, docs.hybrid(vector, text), text)
    keep = [p["metadata"]["shelf"] == "a" for p in docs.payloads]
    filtered = docs.store.search(vector, N_DOCS, mode="hybrid", text=text, filter=SHELF_A)
    assert_ranking(filtered, docs.hybrid(vector, text, keep), "filtered")


def test_hybrid_without_matching_terms_is_the_vector_ranking_fused_alone(docs: Docs) -> None:
    vector = query_vector(9)
    hits = docs.store.search(vector, 10, mode="hybrid", text="nomatchword")
    expected = [(i, 1 / (n + 60)) for n, (i, _) in enumerate(docs.vector(vector)[:10])]
    assert_ranking(hits, expected)


def test_recommend_ranks_by_the_sum_of_similarities_and_leaves_the_examples_out(docs: Docs) -> None:
    positive, negative = [docs.ids[3], docs.ids[10]], [docs.ids[20]]
    rows = {i: n for n, i in enumerate(docs.ids)}
    direction = sum(docs.vectors[rows[i]] for i in positive) - docs.vectors[rows[negative[0]]]
    keep = [i not in positive + negative for i in docs.ids]

    hits = docs.store.recommend(positive, negative, 15)

    assert_ranking(hits, ranking(docs.ids, docs.vectors @ direction, keep)[:15])
    # Vectors as examples are not points: nothing is left out; unnormalised vectors count as unit ones.
    by_vector = docs.store.recommend([3 * docs.vectors[3]], [], 5)
    assert_ranking(by_vector, docs.vector(docs.vectors[3])[:5])
    only_negative = docs.store.recommend([], [docs.ids[7]], 5, filter=SHELF_A)
    keep_a = [p["metadata"]["shelf"] == "a" and i != docs.ids[7]
              for i, p in zip(docs.ids, docs.payloads, strict=True)]
    assert_ranking(only_negative, ranking(docs.ids, -(docs.vectors @ docs.vectors[7]), keep_a)[:5])


@pytest.mark.parametrize("diversity", [0.0, 0.5, 0.9])
def test_mmr_follows_the_greedy_reference_over_the_nearest_candidates(docs: Docs, diversity: float) -> None:
    vector = query_vector(11)
    candidates = docs.vector(vector)[:MMR_CANDIDATES]
    by_id = dict(zip(docs.ids, docs.vectors, strict=True))
    expected = mmr_reference(candidates, by_id, 1 - diversity, 12)

    hits = docs.store.search(vector, 12, diversity=diversity)

    assert [h.id for h in hits] == expected
    relevance = dict(candidates)  # hits keep their similarity to the query as score
    np.testing.assert_allclose([h.score for h in hits], [relevance[i] for i in expected], rtol=TOLERANCE)
    if diversity == 0.0:
        assert expected == [i for i, _ in candidates[:12]]


def test_min_score_keeps_the_hits_scoring_at_least_it_in_every_mode(docs: Docs) -> None:
    text, vector = query_text(2), query_vector(2)
    store = docs.store
    cases: list[tuple[str, dict[str, Any], list[tuple[str, float]]]] = [
        ("vector", {"vector": vector}, docs.vector(vector)),
        ("keyword", {"vector": None, "mode": "keyword", "text": text}, docs.keyword(text)),
        ("hybrid", {"vector": vector, "mode": "hybrid", "text": text}, docs.hybrid(vector, text)),
    ]
    for mode, args, expected in cases:
        cut = len(expected) // 3  # halfway between two scores: float32 rounding cannot move a hit across
        threshold = (expected[cut][1] + expected[cut + 1][1]) / 2
        hits = store.search(k=N_DOCS, min_score=threshold, **args)
        assert_ranking(hits, [e for e in expected if e[1] >= threshold], mode)
    rows = {i: n for n, i in enumerate(docs.ids)}
    recommended = store.recommend([docs.ids[0]], [], N_DOCS, min_score=0.2)
    keep = [i != docs.ids[0] for i in docs.ids]
    similar = ranking(docs.ids, docs.vectors @ docs.vectors[rows[docs.ids[0]]], keep)
    expected_rec = [e for e in similar if e[1] >= 0.2]
    assert_ranking(recommended, expected_rec, "recommend")
    # MMR re-ranks only the candidates scoring at least min_score.
    mmr = store.search(vector, 20, diversity=0.5, min_score=0.1)
    candidates = [c for c in docs.vector(vector)[:MMR_CANDIDATES] if c[1] >= 0.1]
    by_id = dict(zip(docs.ids, docs.vectors, strict=True))
    assert [h.id for h in mmr] == mmr_reference(candidates, by_id, 0.5, 20)


PAGED_MODES: dict[str, dict[str, Any]] = {
    "vector": {},
    "keyword": {"mode": "keyword", "text": query_text(3)},
    "hybrid": {"mode": "hybrid", "text": query_text(3)},
    "mmr": {"diversity": 0.4},
    "grouped": {"group_by": "group"},
    "grouped hybrid": {"mode": "hybrid", "text": query_text(3), "group_by": "group"},
    "min_score": {"min_score": -0.2},
}


@pytest.mark.parametrize("case", list(PAGED_MODES))
def test_pages_in_every_mode_concatenate_to_one_big_query(docs: Docs, case: str) -> None:
    args = PAGED_MODES[case]
    vector = None if args.get("mode") == "keyword" else query_vector(3)
    size = 4 if "group_by" in args else 7
    whole = docs.store.search(vector, 3 * size, **args)
    pages = [docs.store.search(vector, size, offset=offset, **args) for offset in (0, size, 2 * size)]

    assert [h.id for page in pages for h in page] == [h.id for h in whole]
    assert len({(h.id, h.group) for h in whole}) == len(whole) == 3 * size
    if case != "vector":
        return
    rec_whole = docs.store.recommend([docs.ids[1]], [docs.ids[2]], 15)
    rec_pages = [docs.store.recommend([docs.ids[1]], [docs.ids[2]], 5, offset=o) for o in (0, 5, 10)]
    assert [h.id for page in rec_pages for h in page] == [h.id for h in rec_whole]


# --- a product catalog: several images per product, meaningless image vectors ------------------------

BRANDS = ["acme", "zenith", "orbit", "falcon", "cobalt", "maple"]
COLOURS = ["crimson", "indigo", "teal", "olive", "amber", "ivory"]
NOUNS = ["boot", "sandal", "jacket", "scarf", "helmet", "lantern", "kettle", "tripod"]
N_PRODUCTS = 70


class Catalog:
    def __init__(self, kind: str, root: Path) -> None:
        rng = np.random.default_rng(3)
        self.records: list[Record] = []
        self.products: dict[str, dict[str, Any]] = {}
        n = 0
        for p in range(N_PRODUCTS):
            product = {"brand": BRANDS[p % 6], "sku": f"SK-{10000 + 37 * p}", "model": f"X{100 + p}",
                       "title": f"{BRANDS[p % 6]} {COLOURS[p % 5]} {NOUNS[p % 8]}", "product_id": f"p{p}"}
            self.products[f"p{p}"] = product
            for _ in range(1 + p % 3):  # 1, 2 or 3 images
                meta = {**product, "title": f"{product['title']} model {product['model']}"}
                payload = {"uri": f"/{n}", "path": f"{n}", "fingerprint": str(n), "metadata": meta}
                self.records.append(Record(point_id(n), {"default": unit(rng, 1)[0]}, payload))
                n += 1
        fields = {"title": "text", "sku": "text", "brand": "keyword", "product_id": "keyword",
                  "model": "keyword"}
        schema = CollectionSchema.new(MODEL, fields=fields)
        self.store = open_store(settings_for(kind, root), "catalog", create=schema)
        self.store.upsert(self.records)
        self.product_of = {r.id: r.payload["metadata"]["product_id"] for r in self.records}


@pytest.fixture(scope="module", params=STORE_KINDS)
def catalog(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Catalog]:
    corpus = Catalog(request.param, tmp_path_factory.mktemp(request.param))
    yield corpus
    corpus.store.close()


@pytest.mark.parametrize("product", ["p0", "p13", "p41", "p68"])
def test_an_exact_sku_or_model_number_puts_its_product_first_even_with_random_vectors(
    catalog: Catalog, product: str
) -> None:
    details = catalog.products[product]
    images = sum(1 for p in catalog.product_of.values() if p == product)
    for text in (details["sku"], details["sku"].lower().replace("-", " "), f"{details['model']} please",
                 f"{details['brand']} {details['model']}"):
        keyword = catalog.store.search(None, 5, mode="keyword", text=text)
        assert [catalog.product_of[h.id] for h in keyword[:images]] == [product] * images, text
        for seed in range(5):  # whatever the (meaningless) image vector
            hybrid = catalog.store.search(query_vector(seed), 5, mode="hybrid", text=text)
            assert catalog.product_of[hybrid[0].id] == product, (text, seed)
            grouped = catalog.store.search(query_vector(seed), 3, mode="hybrid", text=text,
                                           group_by="product_id")
            assert grouped[0].group == product, (text, seed)


def test_a_brand_query_puts_a_product_of_that_brand_first_in_hybrid_search(catalog: Catalog) -> None:
    for brand in BRANDS[:3]:
        for seed in range(5):
            hits = catalog.store.search(query_vector(seed), 3, mode="hybrid", text=brand)
            assert hits[0].payload["metadata"]["brand"] == brand


@pytest.mark.parametrize("mode", ["vector", "keyword", "hybrid"])
def test_group_by_gives_the_best_hit_of_each_product_in_ranking_order(catalog: Catalog, mode: str) -> None:
    text = "acme crimson boot tripod"
    vector = None if mode == "keyword" else query_vector(4)
    everything = catalog.store.search(vector, len(catalog.records), mode=mode, text=text)
    best: dict[str, list[Hit]] = {}
    for hit in everything:  # brute force over the whole ranking: a group enters at its best hit
        best.setdefault(catalog.product_of[hit.id], []).append(hit)
    expected = list(best)[:12]

    grouped = catalog.store.search(vector, 12, mode=mode, text=text, group_by="product_id")

    assert [h.group for h in grouped] == expected
    for hit in grouped:
        top = best[hit.group][0].score
        np.testing.assert_allclose(hit.score, top, rtol=TOLERANCE)
        # among equal best scores (images sharing one text) any may represent the product
        assert hit.id in {h.id for h in best[hit.group] if abs(h.score - top) <= TOLERANCE * abs(top)}
        assert catalog.product_of[hit.id] == hit.group


def test_group_by_under_a_filter_and_min_score(catalog: Catalog) -> None:
    only = Filter.model_validate({"must": [{"key": "metadata.brand", "match": {"value": "zenith"}}]})
    vector = query_vector(6)
    everything = catalog.store.search(vector, len(catalog.records), filter=only, min_score=-0.3)
    expected = list(dict.fromkeys(catalog.product_of[h.id] for h in everything))

    grouped = catalog.store.search(vector, 50, filter=only, min_score=-0.3, group_by="product_id")

    assert [h.group for h in grouped] == expected
    assert all(h.payload["metadata"]["brand"] == "zenith" and h.score >= -0.3 for h in grouped)


# --- keeping the keyword index in step with the points ---------------------------------------------


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_keyword_index_follows_upserts_payload_changes_deletes_and_late_declarations(
    kind: str, tmp_path: Path
) -> None:
    settings = settings_for(kind, tmp_path)
    schema = CollectionSchema.new(MODEL, fields={"brand": "keyword"})
    store: VectorStore = open_store(settings, "late", create=schema)
    rng = np.random.default_rng(5)
    texts = [" ".join(rng.choice(TERMS[:40], size=4 + 2 * i)) for i in range(30)]
    records = [Record(point_id(i), {"default": v}, {"metadata": {"name": t}})
               for i, (t, v) in enumerate(zip(texts, unit(rng, 30), strict=True))]
    store.upsert(records)
    with pytest.raises(SchemaError):
        store.search(None, 5, mode="keyword", text=texts[0])

    store.set_schema(store.schema.with_fields({"name": "text"}))  # declared after the points: backfilled
    assert {h.id for h in store.search(None, 30, mode="keyword", text="t3k t4k")} == {
        r.id for r in records if {"t3k", "t4k"} & set(r.payload["metadata"]["name"].split())
    }
    store.set_payloads({records[0].id: {"metadata": {"name": "zz9k unique"}},
                        records[1].id: {"metadata": {}}})
    store.delete([records[2].id])
    added = {"metadata": {"name": "zz9k velvet cobalt"}}
    store.upsert([Record(point_id(99), {"default": unit(rng, 1)[0]}, added)])

    assert [h.id for h in store.search(None, 5, mode="keyword", text="unique")] == [records[0].id]
    assert {h.id for h in store.search(None, 5, mode="keyword", text="zz9k")} == {records[0].id, point_id(99)}
    everything = {h.id for h in store.search(None, 50, mode="keyword", text=" ".join(TERMS[:40]))}
    assert not everything & {records[0].id, records[1].id, records[2].id}
    store.close()

    # Reopened (edge recomputes its IDF statistics on load), scores equal the reference.
    store = open_store(settings, "late")
    docs = ["zz9k unique", "", "", *texts[3:], "zz9k velvet cobalt"]
    ids = [point_id(i) for i in range(30) if i != 2] + [point_id(99)]
    docs = [d for i, d in enumerate(docs) if i != 2]
    scores = (fts5_bm25 if kind == "faiss" else qdrant_bm25)(docs, "t5k zz9k")
    expected = [r for r in ranking(ids, scores) if r[1] > 0]
    assert_ranking(store.search(None, 50, mode="keyword", text="t5k zz9k"), expected)
    store.close()


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_bad_requests_are_refused_alike(kind: str, tmp_path: Path) -> None:
    fields = {"title": "text", "brand": "keyword", "stock": "integer", "price": "float"}
    store = open_store(settings_for(kind, tmp_path), "bad", create=CollectionSchema.new(MODEL, fields=fields))
    vector = unit(np.random.default_rng(0), 1)[0]
    store.upsert([Record(point_id(0), {"default": vector}, {"metadata": {"title": "a"}})])
    refusals: list[tuple[type[Exception], dict[str, Any]]] = [
        (BadInput, {"mode": "fuzzy"}),
        (BadInput, {"mode": "keyword"}),  # no text
        (BadInput, {"diversity": 1.5}),
        (BadInput, {"diversity": 0.5, "mode": "hybrid", "text": "a"}),
        (BadInput, {"diversity": 0.5, "group_by": "brand"}),
        (BadInput, {"min_score": float("nan")}),
        (SchemaError, {"group_by": "price"}),
        (SchemaError, {"group_by": "nowhere"}),
    ]
    for error, args in refusals:
        with pytest.raises(error):
            store.search(vector, 3, **args)
    with pytest.raises(BadInput):
        store.search(None, 3)  # vector search without a vector
    with pytest.raises(BadInput):
        store.recommend([], [], 3)
    with pytest.raises(BadInput):
        store.recommend([point_id(42)], [], 3)  # not in the collection
    with pytest.raises(BadInput):
        store.recommend([vector], [vector], 3)  # cancels out
    assert store.search(vector, 3, group_by="stock") == []  # no point has a stock value
    store.close()
