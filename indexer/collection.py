"""The local `Collection`: every capability of clipsearch as a method on one object, the one object
every front end calls (the Python API `clipsearch.open`, the HTTP routes, the CLI).

It wraps the library's parts (the search engine, the ingest pipeline, curation, re-embedding, backups)
and returns the small dataclasses of indexer.results. `clipsearch.connect` gives the same interface
over HTTP (`CollectionAPI` below says what both have).

Thread safety: the embedded stores and the models are not safe to call from several threads at once,
so every call runs through an `Access`: alone under a lock of its own (`LocalAccess`, a script or a
notebook), or through the server's per-collection lock (search_api.engines.Engines.call), so the HTTP
routes and the server's own writers take turns on the one open store.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from indexer.curation.duplicates import DEFAULT_THRESHOLD, HASH_DISTANCE
from indexer.errors import BadInput, Conflict
from indexer.ingest.progress import IndexProgress, ProgressCallback
from indexer.results import (
    Classified,
    Clusters,
    Duplicates,
    Exported,
    Hit,
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
from indexer.search.engine import SearchEngine, SearchOutcome
from indexer.search.options import FACET_LIMIT, SearchOptions, combined_filter
from indexer.search.query import Term
from indexer.settings import Settings

T = TypeVar("T")
# An image to search by or classify: a file path, its bytes, or a PIL image.
ImageLike = Any
# Query algebra: (weight, text) pairs, or Terms; an indexed item is {"image_id": ID}.
QueryTerms = Sequence[Term | tuple[float, str] | dict[str, Any]]


class Access(Protocol):
    """How a Collection reaches its engine: `call` runs fn with it, alone; `exclusive` runs fn with the
    engine closed (a library run that opens the store itself, under the collection's write lock)."""

    def call(self, fn: Callable[[SearchEngine], T]) -> T: ...

    def exclusive(self, fn: Callable[[], T], what: str) -> T: ...

    def close(self) -> None: ...


class LocalAccess:
    """The engine of one collection in this process, opened on first use, one call at a time."""

    def __init__(self, settings: Settings, name: str) -> None:
        import threading

        self.settings, self.name = settings, name
        self._lock = threading.RLock()
        self._engine: SearchEngine | None = None

    def call(self, fn: Callable[[SearchEngine], T]) -> T:
        with self._lock:
            if self._engine is None:
                # The engine lets go of the lock while it encodes a query: threads of one program
                # searching at once share encoder batches (indexer.models.batching).
                # No model loaded until a call needs one: status, vectors, snapshot, duplicates... need
                # none (and work when the recorded model cannot be loaded here).
                self._engine = SearchEngine(self.settings, self.name, warm=False, lock=self._lock,
                                            encoder=False)
            return fn(self._engine)

    def exclusive(self, fn: Callable[[], T], what: str) -> T:
        with self._lock:
            self.close()
            return fn()

    def close(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.close()
                self._engine = None


class Collection:
    """One collection. `Collection.open(name, settings)`; a collection that does not exist yet is
    created by its first `index` (or `put_item` is refused with advice). Use it as a context manager,
    or call `close()`, to let the store go. `progress`: tqdm bars on stderr for the long runs (label,
    duplicates, clusters, export of duplicates, reembed, snapshot), as the command line shows them."""

    def __init__(self, settings: Settings, name: str | None = None, access: Access | None = None,
                 *, progress: bool = False) -> None:
        self.settings = settings
        self.name = name or settings.collection
        self.progress = progress
        self._access: Access = access or LocalAccess(settings, self.name)

    @classmethod
    def open(cls, name: str | None = None, settings: Settings | None = None, *, progress: bool = False
             ) -> Collection:
        from indexer.stores import check_collection_name

        settings = settings or Settings()
        collection = cls(settings, name, progress=progress)
        check_collection_name(collection.name)
        return collection

    def close(self) -> None:
        self._access.close()

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Collection({self.name!r}, store={self.settings.store!r}, home={str(self.settings.home)!r})"

    # --- indexing ------------------------------------------------------------------------------

    def index(
        self,
        sources: Sequence[str | Path],
        *,
        id_column: str | None = None,
        image_columns: Sequence[str] = (),
        text_columns: str | Sequence[str] | None = None,
        fields: dict[str, str] | None = None,
        progress: bool | Callable[[IndexProgress], None] = False,
    ) -> IndexReport:
        """Embed new and changed images under `sources` (folders, image files, .csv/.jsonl/.parquet
        catalogs), drop the ones that are gone; creates the collection with the settings' model.
        `progress`: True for tqdm bars on stderr, or a function called with an IndexProgress (stage,
        source, done, total, embedded, failed) once each source is read, after each batch, and last
        with stage "done" and the report's counts."""
        from indexer.ingest.catalog import ColumnMapping
        from indexer.ingest.catalog_run import index_paths

        if not isinstance(progress, bool) and not callable(progress):
            raise BadInput("progress is True (tqdm bars), False, or a function called with an "
                           f"IndexProgress; not {type(progress).__name__}")
        if isinstance(sources, (str, Path)):
            sources = [sources]
        texts = text_columns if text_columns is None or isinstance(text_columns, str) \
            else ",".join(text_columns)
        mapping = ColumnMapping.from_flags(id_column, tuple(image_columns), texts,
                                           tuple(f"{k}:{v}" for k, v in (fields or {}).items()))
        report = self._access.exclusive(
            lambda: index_paths(self.settings, [Path(s) for s in sources], mapping, self.name,
                                progress=progress),
            "index",
        )
        return IndexReport.from_json(report.summary())

    # --- search --------------------------------------------------------------------------------

    def search(
        self,
        text: str | None = None,
        *,
        image: ImageLike | None = None,
        like: str | None = None,
        query: QueryTerms | None = None,
        k: int = 10,
        where: str | Sequence[str] | None = None,
        filter: dict[str, Any] | None = None,
        mode: str | None = None,
        keywords: str | None = None,
        offset: int = 0,
        min_score: float | None = None,
        facets: Sequence[str] = (),
        facet_limit: int = FACET_LIMIT,
        group_by: str | None = None,
        diversity: float | None = None,
        vector: str | None = None,
    ) -> SearchResults:
        """Search by exactly one of: `text`; an example `image` (path, bytes or PIL image); `like`, the
        id of an indexed item; `query`, weighted terms [(1, "red dress"), (-0.5, "long sleeves"),
        {"image_id": ID, "weight": 0.5}]. `where`: the --where grammar ("price < 50", "brand in (a, b)"),
        one expression or several (ANDed); `filter`: the API's filter JSON; `keywords`: the words of a
        hybrid/keyword ranking; `diversity`: MMR, 0-1; `facets`: fields to count under the filter."""
        terms = query_terms(text, image, like, query)
        options = self.search_options(where, filter, vector=vector, offset=offset, mode=mode, text=keywords,
                                      min_score=min_score, group_by=group_by, diversity=diversity,
                                      facets=tuple(facets), facet_limit=facet_limit)
        return self.query(terms, k, options)

    def recommend(
        self,
        positive: Sequence[str],
        negative: Sequence[str] = (),
        *,
        k: int = 10,
        where: str | Sequence[str] | None = None,
        filter: dict[str, Any] | None = None,
        offset: int = 0,
        min_score: float | None = None,
        facets: Sequence[str] = (),
        facet_limit: int = FACET_LIMIT,
        group_by: str | None = None,
        vector: str | None = None,
    ) -> SearchResults:
        """More like the items `positive`, less like `negative` (ids); those given are left out."""
        if isinstance(positive, str) or isinstance(negative, str):
            raise BadInput("positive and negative are lists of item ids")
        options = self.search_options(where, filter, vector=vector, offset=offset, min_score=min_score,
                                      group_by=group_by, facets=tuple(facets), facet_limit=facet_limit)
        return self.recommend_by(positive, negative, k, options)

    def query(self, terms: Sequence[Term], k: int, options: SearchOptions | None = None) -> SearchResults:
        """A search by query terms with one SearchOptions (what `search` builds from its arguments; the
        HTTP routes build it from a request body). The answer carries the stages' timings."""
        return self._call(lambda engine: results(engine.search_query(list(terms), k, options)))

    def recommend_by(self, positive: Sequence[str], negative: Sequence[str], k: int,
                     options: SearchOptions | None = None) -> SearchResults:
        """`recommend` with one SearchOptions."""
        return self._call(
            lambda engine: results(engine.recommend(list(positive), list(negative), k, options)))

    def browse_by(self, k: int = 10, options: SearchOptions | None = None, *, sort: str | None = None
                  ) -> SearchResults:
        """`browse` with one SearchOptions: the items passing `options.filter` without a query, ordered by
        `sort` (a declared field; "-price" falling) or by id; every score is 0."""
        return self._call(lambda engine: results(engine.browse(k, options, sort=sort)))

    def browse(self, k: int = 10, *, where: str | Sequence[str] | None = None,
               filter: dict[str, Any] | None = None, sort: str | None = None, offset: int = 0,
               facets: Sequence[str] = (), facet_limit: int = FACET_LIMIT) -> SearchResults:
        """No query: the items passing the filter, ordered by `sort` (a declared field: "price" rising,
        "-price" or "price:desc" falling; without a value last) or by id, a page at a time. Scores are 0."""
        options = self.search_options(where, filter, offset=offset, facets=tuple(facets),
                                      facet_limit=facet_limit)
        return self.browse_by(k, options, sort=sort)

    def search_options(self, where: str | Sequence[str] | None, filter: dict[str, Any] | None,
                       **options: Any) -> SearchOptions:
        """The SearchOptions of a call: `where` checked against the declared fields."""
        query_filter = None
        if where or filter:
            fields = self._call(lambda engine: dict(engine.schema.fields)) if where else None
            query_filter = combined_filter(where, filter, fields)
        return SearchOptions(filter=query_filter, **options)

    def classify(self, images: Sequence[ImageLike], labels: Sequence[str]) -> list[Classified]:
        """Zero-shot labels of each image (path, bytes or PIL image), best first, scores summing to 1."""
        if isinstance(labels, str):
            labels = [label.strip() for label in labels.split(",") if label.strip()]
        pictures = [image_input(image) for image in images]
        scored = self._call(lambda engine: engine.classify(pictures, list(labels)))
        return [Classified([LabelScore(label, float(score)) for label, score in each]) for each in scored]

    # --- items ---------------------------------------------------------------------------------

    def get_item(self, id: str) -> Item:
        payload = self._call(lambda engine: engine.item(id))
        return Item(id, payload.get("uri", ""), payload.get("metadata", {}))

    def image_file(self, id: str) -> str | None:
        """The file an indexed item's image was read from (its payload's path; None for an item without
        a local file, e.g. one indexed from a URL); ItemNotFound for an id that is not indexed. Never
        built from the id: a server serves these files only."""
        path = self._call(lambda engine: engine.item(id)).get("path")
        return path if isinstance(path, str) else None

    def put_item(
        self,
        id: str,
        image: ImageLike | None = None,
        *,
        image_url: str | None = None,
        metadata: dict[str, Any] | None = None,
        text: str | dict[str, str] | None = None,
    ) -> ItemWritten:
        """Create the item `id` (a SKU, a key, a catalog product's id), or replace what is sent: its image
        (path, bytes, PIL image, or an http(s) `image_url`), its metadata (None: kept), its text (None:
        kept)."""
        from indexer.ingest.items import check_put, put_item, store_image

        limits = self.settings.limits
        check_put(id, dict(metadata or {}), text, limits)  # before an image is fetched or anything kept
        data = image_bytes(image) if image is not None else None
        if image_url and data is None:
            self._call(lambda engine: None)  # the collection exists (else NotFound) before the fetch
        stored = store_image(self.settings, self.name, data, image_url) if data or image_url else None

        def put(engine: SearchEngine) -> ItemWritten:
            def embed(spec: Any, path: Path) -> Any:
                model = engine.models.query(spec.model)
                return model.encode_images([engine.decode(path, model)])[0]

            return _written(put_item(engine.store, embed, id, stored, metadata, text, limits))

        return self._call(put)

    def patch_item(self, id: str, metadata: dict[str, Any] | None = None,
                   text: str | dict[str, str] | None = None) -> ItemWritten:
        """Change an item's metadata and text (a None value removes a field); nothing is embedded."""
        from indexer.ingest.items import patch_item

        limits = self.settings.limits
        return self._call(
            lambda engine: _written(patch_item(engine.store, id, dict(metadata or {}), text, limits)))

    def delete_item(self, id: str) -> ItemWritten:
        from indexer.ingest.items import delete_item

        return self._call(lambda engine: _written(delete_item(engine.store, id)))

    # --- labels --------------------------------------------------------------------------------

    def label(
        self,
        labels: str | Sequence[str],
        *,
        run: str = "label",
        top_k: int = 3,
        threshold: float = 0.0,
        templates: str | Sequence[str] | None = None,
        where: str | Sequence[str] | None = None,
        filter: dict[str, Any] | None = None,
        vector: str | None = None,
    ) -> LabelRun:
        """Label every item (passing the filter) zero-shot from its stored vector: a run's fields
        `<run>`, `<run>_score`, `<run>_top` in its metadata. `labels`: a list, a comma list, or a
        built-in set (imagenet, cifar10); items whose best score is under `threshold` are "unsure"."""
        from indexer.curation.labels import label_store, load_labels, load_templates

        names = load_labels(labels) if isinstance(labels, str) else list(labels)
        chosen = load_templates(templates)

        def run_labels(engine: SearchEngine) -> LabelRun:
            spec = engine.schema.vector(vector)
            query_filter = combined_filter(where, filter, dict(engine.schema.fields))
            store_filter = engine.store_filter(query_filter)
            # The query encoder (ONNX on CPU) encodes label prompts ~2x faster than the torch model here
            # (ViT-B-32, 2 cores: ~450 against ~210 prompts/s), and as the text queries are encoded.
            clip = engine.models.query(spec.model)
            report = label_store(engine.store, clip, names, templates=chosen, run=run, top_k=top_k,
                                 threshold=threshold, vector=spec.name, store_filter=store_filter,
                                 progress=self.progress)
            return LabelRun.from_json(report.summary())

        return self._write(run_labels, "clipsearch label")

    def label_runs(self) -> dict[str, dict[str, Any]]:
        """Every label run: labels, top_k, threshold, vector, labeled, at."""
        from indexer.curation.labels import label_runs

        return self._call(lambda engine: label_runs(engine.store))

    def label_counts(self, run: str = "label") -> LabelCounts:
        from indexer.curation.labels import label_counts

        return LabelCounts.from_json(self._call(lambda engine: label_counts(engine.store, run)))

    def review_items(self, run: str, label: str, *, pending: bool = False, offset: int = 0,
                     limit: int = 48) -> ReviewPage:
        """The items of one label (or "unsure") of a run, most confident first, a page at a time."""
        from indexer.curation.labels import review_items

        total, page = self._call(lambda engine: review_items(engine.store, run, label, pending=pending,
                                                             offset=offset, limit=limit))
        return ReviewPage(run, label, total, offset, limit, [ReviewItem.from_json(i) for i in page])

    def review(self, run: str, ids: Sequence[str], action: str, label: str | None = None) -> list[ReviewItem]:
        """A person's decision on items: accept (the zero-shot label), change (to `label`), reject, clear."""
        from indexer.curation.labels import review

        if action not in ("accept", "change", "reject", "clear"):
            raise BadInput(f"review action {action!r}: accept, change, reject or clear")
        done = self._call(lambda engine: review(engine.store, run, list(ids), action, label))  # type: ignore[arg-type]
        return [ReviewItem.from_json(item) for item in done]

    # --- curation ------------------------------------------------------------------------------

    def duplicates(self, *, threshold: float = DEFAULT_THRESHOLD, hash_distance: int = HASH_DISTANCE,
                   vector: str | None = None) -> Duplicates:
        """Groups of exact (same bytes) and near duplicates (CLIP cosine >= threshold, or perceptual
        hashes within hash_distance bits), each with the one to keep."""
        from indexer.curation.duplicates import find_duplicates

        # A write: the hashes of files indexed before hashes were taken are stored.
        return Duplicates.from_json(self._write(lambda engine: find_duplicates(
            engine.store, threshold=threshold, hash_distance=hash_distance, vector=vector,
            progress=self.progress), "clipsearch duplicates"))

    def clusters(self, k: int = 20, *, central: int = 6, seed: int = 0, vector: str | None = None,
                 store: bool = False, neighbours: int = 10) -> Clusters:
        """k-means clusters with their sizes and most central items. `store`: also write `cluster` and
        `outlier` (1 - mean cosine to the nearest `neighbours`) into every item's metadata."""
        from indexer.curation.clusters import cluster_collection

        def run(engine: SearchEngine) -> dict[str, Any]:
            return cluster_collection(engine.store, k, vector=vector, central=central, outliers=0,
                                      neighbours_k=neighbours, save=store, seed=seed, progress=self.progress)

        return Clusters.from_json(self._write(run, "clipsearch clusters") if store else self._call(run))

    def outliers(self, limit: int = 50, *, neighbours: int = 10, vector: str | None = None) -> Outliers:
        """The most isolated items first (score: 1 - mean cosine to their nearest `neighbours`)."""
        from indexer.curation.clusters import load_vectors, outlier_scores
        from indexer.curation.clusters import neighbours as nearest

        def run(engine: SearchEngine) -> dict[str, Any]:
            ids, payloads, x = load_vectors(engine.store, vector)
            if len(ids) < 2:
                return {"outliers": []}
            _, near = nearest(engine.store, ids, x, min(neighbours, len(ids) - 1), using=vector)
            scores = outlier_scores(near)
            order = sorted(range(len(ids)), key=lambda i: (-scores[i], i))[:limit]
            return {"outliers": [{"id": ids[i], "uri": payloads[i].get("uri", ""),
                                  "score": round(float(scores[i]), 6)} for i in order]}

        return Outliers.from_json(self._call(run))

    def export(self, out: str | Path, format: str = "csv", *, where: str | Sequence[str] | None = None,
               filter: dict[str, Any] | None = None, run: str | None = None, formulas: bool = False,
               query: str | None = None, k: int = 100, copy: bool = False) -> Exported:
        """Write the items passing the filter to `out`: csv, jsonl, coco (a label `run`'s labels as
        image-level annotations; run="@duplicates": the duplicate groups, with the group as the label),
        or the folders imagefolder and fiftyone (images symlinked, or copied with `copy`). `query`: the
        `k` best results of this text search instead, in their order, with their scores. CSV cells that
        start like a spreadsheet formula get a leading `'` unless `formulas` (for data pipelines)."""
        from indexer.curation.export import export

        hits = self.search(query, k=k, where=where, filter=filter) if query is not None else None

        def run_export(engine: SearchEngine) -> Exported:
            items = self._export_items(engine, where, filter, run, hits)
            report = export(engine.store, items, format, Path(out), run=run, copy=copy, formulas=formulas)
            return Exported(report.format, report.out, report.items, report.labelled, report.files,
                            len(report.missing))

        return self._call(run_export)

    def _export_items(self, engine: SearchEngine, where: str | Sequence[str] | None,
                      filter: dict[str, Any] | None, run: str | None, hits: SearchResults | None
                      ) -> list[Any]:
        """What an export writes: the duplicate groups' members, a query's hits, or the filtered items."""
        from indexer.curation.export import DUPLICATES, collect, duplicate_items

        if run == DUPLICATES:
            if hits is not None or where or filter:
                raise BadInput("an export of the duplicate groups takes the whole report: no query or filter")
            from indexer.curation.duplicates import find_duplicates

            # Read-only: images hashed at index time (or by `duplicates`) are compared by their hashes.
            report = find_duplicates(engine.store, compute_missing=False, progress=self.progress)
            return duplicate_items(engine.store, report)
        if hits is not None:
            return collect(engine.store, hits=[(hit.id, hit.score) for hit in hits])
        query_filter = combined_filter(where, filter, dict(engine.schema.fields))
        return collect(engine.store, engine.store_filter(query_filter))

    def export_archive(self, archive: str | Path, format: str, *, where: str | Sequence[str] | None = None,
                       filter: dict[str, Any] | None = None, run: str | None = None) -> Exported:
        """A folder export (imagefolder, fiftyone) as one tar archive at `archive`, the images copied in
        (not linked): what a server sends a client, which unpacks it (`unpack_export`)."""
        import shutil
        import tarfile
        import tempfile

        from indexer.curation.export import TEXT_FORMATS

        if format in TEXT_FORMATS:
            raise BadInput(f"{format} is one document, not a folder: use export_document")
        target = Path(archive)
        work = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent))
        try:
            report = self.export(work / "out", format, where=where, filter=filter, run=run, copy=True)
            with tarfile.open(target, "w") as tar:
                for path in sorted((work / "out").rglob("*")):
                    tar.add(path, arcname=path.relative_to(work / "out").as_posix(), recursive=False)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return Exported(report.format, str(target), report.items, report.labelled)

    def export_document(self, format: str, *, where: str | Sequence[str] | None = None,
                        filter: dict[str, Any] | None = None, run: str | None = None, formulas: bool = False
                        ) -> tuple[str, Exported]:
        """The csv, jsonl or COCO document `export` would write, as text, with its counts (the HTTP
        route's answer; a client writes it where its user asked)."""
        from indexer.curation.export import export_document

        def render(engine: SearchEngine) -> tuple[str, Exported]:
            items = self._export_items(engine, where, filter, run, None)
            document, report = export_document(engine.store, items, format, run=run, formulas=formulas)
            return document, Exported(format, "", report.items, report.labelled)

        return self._call(render)

    def eval(self, data: str | Path, *, vectors: Sequence[str] = (),
             templates: str | Sequence[str] | None = None) -> dict[str, Any]:
        """The collection's stored vectors measured on labelled `data` (an ImageFolder tree or a CSV
        of path,label; its images indexed in this collection): zero-shot top-1/5, text-to-image and
        image-to-image recall. The same document as `clipsearch eval --json`."""
        from indexer.curation.evaluate import labelled_pairs, load_dataset

        pairs = labelled_pairs(load_dataset(Path(data)))
        return self.eval_labelled([p for p, _ in pairs], [label for _, label in pairs], vectors=vectors,
                                  templates=templates)

    def eval_labelled(self, paths: Sequence[str], labels: Sequence[str], *, vectors: Sequence[str] = (),
                      templates: str | Sequence[str] | None = None) -> dict[str, Any]:
        """`eval` of a dataset given as its images' paths and their labels (what `eval` reads from DATA).
        The paths are only matched against the indexed items' paths, never read (a server takes them
        from a client); at most the `ids` limit of them (CLIPSEARCH_LIMITS_IDS)."""
        from indexer.curation.evaluate import (
            Embedded,
            dataset_of,
            eval_json,
            prompt_name,
            run_eval,
            stored_images,
        )
        from indexer.curation.labels import load_templates, prompt_embeddings

        if len(paths) != len(labels):
            raise BadInput(f"eval: {len(paths)} paths but {len(labels)} labels; give one label per path")
        limit = self.settings.limits.ids
        if len(paths) > limit:
            raise BadInput(f"eval: {len(paths)} labelled images, more than the {limit} one request may name "
                           "(CLIPSEARCH_LIMITS_IDS): evaluate a sample, or raise the limit")
        if not paths:
            raise BadInput("eval: no labelled images (give DATA/<class>/<image> files or a CSV of "
                           "path,label)")
        dataset = dataset_of(list(zip(paths, labels, strict=True)))
        chosen = load_templates(templates)

        def systems(engine: SearchEngine) -> list[Any]:
            found = []
            for name in vectors or (None,):
                spec = engine.schema.vector(name)
                clip = engine.models.get(spec.model)
                classes = prompt_embeddings(clip, [prompt_name(c) for c in dataset.classes], chosen)
                images = stored_images(engine.store, dataset.paths, spec.name, resolve=False)
                found.append(Embedded(f"{self.name}:{spec.name}", images, classes))
            return found

        return eval_json(run_eval(dataset, self._call(systems)))

    # --- vectors -------------------------------------------------------------------------------

    def vectors(self) -> Vectors:
        """The named vectors, with model, state and progress; the active one answers queries."""
        return Vectors(self.status().vectors)

    def reembed(self, model: str, pretrained: str, *, name: str | None = None) -> Vectors:
        """Embed the collection with another model into a new vector (or resume one); waits until it
        is filled. Queries keep using the active vector until `activate`."""
        from indexer.ingest.reembed import reembed

        report = self._access.exclusive(
            lambda: reembed(self.settings, self.name, model, pretrained, vector=name, progress=self.progress),
            "reembed",
        )
        # The run, as a server's vectors list its re-embedding job: on the vector it filled.
        job = {"state": "done", **{k: v for k, v in report.summary().items() if k not in ("collection",
                                                                                       "vector", "state")}}
        vectors = self.vectors()
        for info in vectors.vectors:
            if info.name == report.vector:
                info.job = job
        return vectors

    def activate(self, name: str) -> Vectors:
        from indexer.ingest.reembed import activate

        # The vector's query model loaded (and warm) before queries switch to it, outside the call, so
        # that other callers' queries go on meanwhile.
        models, spec = self._call(lambda engine: (engine.models, engine.schema.vector(name)))
        models.query(spec.model)
        self._write(lambda engine: activate(engine.store, name), "clipsearch vectors")
        return self.vectors()

    def drop_vector(self, name: str) -> Vectors:
        from indexer.ingest.reembed import drop_vector

        self._write(lambda engine: drop_vector(engine.store, name), "clipsearch vectors")
        return self.vectors()

    # --- the collection ------------------------------------------------------------------------

    def status(self) -> Status:
        """Count, model, vectors, declared fields and failed files."""
        return Status.from_json(self._call(lambda engine: engine.status()))

    def check(self, *, repair: bool = False) -> dict[str, Any]:
        """Verify the collection (vectors, payloads, counts, indexes, files on disk): {"ok", "line" (what
        is wrong and what to do), ...}, as `clipsearch check --json`. `repair`: drop the corrupt points
        (under the write lock; `repaired`: their ids), so the next index run embeds their files again."""
        from indexer.stores.check import check_collection, verify_collection

        if isinstance(self._access, LocalAccess):  # opens the store itself: a corrupt one may not search
            return self._access.exclusive(lambda: verify_collection(self.settings, self.name, repair),
                                          "check")
        if repair:
            raise Conflict("a server checks the collection it holds but does not repair it: stop it to "
                           "--repair")
        return self._call(lambda engine: check_collection(engine.store).summary())

    def snapshot(self, out: str | Path) -> Transfer:
        """Every point (vectors, payloads, schema) to a portable archive at `out` (.tar or .tar.gz)."""
        from indexer.stores.transfer import snapshot

        report = self._write(lambda engine: snapshot(engine.store, out, store_kind=self.settings.store,
                                                     progress=self.progress), "clipsearch snapshot")
        return Transfer.from_json(report.to_json())

    def restore(self, archive: str | Path, *, replace: bool = False) -> Transfer:
        """This collection made from a snapshot archive (`snapshot`); an existing one is replaced only
        with `replace`. The module's `restore` names the collection instead (default: the archived one)."""
        return self._access.exclusive(
            lambda: _restore(self.settings, archive, self.name, replace, self.progress, self._takes_locks),
            "restore")

    def copy(self, to_name: str | None = None, *, to_store: str | None = None, replace: bool = False
             ) -> Transfer:
        """A copy of this collection under `to_name` and/or into another store kind (edge, qdrant,
        faiss), without re-embedding."""
        return self._access.exclusive(
            lambda: _copy(self.settings, self.name, to_name, to_store, replace, self.progress,
                          self._takes_locks), "copy")

    # --- internals -----------------------------------------------------------------------------

    def _call(self, fn: Callable[[SearchEngine], T]) -> T:
        return self._access.call(fn)

    @property
    def _takes_locks(self) -> bool:
        """Whether a write here takes the collections' write locks: a server holds its collections
        for writing already (and the write lock of those it watches)."""
        return isinstance(self._access, LocalAccess)

    def _write(self, fn: Callable[[SearchEngine], T], holder: str) -> T:
        """A write by a library run: under the collection's write lock when this process does not
        already hold the collection for a server."""
        if self._takes_locks:
            from indexer.locking import collection_lock

            with collection_lock(self.settings.home, self.name, holder):
                return self._call(fn)
        return self._call(fn)


