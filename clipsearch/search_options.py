"""The `search` command's query and search options: query algebra terms, --where/--near filters,
--search-mode, --min-score, --group-by, --diversity, --offset, --facet, --like/--unlike; run on an
engine of this process, or turned into the request a server that holds the collection answers."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import click

from indexer.errors import BadInput
from indexer.search.options import SearchOptions
from indexer.search.query import Term, keyword_text, parse_terms
from indexer.search.where import where_filter
from indexer.stores.filters import Filter

WHERE_HELP = (
    "Filter on metadata fields, repeatable (ANDed): 'category = shoes', 'brand != acme', 'price < 50' "
    "(also <=, >, >=), 'taken >= 2019-06-01', 'brand in (acme, zenith)', 'brand not in (x, y)', "
    "'brand is empty', 'brand is not empty'; quote values holding spaces: 'title = \"red dress\"'. "
    "See docs/search.md."
)


def search_options(command: Any) -> Any:
    """The options `search_request` reads."""
    for option in reversed((
        click.option("--where", "where", multiple=True, metavar="EXPR", help=WHERE_HELP),
        click.option("--near", default=None, metavar="LAT,LON,KM",
                     help="Only items within KM kilometres of LAT,LON (on the collection's geo field)."),
        click.option("--near-field", default=None, metavar="FIELD",
                     help="The geo field --near uses, when the collection has several."),
        click.option("--search-mode", type=click.Choice(["vector", "keyword", "hybrid"]), default=None,
                     help="vector (CLIP), keyword (BM25 over the text fields) or hybrid (both, fused) "
                     "[default: hybrid when the collection has text fields and the query has words]."),
        click.option("--min-score", type=float, default=None, help="Only hits scoring at least this."),
        click.option("--group-by", default=None, metavar="FIELD",
                     help="One hit per value of a keyword field, e.g. a catalog's id column (sku)."),
        click.option("--diversity", type=click.FloatRange(0, 1), default=None,
                     help="MMR diversity, 0-1 (vector mode): trade similarity for variety."),
        click.option("--offset", type=click.IntRange(0, 100_000), default=0, show_default=True,
                     help="Skip this many of the best results (pages: --offset 10 -k 10 is page 2)."),
        click.option("--facet", "facets", multiple=True, metavar="FIELD",
                     help="Count the values of a keyword field among the filtered items (repeatable)."),
        click.option("--sort", default=None, metavar="FIELD",
                     help="Browse without a QUERY: the items that pass --where, ordered by FIELD "
                     "(-FIELD or FIELD:desc: falling) [default: by id]."),
        click.option("--like", "like", multiple=True, metavar="ID",
                     help="More like this indexed item (repeatable); instead of a QUERY."),
        click.option("--unlike", "unlike", multiple=True, metavar="ID",
                     help="With --like: less like this indexed item (repeatable)."),
    )):
        command = option(command)
    return command


@dataclass
class SearchAsk:
    """What `clipsearch search` was asked, checked."""

    terms: list[Term]
    like: list[str]
    unlike: list[str]
    where: list[str]
    near: str | None
    near_field: str | None
    # mode, min_score, group_by, diversity, offset, facets (the filter and vector come later)
    options: SearchOptions = field(default_factory=SearchOptions)
    sort: str | None = None  # a browse (no query) ordered by this field

    @classmethod
    def from_flags(cls, query: tuple[str, ...], image: Path | None, flags: dict[str, Any]) -> SearchAsk:
        terms = parse_terms(list(query))
        if image is not None:
            terms.append(Term(image=image.resolve()))
        like, unlike = list(flags.pop("like")), list(flags.pop("unlike"))
        sort = flags.pop("sort")
        browse = not terms and not like and (sort is not None or bool(flags.get("where")) or
                                             flags.get("near") is not None)
        if sort is not None and (terms or like):
            raise click.UsageError("--sort orders a browse: give --where and --sort without a QUERY")
        if browse:
            asked = [f"--{n.replace('_', '-')}" for n in ("search_mode", "min_score", "group_by", "diversity")
                     if flags.get(n) is not None]
            if asked:
                raise click.UsageError(f"{', '.join(asked)} rank a query: a browse (no QUERY) takes --where, "
                                       f"--sort, --offset, --facet and -k")
        elif bool(terms) == bool(like):
            raise click.UsageError("give a QUERY (or --image), or --like ID, but not both; or --where and "
                                   "--sort alone to browse")
        if unlike and not like:
            raise click.UsageError("--unlike goes with --like (more like these, less like those)")
        if like and (flags.get("search_mode") not in (None, "vector") or flags.get("diversity") is not None):
            raise click.UsageError("--like/--unlike rank by vector: no --search-mode keyword or hybrid, "
                                   "no --diversity")
        where, near, near_field = list(flags.pop("where")), flags.pop("near"), flags.pop("near_field")
        options = SearchOptions(mode=flags.pop("search_mode"), min_score=flags.pop("min_score"),
                                group_by=flags.pop("group_by"), diversity=flags.pop("diversity"),
                                offset=flags.pop("offset"), facets=tuple(flags.pop("facets")))
        return cls(terms, like, unlike, where, near, near_field, options, sort)

    @property
    def browse(self) -> bool:
        """No query: the filtered items, ordered by --sort."""
        return not self.terms and not self.like

    @property
    def filtered(self) -> bool:
        return bool(self.where) or self.near is not None

    def filter(self, fields: dict[str, str] | None) -> Filter | None:
        return where_filter(self.where, self.near, self.near_field, fields)

    def run(self, engine: Any, k: int, vector: str | None) -> Any:
        """The search on an engine of this process: a SearchOutcome."""
        options = replace(self.options, filter=self.filter(dict(engine.schema.fields)), vector=vector)
        if self.browse:
            return engine.browse(k, SearchOptions(filter=options.filter, offset=options.offset,
                                                  facets=options.facets), sort=self.sort)
        if self.like:
            return engine.recommend(self.like, self.unlike, k, options)
        return engine.search_query(self.terms, k, options)

    def vlm_query(self, image_of: Callable[[str], Any]) -> Any:
        """What the VLM is told the search was for: the words, else the first example image
        (`image_of(id)`: an indexed item's file)."""
        from indexer.vlm import Query

        words = keyword_text(self.terms)
        if words:
            return Query(text=words)
        image = next((t.image for t in self.terms if t.image is not None), None)
        if image is not None:
            return Query(image=image)
        first = self.like[0] if self.like else next(t.image_id for t in self.terms if t.image_id is not None)
        return Query(image=image_of(first))

    def request(self, fields: Callable[[], dict[str, str]], k: int, name: str, vector: str | None
                ) -> tuple[str, dict[str, Any]]:
        """(path, keyword arguments of httpx.request) for a server; `fields` gives the collection's
        declared fields (asked only when there is a filter, to check it here)."""
        query_filter = self.filter(fields()) if self.filtered else None
        options = replace(self.options, filter=query_filter, vector=vector).to_json()
        body: dict[str, Any] = {"k": k, "collection": name, **{n: v for n, v in options.items() if v != []}}
        if self.browse:
            kept = ("k", "collection", "offset", "facets", "filter")
            return "/v1/browse", {"json": {**{n: body[n] for n in kept if n in body}, "sort": self.sort}}
        if self.like:
            body.update({"positive": self.like, **({"negative": self.unlike} if self.unlike else {})})
            return "/v1/search", {"json": body}
        files = [t for t in self.terms if t.image is not None]
        others = [_term_json(t) for t in self.terms if t.image is None]
        if not files:
            if len(others) == 1 and others[0].get("weight", 1.0) == 1.0 and "text" in others[0]:
                body["text"] = others[0]["text"]
            elif len(others) == 1 and others[0].get("weight", 1.0) == 1.0:
                body["image_id"] = others[0]["image_id"]
            else:
                body["query"] = others
            return "/v1/search", {"json": {k_: v for k_, v in body.items() if v is not None}}
        if len(files) > 1:
            raise BadInput("through a server, a query holds at most one image file (the server reads it as "
                           "an upload); stop `clipsearch serve` to search here, or use image:ID terms")
        form = _form(body)
        form["weight"] = str(files[0].weight)
        if others:
            form["query"] = json.dumps(others)
        path = Path(str(files[0].image))
        return "/v1/search/image", {"data": form, "files": {"file": (path.name, path.read_bytes())}}


def _term_json(term: Term) -> dict[str, Any]:
    kind = {"text": term.text} if term.text is not None else {"image_id": term.image_id}
    return {**kind, **({"weight": term.weight} if term.weight != 1.0 else {})}


def _form(body: dict[str, Any]) -> dict[str, str]:
    """The JSON body's options as /v1/search/image's form fields."""
    renamed = {"mode": "search_mode"}
    form = {}
    for name, value in body.items():
        if value is None:
            continue
        if name == "facets":
            form[name] = ",".join(value)
        elif name == "filter":
            form[name] = json.dumps(value)
        else:
            form[renamed.get(name, name)] = str(value)
    return form


def facets_json(facets: dict[str, list[tuple[str, int]]]) -> dict[str, list[dict[str, Any]]] | None:
    """An outcome's facets as the API answers them."""
    if not facets:
        return None
    return {name: [{"value": v, "count": n} for v, n in counts] for name, counts in facets.items()}


def print_facets(facets: dict[str, list[dict[str, Any]]] | None) -> None:
    for name, counts in (facets or {}).items():
        click.echo(f"{name}: " + ", ".join(f"{c['value']} ({c['count']})" for c in counts))
