"""`clipsearch.connect`: the Collection interface (indexer.collection.CollectionAPI) over HTTP.

Every method is one or a few requests to a `clipsearch serve`; the answers become the same dataclasses
(indexer.results) a local Collection returns, and the server's errors the same error classes, of the
kind its status says (indexer.errors.error_for_status). Files move as the methods say: a folder
export and a snapshot come down as archives, a restore's archive goes up, eval sends its dataset's
paths and labels (the server reads no client path); indexing folders other than the server's --watch
ones is refused with what to do instead.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from indexer.collection import (
    DEFAULT_THRESHOLD,
    HASH_DISTANCE,
    ImageLike,
    QueryTerms,
    image_bytes,
    query_terms,
)
from indexer.durable import write_atomic
from indexer.errors import BadInput, Conflict, Unavailable, error_for_status
from indexer.ingest.progress import IndexProgress
from indexer.results import (
    Classified,
    Clusters,
    Duplicates,
    Exported,
    IndexReport,
    Item,
    ItemWritten,
    LabelCounts,
    LabelRun,
    LabelScore,
    Outliers,
    ReviewItem,
    ReviewPage,
    SearchResults,
    Status,
    Transfer,
    Vectors,
)
from indexer.search.options import FACET_LIMIT, SearchOptions, combined_filter

TIMEOUT_S = 120.0
UPLOAD_BLOCK = 1024 * 1024
REEMBED_POLL_S = 0.5
# A request refused as busy (503 with Retry-After) is sent again up to this many times, after waiting
# what the server asked (at most BUSY_WAIT_MAX_S each time); then the error, with its retry_after_s.
BUSY_RETRIES = 2
BUSY_WAIT_MAX_S = 30


class RemoteCollection:
    """A collection behind a clipsearch server. `key`: an API key (X-API-Key)."""

    def __init__(self, url: str, name: str | None = None, key: str | None = None,
                 timeout: float = TIMEOUT_S, http: httpx.Client | None = None) -> None:
        self.url = url.rstrip("/")
        self._http = http or httpx.Client(base_url=self.url, timeout=timeout,
                                          headers={"X-API-Key": key} if key else {})
        self.name = name or self._default_name()

    def _default_name(self) -> str:
        found = self._request("GET", "/v1/collections")["collections"]
        default = next((c["name"] for c in found if c.get("default")), None)
        if default is None:
            raise BadInput(f"the server at {self.url} has no default collection yet: name one, "
                           "clipsearch.connect(url, collection=NAME)")
        return str(default)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RemoteCollection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RemoteCollection({self.name!r}, url={self.url!r})"

    # --- indexing ------------------------------------------------------------------------------

    def index(self, sources: Sequence[str | Path], *, id_column: str | None = None,
              image_columns: Sequence[str] = (), text_columns: str | Sequence[str] | None = None,
              fields: dict[str, str] | None = None,
              progress: bool | Callable[[IndexProgress], None] = False) -> IndexReport:
        """Asks the server to bring its --watch folders in line now; sources must be among them. A
        `progress` function is called once, when the server's sync has ended (stage "done")."""
        from indexer.ingest.catalog import is_catalog

        if isinstance(sources, (str, Path)):
            sources = [sources]
        catalogs = [str(s) for s in sources if is_catalog(s)]
        if catalogs:
            raise Conflict(f"the server holds collection {self.name!r} and indexes its --watch folders only, "
                           f"not catalogs like {catalogs[0]}: stop it to index catalogs into it")
        body = {"sources": [str(Path(s).absolute()) for s in sources]}  # as the server names its folders
        report = IndexReport.from_json(self._post(f"{self._base}/sync", json=body))
        if callable(progress):
            images = report.embedded + report.failed
            progress(IndexProgress("done", "", images, images, report.embedded, report.failed))
        return report

    # --- search --------------------------------------------------------------------------------

    def search(self, text: str | None = None, *, image: ImageLike | None = None, like: str | None = None,
               query: QueryTerms | None = None, k: int = 10, where: str | Sequence[str] | None = None,
               filter: dict[str, Any] | None = None, mode: str | None = None, keywords: str | None = None,
               offset: int = 0, min_score: float | None = None, facets: Sequence[str] = (),
               facet_limit: int = FACET_LIMIT, group_by: str | None = None, diversity: float | None = None,
               vector: str | None = None) -> SearchResults:
        terms = query_terms(text, image, like, query)  # checked here as locally: one kind of query
        options = self._options(where, filter, vector=vector, offset=offset, mode=mode, text=keywords,
                                min_score=min_score, group_by=group_by, diversity=diversity,
                                facets=tuple(facets), facet_limit=facet_limit)
        pictures = [t for t in terms if t.image is not None]
        if pictures:  # an example image (image=, or an image term of a query) goes up as the upload
            if len(pictures) > 1:
                raise BadInput("through a server, a query holds at most one image file or bytes (the "
                               "upload): give the others as indexed items ({'image_id': ID})")
            form = {k: v if isinstance(v, str) else json.dumps(v) for k, v in options.to_json().items()
                    if k not in ("mode", "facets")}
            form.update(collection=self.name, k=str(k))
            if options.mode:
                form["search_mode"] = options.mode
            if options.facets:
                form["facets"] = ",".join(options.facets)
            others = [_term_json(t) for t in terms if t.image is None]
            if others:
                form.update(weight=str(pictures[0].weight), query=json.dumps(others))
            upload = image_bytes(pictures[0].image)
            answer = self._post("/v1/search/image", data=form,
                                files={"file": ("image", upload, "application/octet-stream")})
            return SearchResults.from_json(answer)
        if keywords is not None and keywords != text:
            raise BadInput("through a server, keywords= goes with image= (a JSON search ranks keywords by "
                           "its text): search by text=, or by image= with keywords=")
        body: dict[str, Any] = {**options.to_json(), "collection": self.name, "k": k}
        body.pop("text", None)
        if text is not None:
            body["text"] = text
        elif like is not None:
            body["image_id"] = like
        else:
            body["query"] = [{key: value for key, value in (("text", t.text), ("image_id", t.image_id),
                                                           ("weight", t.weight)) if value is not None}
                             for t in terms]
        return SearchResults.from_json(self._post("/v1/search", json=body))

    def recommend(self, positive: Sequence[str], negative: Sequence[str] = (), *, k: int = 10,
                  where: str | Sequence[str] | None = None, filter: dict[str, Any] | None = None,
                  offset: int = 0, min_score: float | None = None, facets: Sequence[str] = (),
                  facet_limit: int = FACET_LIMIT, group_by: str | None = None,
                  vector: str | None = None) -> SearchResults:
        if isinstance(positive, str) or isinstance(negative, str):
            raise BadInput("positive and negative are lists of item ids")
        options = self._options(where, filter, vector=vector, offset=offset, min_score=min_score,
                                group_by=group_by, facets=tuple(facets), facet_limit=facet_limit)
        body = {**options.to_json(), "collection": self.name, "k": k, "positive": list(positive),
                **({"negative": list(negative)} if negative else {})}
        return SearchResults.from_json(self._post("/v1/search", json=body))

    def browse(self, k: int = 10, *, where: str | Sequence[str] | None = None,
               filter: dict[str, Any] | None = None, sort: str | None = None, offset: int = 0,
               facets: Sequence[str] = (), facet_limit: int = FACET_LIMIT) -> SearchResults:
        body = {"collection": self.name, "k": k, "offset": offset, "filter": self._filter(where, filter),
                "sort": sort, "facets": list(facets), "facet_limit": facet_limit}
        return SearchResults.from_json(self._post("/v1/browse", json={k_: v for k_, v in body.items()
                                                                       if v is not None}))

    def classify(self, images: Sequence[ImageLike], labels: Sequence[str]) -> list[Classified]:
        names = labels if isinstance(labels, str) else ",".join(labels)
        found = []
        for image in images:
            answer = self._post("/v1/classify", data={"labels": names, "collection": self.name},
                                files={"file": ("image", image_bytes(image), "application/octet-stream")})
            found.append(Classified([LabelScore(x["label"], float(x["score"])) for x in answer["labels"]]))
        return found

    # --- items ---------------------------------------------------------------------------------

    def get_item(self, id: str) -> Item:
        return Item.from_json(self._request("GET", f"{self._base}/items/{_segment(id)}"))

    def put_item(self, id: str, image: ImageLike | None = None, *, image_url: str | None = None,
                 metadata: dict[str, Any] | None = None,
                 text: str | dict[str, str] | None = None) -> ItemWritten:
        path = f"{self._base}/items/{_segment(id)}"
        if image is not None:
            form = {"metadata": json.dumps(metadata)} if metadata is not None else {}
            if text is not None:
                form["text"] = text if isinstance(text, str) else json.dumps(text)
            answer = self._request("PUT", path, data=form,
                                   files={"file": ("image", image_bytes(image), "application/octet-stream")})
        else:
            body = {"image_url": image_url, "metadata": metadata, "text": text}
            answer = self._request("PUT", path, json={k: v for k, v in body.items() if v is not None})
        return ItemWritten.from_json(answer)

    def patch_item(self, id: str, metadata: dict[str, Any] | None = None,
                   text: str | dict[str, str] | None = None) -> ItemWritten:
        body = {"metadata": metadata or {}, **({"text": text} if text is not None else {})}
        return ItemWritten.from_json(self._request("PATCH", f"{self._base}/items/{_segment(id)}", json=body))

    def delete_item(self, id: str) -> ItemWritten:
        return ItemWritten.from_json(self._request("DELETE", f"{self._base}/items/{_segment(id)}"))

    # --- labels --------------------------------------------------------------------------------

    def label(self, labels: str | Sequence[str], *, run: str = "label", top_k: int = 3,
              threshold: float = 0.0, templates: str | Sequence[str] | None = None,
              where: str | Sequence[str] | None = None, filter: dict[str, Any] | None = None,
              vector: str | None = None) -> LabelRun:
        from indexer.curation.labels import load_labels

        names = load_labels(labels) if isinstance(labels, str) else list(labels)
        body = {"labels": names, "run": run, "top_k": top_k, "threshold": threshold,
                "templates": _templates(templates), "filter": self._filter(where, filter), "vector": vector}
        return LabelRun.from_json(self._post(f"{self._base}/labels", json=body))

    def label_runs(self) -> dict[str, dict[str, Any]]:
        runs = self._request("GET", f"{self._base}/labels")["runs"]
        return {run.pop("run"): run for run in runs}

    def label_counts(self, run: str = "label") -> LabelCounts:
        return LabelCounts.from_json(self._request("GET", f"{self._base}/labels/{_segment(run)}"))

    def review_items(self, run: str, label: str, *, pending: bool = False, offset: int = 0,
                     limit: int = 48) -> ReviewPage:
        params = {"label": label, "pending": str(pending).lower(), "offset": offset, "limit": limit}
        return ReviewPage.from_json(self._request("GET", f"{self._base}/labels/{_segment(run)}/items",
                                                  params=params))

    def review(self, run: str, ids: Sequence[str], action: str, label: str | None = None) -> list[ReviewItem]:
        body = {"ids": list(ids), "action": action, **({"label": label} if label is not None else {})}
        answer = self._post(f"{self._base}/labels/{_segment(run)}/review", json=body)
        return [ReviewItem.from_json(item) for item in answer["items"]]

    # --- curation ------------------------------------------------------------------------------

    def duplicates(self, *, threshold: float = DEFAULT_THRESHOLD, hash_distance: int = HASH_DISTANCE,
                   vector: str | None = None) -> Duplicates:
        params = _params(threshold=threshold, hash_distance=hash_distance, vector=vector)
        return Duplicates.from_json(self._request("GET", f"{self._base}/duplicates", params=params))

    def clusters(self, k: int = 20, *, central: int = 6, seed: int = 0, vector: str | None = None,
                 store: bool = False, neighbours: int = 10) -> Clusters:
        if store:
            raise Conflict("storing clusters (store=True, `clipsearch clusters --store`) writes every item, "
                           "which a server does not do: cluster without --store (store=False) through it, or "
                           "store them once no server holds the collection (stop it first)")
        params = _params(k=k, central=central, seed=seed, vector=vector)
        return Clusters.from_json(self._request("GET", f"{self._base}/clusters", params=params))

    def outliers(self, limit: int = 50, *, neighbours: int = 10, vector: str | None = None) -> Outliers:
        params = _params(limit=limit, neighbours=neighbours, vector=vector)
        return Outliers.from_json(self._request("GET", f"{self._base}/outliers", params=params))

    def export(self, out: str | Path, format: str = "csv", *, where: str | Sequence[str] | None = None,
               filter: dict[str, Any] | None = None, run: str | None = None, formulas: bool = False,
               query: str | None = None, k: int = 100, copy: bool = False) -> Exported:
        """csv, jsonl and COCO documents are written to `out` here; a folder export (imagefolder,
        fiftyone) comes as a tar archive of the folder, the images copied in (`copy` is so already),
        unpacked into `out` (a new or empty folder; an archive with a member outside it, a link or a
        device is refused). A query's results (`query`) are exported where the collection is."""
        from indexer.curation.export import TEXT_FORMATS, unpack_folder

        if query is not None:
            raise Conflict("a server exports the items passing a filter, not a query's results (query=, "
                           "`clipsearch export --query`): export with where=/--where through it, or export "
                           "the query where no server holds the collection (stop it first)")
        if format not in TEXT_FORMATS:
            target = Path(out)
            target.parent.mkdir(parents=True, exist_ok=True)
            body = {"format": format, "filter": self._filter(where, filter), "run": run}
            path = f"{self._base}/export/archive"
            with self._download("POST", path, target, json=body) as (archive, headers):
                unpack_folder(archive, target)
            return Exported(format, str(target), int(headers.get("x-export-items", 0)),
                            int(headers.get("x-export-labelled", 0)))
        document, report = self.export_document(format, where=where, filter=filter, run=run,
                                                formulas=formulas)
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(Path(out), document.encode("utf-8"))
        return Exported(report.format, str(out), report.items, report.labelled)

    def export_document(self, format: str, *, where: str | Sequence[str] | None = None,
                        filter: dict[str, Any] | None = None, run: str | None = None, formulas: bool = False
                        ) -> tuple[str, Exported]:
        body = {"format": format, "filter": self._filter(where, filter), "run": run, "csv_formulas": formulas}
        answer = self._post(f"{self._base}/export", json=body)
        report = Exported(answer["format"], "", int(answer["items"]), int(answer["labelled"]))
        return answer["document"], report

    def eval(self, data: str | Path, *, vectors: Sequence[str] = (),
             templates: str | Sequence[str] | None = None) -> dict[str, Any]:
        """DATA (an ImageFolder tree or a CSV of path,label) is read here; the server is sent its images'
        paths and labels only, and matches them against the paths it indexed (the same files: run it
        where the server's paths are yours too, e.g. on its machine or a shared mount)."""
        from indexer.curation.evaluate import labelled_pairs, load_dataset

        pairs = labelled_pairs(load_dataset(Path(data)))
        return self.eval_labelled([p for p, _ in pairs], [label for _, label in pairs], vectors=vectors,
                                  templates=templates)

    def eval_labelled(self, paths: Sequence[str], labels: Sequence[str], *, vectors: Sequence[str] = (),
                      templates: str | Sequence[str] | None = None) -> dict[str, Any]:
        body = {"paths": list(paths), "labels": list(labels), "vectors": list(vectors),
                "templates": _templates(templates)}
        return dict(self._post(f"{self._base}/eval", json=body))

    # --- vectors -------------------------------------------------------------------------------

    def vectors(self) -> Vectors:
        return Vectors.from_json(self._request("GET", f"{self._base}/vectors"))

    def reembed(self, model: str, pretrained: str, *, name: str | None = None) -> Vectors:
        """Starts the re-embedding in the server and waits until it is done (or failed: its error)."""
        answer = Vectors.from_json(self._post(f"{self._base}/vectors", json={
            "model": model, "pretrained": pretrained, **({"name": name} if name else {})}))
        started = {v.name for v in answer.vectors if v.job}
        while True:
            vectors = self.vectors()
            jobs = [v for v in vectors.vectors if v.name in started and v.job]
            failed = [v for v in jobs if v.job and v.job.get("state") == "failed"]
            if failed:
                raise Unavailable(f"re-embedding into {failed[0].name!r} failed: "
                                  f"{failed[0].job.get('error') if failed[0].job else ''}")
            if all(v.job and v.job.get("state") not in ("starting", "running") for v in jobs):
                return vectors
            time.sleep(REEMBED_POLL_S)

    def activate(self, name: str) -> Vectors:
        return Vectors.from_json(self._post(f"{self._base}/vectors/{_segment(name)}/activate"))

    def drop_vector(self, name: str) -> Vectors:
        return Vectors.from_json(self._request("DELETE", f"{self._base}/vectors/{_segment(name)}"))

    # --- the collection ------------------------------------------------------------------------

    def status(self) -> Status:
        return Status.from_json(self._request("GET", f"{self._base}/status"))

    def check(self, *, repair: bool = False) -> dict[str, Any]:
        """The server verifies the collection's stored data (it reads every point); it does not repair."""
        if repair:
            raise Conflict(f"collection {self.name!r} is held by the server at {self.url}: stop it to "
                           "--repair (repair=True)")
        return dict(self._request("GET", f"{self._base}/check"))

    def snapshot(self, out: str | Path) -> Transfer:
        """The server writes the archive and sends it; it lands at `out` here."""
        target = Path(out)
        target.parent.mkdir(parents=True, exist_ok=True)
        gzip = target.name.endswith((".gz", ".tgz"))
        params = {"gzip": str(gzip).lower()}
        with self._download("POST", f"{self._base}/snapshot", target, params=params) as (partial, _):
            partial.replace(target)
        from indexer.stores.transfer import verify

        manifest = verify(target)
        counts = {name: v["count"] for name, v in manifest["vectors"].items()}
        return Transfer(self.name, manifest.get("source_store", ""), manifest["points"], counts, str(target))

    def restore(self, archive: str | Path, *, replace: bool = False) -> Transfer:
        """This collection made in the server's store from a snapshot archive here, uploaded (up to the
        server's CLIPSEARCH_API_MAX_RESTORE_BYTES; its full key)."""
        source = Path(archive)
        try:
            size = source.stat().st_size
        except OSError as exc:
            raise BadInput(f"cannot read archive {source}: {exc.strerror}") from None

        def chunks() -> Iterator[bytes]:
            with open(source, "rb") as file:
                while block := file.read(UPLOAD_BLOCK):
                    yield block

        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        answer = self._post(f"{self._base}/restore", params={"replace": str(replace).lower()},
                            content=chunks(), headers=headers)
        return Transfer.from_json(answer)

    def copy(self, to_name: str | None = None, *, to_store: str | None = None, replace: bool = False
             ) -> Transfer:
        """A copy of this collection in the server, under `to_name` and/or in another store kind (its
        full key)."""
        body = {"to_collection": to_name, "to_store": to_store, "replace": replace}
        return Transfer.from_json(self._post(f"{self._base}/copy", json=body))

    # --- internals -----------------------------------------------------------------------------

    @contextmanager
    def _download(self, method: str, path: str, target: Path, **kwargs: Any
                  ) -> Iterator[tuple[Path, httpx.Headers]]:
        """The response's body in a partial file beside `target` (removed afterwards unless moved),
        with the response's headers; the server's error as its error class."""
        partial = target.with_name(f".{target.name}.part")
        try:
            with self._http.stream(method, path, **kwargs) as response:
                if not response.is_success:
                    response.read()
                    self._raise(response)
                with open(partial, "wb") as file:
                    for chunk in response.iter_bytes():
                        file.write(chunk)
            yield partial, response.headers
        except httpx.HTTPError as exc:
            raise Unavailable(f"the server at {self.url} does not answer: {exc}") from exc
        finally:
            partial.unlink(missing_ok=True)

    @property
    def _base(self) -> str:
        return f"/v1/collections/{_segment(self.name)}"

    def _fields(self) -> dict[str, str]:
        return dict(self._request("GET", f"{self._base}/status")["fields"])

    def _filter(self, where: str | Sequence[str] | None, filter: dict[str, Any] | None
                ) -> dict[str, Any] | None:
        """`where` parsed here against the collection's declared fields, as a local Collection does."""
        return combined_filter(where, filter, self._fields() if where else None)

    def _options(self, where: str | Sequence[str] | None, filter: dict[str, Any] | None,
                 **options: Any) -> SearchOptions:
        return SearchOptions(filter=self._filter(where, filter), **options)

    def _post(self, path: str, **kwargs: Any) -> Any:
        return self._request("POST", path, **kwargs)

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        replayable = not isinstance(kwargs.get("content"), Iterator)  # a streamed body is sent once
        for attempt in range(BUSY_RETRIES + 1 if replayable else 1):
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                raise Unavailable(f"the server at {self.url} does not answer: {exc}") from exc
            retry_after = _retry_after(response)
            # A 503 with Retry-After was refused before any work (busy decoding): the same request, later.
            if response.status_code != 503 or retry_after is None or attempt == BUSY_RETRIES:
                break
            time.sleep(min(retry_after, BUSY_WAIT_MAX_S))
        if not response.is_success:
            self._raise(response)
        return response.json()

    def _raise(self, response: httpx.Response) -> None:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        if not isinstance(detail, str):  # a validation error's list
            detail = "; ".join(f"{'.'.join(str(p) for p in d.get('loc', ()))}: {d.get('msg')}"
                               for d in detail if isinstance(d, dict)) or str(detail)
        error = error_for_status(response.status_code, f"{detail} (from the server at {self.url})")
        if isinstance(error, Unavailable):
            error.retry_after_s = _retry_after(response)
        raise error


def _retry_after(response: httpx.Response) -> int | None:
    """The Retry-After header in whole seconds (this API sends seconds), None when absent or not a number."""
    value = response.headers.get("retry-after", "").strip()
    return int(value) if value.isdigit() else None


def _term_json(term: Any) -> dict[str, Any]:
    """A text or indexed-item term of a query, as the API takes it."""
    kind = {"text": term.text} if term.text is not None else {"image_id": term.image_id}
    return {**kind, **({"weight": term.weight} if term.weight != 1.0 else {})}


def _segment(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


def _params(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _templates(templates: str | Sequence[str] | None) -> str | list[str] | None:
    """What a request carries for `templates`: a built-in set by name; a template file read here (a
    server never reads a client's path) or a list, as the templates themselves."""
    from indexer.curation.labels import builtin_templates, load_templates

    if templates is None:
        return None
    builtin = builtin_templates(templates) if isinstance(templates, str) else None
    return builtin if builtin is not None else load_templates(templates)
