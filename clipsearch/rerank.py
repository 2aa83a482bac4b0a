"""`clipsearch search --rerank/--explain`: the VLM stage over a search's hits, in this process with the
library's `Vlm`, or asked of the server that holds the collection (which uses its own VLM settings).
Either way the answer has the API's shape (search_api.vlm): the results with `vlm_score`,
`explanation` and `rerank` per hit, and the re-rank's summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from indexer.settings import Settings

if TYPE_CHECKING:  # imported when used: `clipsearch --help` and plain searches stay light
    from indexer.search.engine import Result
    from indexer.vlm import Query

MAX_TOP_N = 100  # as the API allows


@dataclass(frozen=True)
class VlmFlags:
    rerank: bool
    top_n: int | None
    mode: str | None
    explain: bool

    @property
    def asked(self) -> bool:
        return self.rerank or self.explain

    def window(self, k: int, settings: Settings) -> int:
        """Hits to fetch: max(k, top_n) when re-ranking (hits below k may move up)."""
        return max(k, self.top_n or settings.vlm.top_n) if self.rerank else k

    def json_fields(self) -> dict[str, Any]:
        """For /v1/search."""
        fields: dict[str, Any] = {"explain": self.explain}
        if self.rerank:
            fields["rerank"] = {"top_n": self.top_n, "mode": self.mode}
        return fields

    def form_fields(self) -> dict[str, str]:
        """For /v1/search/image (multipart)."""
        fields = {"rerank": str(self.rerank).lower(), "explain": str(self.explain).lower()}
        if self.top_n:
            fields["top_n"] = str(self.top_n)
        if self.mode:
            fields["mode"] = self.mode
        return fields


def vlm_options(command: Any) -> Any:
    """--rerank, --top-n, --mode, --explain."""
    for option in reversed((
        click.option("--rerank", is_flag=True, help="Re-rank the best hits with the vision-language model "
                     "(CLIPSEARCH_VLM_URL; docs/vlm.md). Whatever the VLM does, the hits come back, in the "
                     "search's order where it could not judge them."),
        click.option("--top-n", type=click.IntRange(1, MAX_TOP_N), default=None,
                     help="Hits the VLM re-ranks and explains [default: CLIPSEARCH_VLM_TOP_N, 20]."),
        click.option("--mode", type=click.Choice(["pointwise", "listwise"]), default=None,
                     help="Re-rank each hit in its own request, or all in one "
                     "[default: CLIPSEARCH_VLM_MODE]."),
        click.option("--explain", is_flag=True, help="Say why each of the first top-n hits matches (VLM)."),
    )):
        command = option(command)
    return command


@dataclass(frozen=True)
class ItemLabels:
    """What names an item in text output: its id field's value (a catalog's id column, or the write
    API's item_id) and its title (a text column: `title` or `name` first), and `price` when present."""

    id_fields: tuple[str, ...] = ()
    title_fields: tuple[str, ...] = ()

    @classmethod
    def of(cls, status: dict[str, Any]) -> ItemLabels:
        """From a collection's status (`fields`, `searchable`, `id_fields`)."""
        ids = tuple(status.get("id_fields") or ())
        fields, searchable = status.get("fields") or {}, set(status.get("searchable") or ())
        texts = [n for n in sorted(fields) if n not in ids and (fields[n] == "text" or n in searchable)]
        preferred = [n for n in ("title", "name") if n in texts]
        return cls((*ids, "item_id"), tuple(dict.fromkeys([*preferred, *texts])))

    def columns(self, metadata: dict[str, Any]) -> list[str]:
        found = [next((str(metadata[n]) for n in fields if metadata.get(n) not in (None, "")), None)
                 for fields in (self.id_fields, self.title_fields)]
        if metadata.get("price") is not None:
            found.append(f"price {metadata['price']}")
        return [" ".join(v.split()) for v in found if v is not None]


def apply_locally(settings: Settings, flags: VlmFlags, query: Query, results: Sequence[Result],
                  paths: dict[str, str | None], k: int) -> dict[str, Any]:
    """{"results", "rerank"} as the API answers them, with a VLM stage of this process."""
    from indexer.vlm import Vlm
    from search_api.schemas import RerankOptions
    from search_api.vlm import VlmAsk, run

    options = None
    if flags.rerank:
        options = RerankOptions.model_validate({"top_n": flags.top_n, "mode": flags.mode})
    ask = VlmAsk.of(options, flags.explain, settings)
    with Vlm(settings) as vlm:
        answer = run(vlm, ask, query, results, paths.get, k)
    return {"results": [row.model_dump() for row in answer.results],
            "rerank": answer.rerank.model_dump() if answer.rerank else None}


def print_results(answer: dict[str, Any], flags: VlmFlags, labels: ItemLabels | None = None) -> None:
    """score ("-" in a browse), the VLM's score (re-ranking), then for catalog items the id, the title
    and the price when there are any, then the path; each explanation indented below its hit. A
    re-rank that did not fully work is said on stderr: the hits are still all there."""
    browse = answer.get("mode") == "browse"
    for row in answer["results"]:
        vlm = row.get("vlm_score")
        columns = ["-" if browse else f"{row['score']:.4f}"]
        if flags.rerank:
            columns.append(f"{vlm:4.1f}" if vlm is not None else "   -")
        columns += labels.columns(row.get("metadata") or {}) if labels else []
        click.echo("\t".join([*columns, row["uri"]]))
        if flags.explain and row.get("explanation"):
            click.echo(f"    {' '.join(row['explanation'].split())}")
    summary = answer.get("rerank")
    if summary and summary["status"] != "ok":
        click.echo(f"warning: re-rank {summary['status']}: {summary['reason']}", err=True)
    if flags.explain and not any(row.get("explanation") for row in answer["results"]):
        click.echo("warning: no explanations: is the VLM up? (`clipsearch` reads CLIPSEARCH_VLM_URL; "
                   "a server uses its own)", err=True)