# --- restore and copy: they make a collection ----------------------------------------------------


def restore(archive: str | Path, name: str | None = None, *, replace: bool = False,
            settings: Settings | None = None, progress: bool = False) -> Transfer:
    """A collection (the archived one's name, or `name`) from a snapshot archive (`progress`: tqdm
    bars on stderr)."""
    return _restore(settings or Settings(), archive, name, replace, progress, lock=True)


def _restore(settings: Settings, archive: str | Path, name: str | None, replace: bool, progress: bool,
             lock: bool) -> Transfer:
    from indexer.stores.transfer import restore as restore_archive

    report = restore_archive(settings, archive, name, replace=replace, progress=progress, lock=lock)
    return Transfer.from_json(report.to_json())


def copy(name: str, to_name: str | None = None, *, to_store: str | None = None, replace: bool = False,
         settings: Settings | None = None, progress: bool = False) -> Transfer:
    """A copy of collection `name` under `to_name` and/or into another store kind, without re-embedding."""
    return _copy(settings or Settings(), name, to_name, to_store, replace, progress, lock=True)


def _copy(source: Settings, name: str, to_name: str | None, to_store: str | None, replace: bool,
          progress: bool, lock: bool) -> Transfer:
    from indexer.stores.transfer import copy_collection

    target = source.with_flags(store=to_store)
    if target.store == "qdrant" and not target.qdrant.url and target.qdrant.path is None:
        # The one store kind that needs a place given: asked of a server, the request's mistake, not its.
        raise BadInput("a copy to the qdrant store needs a Qdrant server: set CLIPSEARCH_QDRANT_URL (or "
                       "CLIPSEARCH_QDRANT_PATH for local mode) where the copy runs")
    report = copy_collection(source, name, target, to_name or name, replace=replace, progress=progress,
                             lock=lock)
    return Transfer.from_json(report.to_json())


