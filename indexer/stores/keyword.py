"""Keyword search pieces every store shares: the document of a point, BM25 as Qdrant computes it,
SQLite FTS5 queries, and reciprocal rank fusion.

The document of a point is the text of the collection's declared `text` fields and of its
searchable keyword fields (`CollectionSchema.searchable`: a catalog's id column and text columns),
joined in field-name order. Edge and server stores keep it as a sparse vector made by Qdrant's own BM25
(`qdrant_edge.Bm25`, English stemming and stop words, k=1.2, b=0.75, avg_len=256) under the
storage key `SPARSE_KEY`, with the IDF modifier, so both tokenise and weigh identically:
    score(q, d) = sum over query terms t in d of  idf(t) * tf(t,d)*(k+1) / (tf(t,d) + k*(1-b+b*|d|/256))
    idf(t) = ln(1 + (N - n(t) + 0.5) / (n(t) + 0.5)),  N = points with a non-empty document.
The FAISS store keeps it in an FTS5 table and ranks by FTS5's bm25() (its IDF is
ln((N - n + 0.5)/(n + 0.5)), floored at 1e-6, with the real average length; Porter stemming, no
stop words), so keyword scores, unlike rankings of distinctive terms, differ between backends.

Hybrid search fuses the vector ranking and the keyword ranking by weighted reciprocal rank fusion,
Qdrant's formula (its prefetch + Fusion.Rrf(k, weights) in edge and server, `fuse` here):
    score = sum over rankings r of 1 / ((position_r + 1) / weight_r + RRF_K - 1),  position from 0.
Each ranking is cut at `HYBRID_CANDIDATES`, and the keyword ranking also at KEYWORD_CUT times its
best score. Why: plain RRF is symmetric, so a point that is first by vector and merely present in
a long keyword list (say every document holding "sku") outranks the one exact match of an SKU or
model number that the image embedding cannot see. With the cut, the keyword list holds only
strong matches (a unique SKU leaves just its product), and with keyword weight 2 its first entry
scores 1/59.5, above any point found by vector alone (at most 1/60): a query holding an exact SKU,
brand or model number puts that product first whatever the image vectors say.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

from indexer.schema import CollectionSchema, payload_path
from indexer.stores.filters import values_at

# Storage key of the BM25 sparse vector; schema vector names start with a letter, so never this.
SPARSE_KEY = "_bm25"
RRF_K = 60  # the constant of the original RRF paper; Qdrant's default (2) lets rank 1 dominate
RRF_WEIGHTS = (1.0, 2.0)  # vector ranking, keyword ranking
KEYWORD_CUT = 0.5  # hybrid keeps keyword hits scoring at least this share of the best one
# Each ranking hybrid search fuses is cut at this many hits (more when a page reaches further):
# pages that end within it are slices of one fused ranking.
HYBRID_CANDIDATES = 200
# FTS5 tokenizer for the FAISS store: Unicode words, accents folded, Porter stemming.
FTS_TOKENIZER = "porter unicode61 remove_diacritics 2"

_TERM = re.compile(r"[^\W_]+")  # letters and digits: how FTS5's unicode61 splits text


def text_fields(schema: CollectionSchema) -> list[str]:
    """The fields whose words form the keyword document, in the order their text forms it: the
    declared text fields and the searchable keyword fields (a catalog's id and text columns)."""
    return sorted({*(name for name, kind in schema.fields.items() if kind == "text"), *schema.searchable})


def document(payload: Mapping[str, Any], fields: Sequence[str]) -> str:
    """The keyword document of a payload: the string values of `fields` (arrays flattened), one a line."""
    values = (v for name in fields for v in values_at(dict(payload), payload_path(name)))
    return "\n".join(v for v in values if isinstance(v, str))


@functools.lru_cache(maxsize=1)
def _bm25() -> Any:
    import qdrant_edge as qe  # only edge and server stores need it

    return qe.Bm25()


def sparse_document(text: str) -> tuple[list[int], list[float]] | None:
    """The BM25 sparse vector (indices, values) of a document; None when it has no terms."""
    vector = _bm25().embed_document(text) if text else None
    if vector is None or not vector.indices:
        return None
    return list(vector.indices), list(vector.values)


def sparse_query(text: str) -> tuple[list[int], list[float]] | None:
    """The BM25 sparse vector of a query (weight 1 per distinct term); None when it has no terms."""
    vector = _bm25().embed_query(text) if text else None
    if vector is None or not vector.indices:
        return None
    return list(vector.indices), list(vector.values)


def fts_match(text: str) -> str | None:
    """An FTS5 MATCH expression for any of the query's terms (quoted: no operators), or None."""
    terms = dict.fromkeys(t.lower() for t in _TERM.findall(text))
    if not terms:
        return None
    return " OR ".join(f'"{term}"' for term in terms)


def rrf_score(position: int, weight: float = 1.0, k: int = RRF_K) -> float:
    return 1.0 / ((position + 1) / weight + k - 1)


def fuse(
    rankings: Sequence[Sequence[str]], weights: Sequence[float] = RRF_WEIGHTS, k: int = RRF_K
) -> dict[str, float]:
    """Weighted reciprocal rank fusion of rankings of ids (best first): id -> fused score."""
    scores: dict[str, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        for position, point_id in enumerate(ranking):
            scores[point_id] = scores.get(point_id, 0.0) + rrf_score(position, weight, k)
    return scores
