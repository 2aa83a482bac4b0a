"""The options every search takes besides its query, in one value carried from the edge (the CLI's
flags, an HTTP body, a Python call) to the engine."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from indexer.stores.base import StoreSearch
from indexer.stores.filters import Filter

FACET_LIMIT = 10  # values per facet when a query does not say


@dataclass(frozen=True)
class SearchOptions:
    """filter: a query filter (field names; stores.filters); vector: the named vector (default: the
    active one); offset: skip the best `offset` (stable pages); mode: vector | keyword | hybrid (default:
    hybrid when the collection declares text fields and the query has a text, else vector); text: the
    words of a keyword or hybrid ranking (default: the query's texts of positive weight); min_score,
    group_by, diversity (MMR, 0-1): as in VectorStore.search; facets: keyword fields to count under the
    filter, facet_limit values each."""

    filter: Filter | dict[str, Any] | None = None
    vector: str | None = None
    offset: int = 0
    mode: str | None = None
    text: str | None = None
    min_score: float | None = None
    group_by: str | None = None
    diversity: float | None = None
    facets: tuple[str, ...] = ()
    facet_limit: int = FACET_LIMIT

    def for_store(self, using: str, filter: Filter | None, mode: str, text: str | None) -> StoreSearch:
        """The store's part (VectorStore.search): the engine gives the vector's name, the filter resolved
        against the schema, the mode it chose and the words of a keyword or hybrid ranking."""
        return StoreSearch(using=using, filter=filter, offset=self.offset, mode=mode,  # type: ignore[arg-type]
                           text=text if mode != "vector" else None, min_score=self.min_score,
                           group_by=self.group_by, diversity=self.diversity)

    def ranking_options(self) -> list[str]:
        """The options given that rank a query (refused where there is none to rank: a browse)."""
        given = {"mode": self.mode, "text": self.text, "min_score": self.min_score, "group_by": self.group_by,
                 "diversity": self.diversity}
        return [name for name, value in given.items() if value is not None]

    def to_json(self) -> dict[str, Any]:
        """The fields of an HTTP search body (/v1/search) that differ from the defaults."""
        data = {k: v for k, v in asdict(self).items() if v not in (None, ())}
        if isinstance(self.filter, Filter):
            data["filter"] = self.filter.to_json()
        data["facets"] = list(self.facets)
        return data


def combined_filter(where: str | Sequence[str] | None, filter: Filter | dict[str, Any] | None,
                    fields: dict[str, str] | None = None) -> dict[str, Any] | None:
    """The query filter of `where` expressions (the --where grammar, ANDed) and a filter in the API's
    JSON shape, together; None for neither. `fields`: the declared fields, to check names early."""
    from indexer.search.where import where_filter

    expressions = [where] if isinstance(where, str) else list(where or [])
    parsed = where_filter(expressions, fields=fields) if expressions else None
    given = Filter.parse(filter)
    parts = [f.to_json() for f in (parsed, given) if f is not None and not f.is_empty()]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else {"must": parts}
