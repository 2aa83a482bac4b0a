"""The FAISS store's searches: vector, keyword (FTS5 bm25()), hybrid, recommend and MMR, plus facets.

Each mode is a ranking function `limit -> best hits` (equal scores by id) that the shared paging
helpers of base.py cut into pages or groups, so pages and groups work as in the Qdrant stores.
What Qdrant computes natively is computed here to the same definition:
- hybrid: weighted reciprocal rank fusion of the two rankings cut as in keyword.py (`keyword.fuse`);
- recommend (sum_scores): sum of similarities to the positives minus to the negatives, which is
  the inner product with (sum of positives - sum of negatives): one nearest search with that
  direction, scores scaled back by its length;
- MMR: Qdrant's greedy selection over the nearest candidates (`mmr_order`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from indexer.schema import VectorSpec
from indexer.stores.base import (
    Hit,
    PlannedSearch,
    SearchPlan,
    at_least,
    facet_order,
    facet_path,
    grouped_page,
    ranked_page,
)
from indexer.stores.faiss_store.db import STRING
from indexer.stores.faiss_store.index import exact_nearest, normalised
from indexer.stores.filters import Filter, HasVectorCondition, matches
from indexer.stores.keyword import KEYWORD_CUT, fts_match, fuse


class SearchMixin(PlannedSearch):
    """The read side of FaissStore beyond retrieve/scan/count; see store.py for the attributes."""

    # provided by FaissStore
    name: str
    config: Any
    _mutex: Any
    _indexes: dict[str, Any]
    schema: Any
    db: Any
    _errors: Callable[[str], Any]
    _compiled: Callable[[Filter], tuple[str, list[Any]]]
    _filtered_vids: Callable[[VectorSpec, Filter], np.ndarray]
    _ensure_keyword: Callable[[], None]
    retrieve: Callable[..., Any]

    def _run_search(
        self, plan: SearchPlan, spec: Any, vector: np.ndarray | None, text: str, filter: Filter | None
    ) -> list[Hit]:
        query = None if vector is None else normalised(vector[None, :])
        with self._mutex, self._errors("search"):
            if plan.mode != "vector":
                self._ensure_keyword()
            match = fts_match(text)
            if plan.mode == "keyword":
                ranking = self._keyword_ranking(match, filter)
            elif plan.mode == "hybrid":
                assert query is not None
                ranking = self._hybrid_ranking(spec, query, match, filter, plan.candidates)
            elif plan.lambda_ is not None:
                assert query is not None
                return self._mmr(spec, query, filter, plan)
            else:
                assert query is not None
                ranking = self._vector_ranking(spec, query, filter)
            return self._page(ranking, plan)

    def _run_recommend(
        self, plan: SearchPlan, spec: Any, pos: list[np.ndarray], neg: list[np.ndarray], filter: Filter | None
    ) -> list[Hit]:
        direction = np.sum(pos, axis=0) - (np.sum(neg, axis=0) if neg else 0)
        length = float(np.linalg.norm(direction))
        with self._mutex, self._errors("recommend"):
            ranking = self._vector_ranking(spec, (direction / length)[None, :].astype(np.float32),
                                           filter, scale=length)
            return self._page(ranking, plan)

    def facet(self, field: str, *, filter: Filter | None = None, limit: int = 10) -> list[tuple[str, int]]:
        facet_path(self.schema, field, limit)
        if limit == 0:
            return []
        with self._mutex, self._errors("facet"):
            where, params = self._within(filter, "iid")
            try:
                rows = self.db.conn.execute(
                    f"SELECT text, COUNT(DISTINCT iid) AS n FROM fields WHERE field = ? AND kind = {STRING}"
                    f"{where} GROUP BY text ORDER BY n DESC, text LIMIT ?",
                    [field, *params, limit],
                ).fetchall()
            finally:
                self.db.clear_pending()
        return facet_order(dict(rows), limit)

    # --- rankings: limit -> the best `limit` hits, equal scores by id ------------------------

    def _page(self, ranking: Callable[[int], list[Hit]], plan: SearchPlan) -> list[Hit]:
        def fetch(limit: int) -> list[Hit]:
            return at_least(ranking(limit), plan.min_score)

        if plan.group_path is not None:
            return grouped_page(fetch, plan.group_path, plan.k, plan.offset)
        return ranked_page(fetch, plan.k, plan.offset)

    def _vector_ranking(
        self, spec: VectorSpec, query: np.ndarray, store_filter: Filter | None, scale: float = 1.0
    ) -> Callable[[int], list[Hit]]:
        def ranking(limit: int) -> list[Hit]:
            index = self._indexes[spec.name]
            source = self.db.vectors_from(spec.storage_key)
            rows: dict[int, tuple[str, dict[str, Any]]] = {}
            if store_filter is None or store_filter.is_empty():
                found = index.nearest(query, limit)
            else:
                found = self._post_filtered(index, source, query, limit, store_filter, rows)
            if found is None:  # a filter that keeps few points: searched among just those
                assert store_filter is not None
                vids = self._filtered_vids(spec, store_filter)
                if len(vids) <= max(self.config.exact_max, self.config.exact_fraction * index.live):
                    vectors = index.stored_vectors(vids)
                    if vectors is None:
                        vectors = index.source.vectors_for(vids)
                    found = exact_nearest(vids, vectors, query, limit)
                else:
                    found = index.nearest_among(query, limit, vids)
            rows.update(self._hit_rows(source, [vid for vid, _ in found if vid not in rows]))
            hits = [Hit(rows[vid][0], score * scale, rows[vid][1]) for vid, score in found if vid in rows]
            return sorted(hits, key=lambda h: (-h.score, h.id))[:limit]

        return ranking

    def _hit_rows(self, source: str, vids: list[int]) -> dict[int, tuple[str, dict[str, Any]]]:
        """vid -> (point id, payload) of the live points among `vids`."""
        return {vid: (uuid, json.loads(text)) for vid, (uuid, text) in self._hit_texts(source, vids).items()}

    def _hit_texts(self, source: str, vids: list[int]) -> dict[int, tuple[str, str]]:
        """vid -> (point id, payload JSON) of the live points among `vids`."""
        return {
            vid: (uuid, text)
            for vid, uuid, text in self.db.select_in(
                f"SELECT v.vid, p.uuid, p.payload FROM {source} v JOIN points p ON p.iid = v.iid"
                " WHERE v.vid IN ({})",
                vids,
            )
        }

    def _post_filtered(
        self, index: Any, source: str, query: np.ndarray, limit: int, store_filter: Filter,
        rows: dict[int, tuple[str, dict[str, Any]]],
    ) -> list[tuple[int, float]] | None:
        """The best `limit` that pass, from unfiltered searches read deeper while the pass rate seen
        says it pays (index.py, `post_filter_factor`); None when the filtered path should run.
        Exact for what the index ranks: `nearest` returns every vector tied with its last one, so
        once `limit` of its results pass, no vector it left out can rank above any of them (the
        filter is the reference `matches`, which the SQL prefilter agrees with). `rows` gets the
        rows read."""
        cfg = self.config
        goal = min(limit, index.live)
        if goal <= 0 or _names_vectors(store_filter):  # has_vector needs each point's vectors
            return None
        if not self._keeps_at_least(store_filter, min(cfg.post_filter_probe,
                                                      math.ceil(cfg.post_filter_min_share * index.live))):
            return None
        fetch = math.ceil(goal * cfg.post_filter_factor)
        texts: dict[int, tuple[str, str]] = {}  # vid -> (point id, payload JSON), parsed when checked
        passes: dict[int, bool] = {}
        while fetch <= cfg.post_filter_max:
            found = index.nearest(query, fetch)
            texts.update(self._hit_texts(source, [vid for vid, _ in found if vid not in texts]))
            passing: list[tuple[int, float]] = []
            for vid, score in found:  # best first: stop once `limit` pass and the ties with the last
                if len(passing) >= goal and score < passing[-1][1]:
                    break
                if vid not in passes:
                    row = texts.get(vid)
                    if row is not None:
                        rows[vid] = (row[0], json.loads(row[1]))
                    passes[vid] = row is not None and matches(store_filter, *rows[vid])
                if passes[vid]:
                    passing.append((vid, score))
            if len(passing) >= goal or len(found) >= index.live:
                return passing
            if not passing:
                return None
            fetch = max(2 * fetch, math.ceil(2 * goal * len(found) / len(passing)))
        return None

    def _keeps_at_least(self, store_filter: Filter, count: int) -> bool:
        """Whether at least `count` points pass; reads that many rows at most."""
        if count <= 0:
            return True
        sql, params = self._compiled(store_filter)
        try:
            found = self.db.conn.execute(f"SELECT COUNT(*) FROM (SELECT 1 FROM ({sql}) LIMIT ?)",
                                         [*params, count]).fetchone()[0]
        finally:
            self.db.clear_pending()
        return bool(found >= count)

    def _within(self, store_filter: Filter | None, column: str) -> tuple[str, list[Any]]:
        """` AND <column> IN (<the filter's SELECT of iids>)` and its parameters; nothing without one."""
        if store_filter is None or store_filter.is_empty():
            return "", []
        sql, params = self._compiled(store_filter)
        return f" AND {column} IN ({sql})", params

    def _keyword_ranking(self, match: str | None, store_filter: Filter | None) -> Callable[[int], list[Hit]]:
        def ranking(limit: int) -> list[Hit]:
            if match is None:  # no terms: nothing matches
                return []
            where, params = self._within(store_filter, "rowid")
            try:
                scored = self.db.conn.execute(
                    f"SELECT rowid, -bm25(keyword) FROM keyword WHERE keyword MATCH ?{where}"
                    " ORDER BY bm25(keyword) LIMIT ?",
                    [match, *params, limit],
                ).fetchall()
            finally:
                self.db.clear_pending()
            rows = {
                iid: (uuid, payload)
                for iid, uuid, payload in self.db.select_in(
                    "SELECT iid, uuid, payload FROM points WHERE iid IN ({})", [r[0] for r in scored]
                )
            }
            hits = [Hit(rows[i][0], float(s), json.loads(rows[i][1])) for i, s in scored if i in rows]
            return sorted(hits, key=lambda h: (-h.score, h.id))

        return ranking

    def _hybrid_ranking(
        self, spec: VectorSpec, query: np.ndarray, match: str | None, store_filter: Filter | None,
        candidates: int,
    ) -> Callable[[int], list[Hit]]:
        # Each ranking cut at `candidates` (the keyword one also at KEYWORD_CUT of its best score),
        # then fused: the fused ranking does not depend on the page.
        vector_hits = ranked_page(self._vector_ranking(spec, query, store_filter), candidates, 0)
        keyword_hits = ranked_page(self._keyword_ranking(match, store_filter), candidates, 0) if match else []
        if keyword_hits:
            cut = KEYWORD_CUT * keyword_hits[0].score
            keyword_hits = [h for h in keyword_hits if h.score >= cut]
        payloads = {h.id: h.payload for h in [*vector_hits, *keyword_hits]}
        scores = fuse([[h.id for h in vector_hits], [h.id for h in keyword_hits]])
        fused = sorted((Hit(i, s, payloads[i]) for i, s in scores.items()), key=lambda h: (-h.score, h.id))
        return lambda limit: fused[:limit]

    def _mmr(
        self, spec: VectorSpec, query: np.ndarray, store_filter: Filter | None, plan: SearchPlan
    ) -> list[Hit]:
        assert plan.lambda_ is not None
        fetch = self._vector_ranking(spec, query, store_filter)
        candidates = ranked_page(lambda n: at_least(fetch(n), plan.min_score), plan.mmr_candidates, 0)
        if not candidates:
            return []
        records = {r.id: r for r in self.retrieve([h.id for h in candidates], with_vectors=[spec.name])}
        vectors = np.stack([records[h.id].vectors[spec.name] for h in candidates])
        order = mmr_order(np.array([h.score for h in candidates]), vectors, plan.lambda_, plan.want)
        return [candidates[i] for i in order][plan.offset : plan.want]


def mmr_order(relevance: np.ndarray, vectors: np.ndarray, lambda_: float, limit: int) -> list[int]:
    """Qdrant's MMR selection over candidates given best first: the most relevant, then each time
    the candidate maximising lambda_ * relevance - (1 - lambda_) * (max similarity to those chosen).
    Ties resolve as in Qdrant: the pending list shrinks by swap-remove and the last maximum wins."""
    similarity = vectors @ vectors.T
    pending = list(range(len(relevance)))
    chosen = [_swap_remove(pending, _last_argmax([relevance[i] for i in pending]))]
    closest = similarity[chosen[0]].copy()  # each candidate's max similarity to the chosen ones
    while len(chosen) < limit and pending:
        scores = [lambda_ * relevance[i] - (1.0 - lambda_) * closest[i] for i in pending]
        pick = _swap_remove(pending, _last_argmax(scores))
        chosen.append(pick)
        closest = np.maximum(closest, similarity[pick])
    return chosen


def _last_argmax(values: Sequence[float]) -> int:
    best = 0
    for position, value in enumerate(values):
        if value >= values[best]:
            best = position
    return best


def _swap_remove(items: list[int], position: int) -> int:
    items[position], items[-1] = items[-1], items[position]
    return items.pop()


def _names_vectors(store_filter: Filter) -> bool:
    """Whether a has_vector condition appears anywhere in the filter."""
    return any(
        isinstance(c, HasVectorCondition) or (isinstance(c, Filter) and _names_vectors(c))
        for c in (*store_filter.must, *store_filter.should, *store_filter.must_not)
    )