# --- what both the local and the remote Collection are --------------------------------------------


@runtime_checkable
class CollectionAPI(Protocol):
    """The interface of `clipsearch.open` (Collection) and `clipsearch.connect` (RemoteCollection):
    a script runs unchanged against either. tests/test_python_api.py checks both match it."""

    name: str

    def close(self) -> None: ...
    def index(self, sources: Sequence[str | Path], *, id_column: str | None = None,
              image_columns: Sequence[str] = (), text_columns: str | Sequence[str] | None = None,
              fields: dict[str, str] | None = None,
              progress: bool | Callable[[IndexProgress], None] = False) -> IndexReport: ...
    def search(self, text: str | None = None, *, image: ImageLike | None = None, like: str | None = None,
               query: QueryTerms | None = None, k: int = 10, where: str | Sequence[str] | None = None,
               filter: dict[str, Any] | None = None, mode: str | None = None, keywords: str | None = None,
               offset: int = 0, min_score: float | None = None, facets: Sequence[str] = (),
               facet_limit: int = FACET_LIMIT, group_by: str | None = None, diversity: float | None = None,
               vector: str | None = None) -> SearchResults: ...
    def recommend(self, positive: Sequence[str], negative: Sequence[str] = (), *, k: int = 10,
                  where: str | Sequence[str] | None = None, filter: dict[str, Any] | None = None,
                  offset: int = 0, min_score: float | None = None, facets: Sequence[str] = (),
                  facet_limit: int = FACET_LIMIT, group_by: str | None = None,
                  vector: str | None = None) -> SearchResults: ...
    def browse(self, k: int = 10, *, where: str | Sequence[str] | None = None,
               filter: dict[str, Any] | None = None, sort: str | None = None, offset: int = 0,
               facets: Sequence[str] = (), facet_limit: int = FACET_LIMIT) -> SearchResults: ...
    def classify(self, images: Sequence[ImageLike], labels: Sequence[str]) -> list[Classified]: ...
    def get_item(self, id: str) -> Item: ...
    def put_item(self, id: str, image: ImageLike | None = None, *, image_url: str | None = None,
                 metadata: dict[str, Any] | None = None,
                 text: str | dict[str, str] | None = None) -> ItemWritten: ...
    def patch_item(self, id: str, metadata: dict[str, Any] | None = None,
                   text: str | dict[str, str] | None = None) -> ItemWritten: ...
    def delete_item(self, id: str) -> ItemWritten: ...
    def label(self, labels: str | Sequence[str], *, run: str = "label", top_k: int = 3,
              threshold: float = 0.0, templates: str | Sequence[str] | None = None,
              where: str | Sequence[str] | None = None,
              filter: dict[str, Any] | None = None, vector: str | None = None) -> LabelRun: ...
    def label_runs(self) -> dict[str, dict[str, Any]]: ...
    def label_counts(self, run: str = "label") -> LabelCounts: ...
    def review_items(self, run: str, label: str, *, pending: bool = False, offset: int = 0,
                     limit: int = 48) -> ReviewPage: ...
    def review(self, run: str, ids: Sequence[str], action: str,
               label: str | None = None) -> list[ReviewItem]: ...
    def duplicates(self, *, threshold: float = DEFAULT_THRESHOLD, hash_distance: int = HASH_DISTANCE,
                   vector: str | None = None) -> Duplicates: ...
    def clusters(self, k: int = 20, *, central: int = 6, seed: int = 0, vector: str | None = None,
                 store: bool = False, neighbours: int = 10) -> Clusters: ...
    def outliers(self, limit: int = 50, *, neighbours: int = 10, vector: str | None = None) -> Outliers: ...
    def export(self, out: str | Path, format: str = "csv", *, where: str | Sequence[str] | None = None,
               filter: dict[str, Any] | None = None, run: str | None = None, formulas: bool = False,
               query: str | None = None, k: int = 100, copy: bool = False) -> Exported: ...
    def export_document(self, format: str, *, where: str | Sequence[str] | None = None,
                        filter: dict[str, Any] | None = None, run: str | None = None, formulas: bool = False
                        ) -> tuple[str, Exported]: ...
    def eval(self, data: str | Path, *, vectors: Sequence[str] = (),
             templates: str | Sequence[str] | None = None) -> dict[str, Any]: ...
    def eval_labelled(self, paths: Sequence[str], labels: Sequence[str], *, vectors: Sequence[str] = (),
                      templates: str | Sequence[str] | None = None) -> dict[str, Any]: ...
    def vectors(self) -> Vectors: ...
    def reembed(self, model: str, pretrained: str, *, name: str | None = None) -> Vectors: ...
    def activate(self, name: str) -> Vectors: ...
    def drop_vector(self, name: str) -> Vectors: ...
    def status(self) -> Status: ...
    def check(self, *, repair: bool = False) -> dict[str, Any]: ...
    def snapshot(self, out: str | Path) -> Transfer: ...
    def restore(self, archive: str | Path, *, replace: bool = False) -> Transfer: ...
    def copy(self, to_name: str | None = None, *, to_store: str | None = None, replace: bool = False
             ) -> Transfer: ...


# --- helpers shared with the HTTP client ---------------------------------------------------------


def query_terms(text: str | None, image: ImageLike | None, like: str | None,
                query: QueryTerms | None) -> list[Term]:
    """The terms of a search given by exactly one of text, image, like, query."""
    given = [name for name, value in (("text", text), ("image", image), ("like", like), ("query", query))
             if value is not None]
    if len(given) != 1:
        raise BadInput("search by exactly one of text, image, like (an item id) or query (weighted terms)"
                       + (f"; got {', '.join(given)}" if given else ""))
    if text is not None:
        if not text.strip():
            raise BadInput("the search text is empty")
        return [Term(text=text)]
    if image is not None:
        return [Term(image=image_input(image))]
    if like is not None:
        return [Term(image_id=like)]
    assert query is not None
    return [as_term(term) for term in query]


def as_term(term: Term | tuple[float, str] | dict[str, Any]) -> Term:
    if isinstance(term, Term):
        return term
    if isinstance(term, dict):
        weight = float(term.get("weight", 1.0))
        return Term(text=term.get("text"), image_id=term.get("image_id"), weight=weight)
    weight, text = term
    return Term(text=text, weight=float(weight))


def image_input(image: ImageLike) -> bytes | str | Path:
    """What the engine decodes: bytes or a path; a PIL image becomes PNG bytes."""
    if isinstance(image, (bytes, str, Path)):
        return image
    if hasattr(image, "save"):  # a PIL image
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    raise BadInput(f"an image is a file path, bytes or a PIL image, not {type(image).__name__}")


def image_bytes(image: ImageLike) -> bytes:
    source = image_input(image)
    if isinstance(source, bytes):
        return source
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise BadInput(f"cannot read image {source}: {exc.strerror}") from None


def results(outcome: SearchOutcome) -> SearchResults:
    facets = {name: [(str(v), int(n)) for v, n in counts] for name, counts in outcome.facets.items()}
    hits = [Hit(r.id, r.uri, float(r.score), dict(r.metadata)) for r in outcome.results]
    return SearchResults(hits, facets, outcome.mode, dict(outcome.timings))


def _written(write: Any) -> ItemWritten:
    return ItemWritten(write.id, write.point_id, write.action, write.embedded, list(write.unindexed),
                       list(write.point_ids))


__all__ = ["Collection", "CollectionAPI", "IndexProgress", "LocalAccess", "ProgressCallback", "copy",
           "restore"]
