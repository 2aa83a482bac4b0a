"""`clipsearch label / export / eval`: zero-shot labelling of whole collections, exports, and measuring
a model on labelled data (docs/curation.md).

label and export work on the collection directly (an embedded collection held by a running server is
refused with CollectionBusy: stop the server, or use the review routes it serves).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from clipsearch import remote
from clipsearch.common import collection_option, emit, json_option, settings_from_flags
from indexer.errors import BadInput, Conflict
from indexer.limits import load_json
from indexer.settings import LimitsSettings

F = TypeVar("F", bound=Callable[..., Any])
TOP_COUNTS = 20  # labels listed by the human-readable summary


def filter_options(func: F) -> F:
    """--where (the search grammar; repeatable, all must hold) and --filter JSON."""
    func = click.option(
        "--filter", "filter_json", default=None,
        help='A filter as JSON in the API\'s shape, e.g. \'{"must": [{"key": "label", "match": {"value": '
             '"cat"}}]}\'.',
    )(func)
    return click.option(
        "--where", "where", multiple=True,
        help="A condition on a declared field, as in `clipsearch search`: 'label = cat', 'label != dog', "
             "'price < 50', 'brand in (acme, zenith)', 'taken_at >= 2024-01-01'; repeatable, all must hold.",
    )(func)


def query_filter(where: tuple[str, ...], filter_json: str | None, max_depth: int) -> dict[str, Any] | None:
    """The query filter (field names) of --where and --filter together; None for neither. `max_depth`:
    how deeply --filter may nest (CLIPSEARCH_LIMITS_JSON_DEPTH)."""
    from indexer.search.options import combined_filter

    given = load_json(filter_json, "--filter", max_depth) if filter_json else None
    return combined_filter(list(where), given)


# --- label ----------------------------------------------------------------------------------------


@click.command()
@click.option("--labels", default=None,
              help='Comma-separated labels ("cat,dog,car"), or a built-in set: imagenet, cifar10.')
@click.option("--labels-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A file with one label a line ('#' starts a comment).")
@click.option("--templates", default=None,
              help="Prompt templates: a file with one a line, {} where the label goes, or a built-in "
                   "ensemble (imagenet, imagenet-full, cifar10) [default: 8 general photo templates].")
@click.option("--top-k", type=click.IntRange(1, 100), default=3, show_default=True,
              help="Labels kept per item, best first.")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
              help='Items whose best score is under this are labelled "unsure".')
@filter_options
@click.option("--run", default="label", show_default=True,
              help="Run name: the field the labels go to (also NAME_score, NAME_top, NAME_top_scores).")
@click.option("--vector", default=None, help="Label from this named vector [default: the active one].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None,
              help="Where the label prompts are encoded.")
@collection_option
@json_option
def label(labels: str | None, labels_file: Path | None, templates: str | None, top_k: int, threshold: float,
          where: tuple[str, ...], filter_json: str | None, run: str, vector: str | None, device: str | None,
          collection: str | None, as_json: bool) -> None:
    """Label every item of a collection zero-shot from its stored vector (no image is re-encoded).

    The labels go into each item's metadata as indexed fields named after --run, so `--where label=cat`
    and counts work on them; review them in the UI's Review page."""
    from indexer.curation.labels import BUILTIN_TEMPLATES, label_collection, load_labels, load_templates

    settings = settings_from_flags(device=device, collection=collection)
    names = load_labels(labels, labels_file)
    wanted = query_filter(where, filter_json, settings.limits.json_depth)

    def local() -> dict[str, Any]:
        return label_collection(
            settings, None, names, query_filter=wanted, templates=load_templates(templates), run=run,
            top_k=top_k, threshold=threshold, vector=vector, progress=not as_json or sys.stderr.isatty(),
        ).summary()

    def through(shop: Any) -> dict[str, Any]:
        if templates is not None and templates.strip().lower() not in BUILTIN_TEMPLATES:
            raise BadInput(f"--templates {templates}: the server that holds the collection takes a "
                           f"built-in set ({', '.join(BUILTIN_TEMPLATES)}); give one, or stop the server to "
                           "use a file")
        chosen = templates.strip().lower() if templates else None
        done = shop.label(names, run=run, top_k=top_k, threshold=threshold, templates=chosen, filter=wanted,
                          vector=vector)
        return {"run": done.run, "labeled": done.labeled, "unsure": done.unsure, "counts": done.counts,
                "seconds": done.seconds}

    summary = remote.local_or_through_server(settings, settings.collection, local,
                                             remote.through_client(settings, settings.collection, through))
    if as_json:
        emit(summary)
        return
    click.echo(f"{summary['labeled']} items labelled under {run!r} ({summary['unsure']} unsure) "
               f"in {summary['seconds']:.1f}s")
    for name, count in list(summary["counts"].items())[:TOP_COUNTS]:
        click.echo(f"{count}\t{name}")
    if len(summary["counts"]) > TOP_COUNTS:
        click.echo(f"... and {len(summary['counts']) - TOP_COUNTS} more labels (see --json)")


# --- export ---------------------------------------------------------------------------------------


@click.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl", "coco", "imagefolder", "fiftyone"]),
              required=True, help="csv, jsonl, coco: a file; imagefolder, fiftyone: a new folder.")
@filter_options
@click.option("--run", default=None,
              help="The label run whose labels to export [default: 'label' when the collection has it].")
@click.option("--query", default=None, help="Export the results of this text query instead of every item.")
@click.option("-k", type=click.IntRange(1, 100_000), default=100, show_default=True,
              help="Results of --query to export.")
@click.option("--duplicates", is_flag=True,
              help="Export the duplicate groups (as `clipsearch duplicates` finds them) instead: their "
                   "members, with the group as the label.")
@click.option("--copy", is_flag=True, help="imagefolder, fiftyone: copy the images rather than symlink them.")
@click.option("--csv-formulas", is_flag=True,
              help="csv: write cells that start with =, +, -, @, tab or CR as they are (for data pipelines); "
                   "by default they get a leading ' so a spreadsheet shows them as text.")
@collection_option
@json_option
def export(out: Path, fmt: str, where: tuple[str, ...], filter_json: str | None, run: str | None,
           query: str | None, k: int, duplicates: bool, copy: bool, csv_formulas: bool,
           collection: str | None, as_json: bool) -> None:
    """Export a collection, a label run, a duplicate report or a query's results to OUT (labels: a
    person's decision first)."""
    if duplicates and (query or where or filter_json or run):
        raise click.UsageError("--duplicates exports the whole report: no --query, --where, --filter, --run")

    settings = settings_from_flags(collection=collection)
    wanted = query_filter(where, filter_json, settings.limits.json_depth)

    def through(shop: Any) -> dict[str, Any]:
        if duplicates or query is not None or copy or fmt not in ("csv", "jsonl", "coco"):
            raise Conflict("the running server holds the collection: through it, export takes --format csv, "
                           "jsonl or coco with --where/--filter/--run (no --query, --duplicates, --copy, "
                           "folders); for the others, stop the server first")
        chosen = run if run is not None else ("label" if "label" in shop.label_runs() else None)
        done = shop.export(out, fmt, filter=wanted, run=chosen, formulas=csv_formulas)
        return {"format": done.format, "out": done.out, "items": done.items, "labelled": done.labelled,
                "files": 0, "missing": 0}

    report = remote.local_or_through_server(
        settings, settings.collection,
        lambda: _export_here(settings, out, fmt, wanted, run, query, k, duplicates, copy, as_json,
                             csv_formulas),
        remote.through_client(settings, settings.collection, through))
    if as_json:
        emit(report)
        return
    missing = f", {report['missing']} files missing" if report["missing"] else ""
    click.echo(f"{report['items']} items ({report['labelled']} labelled) exported to {out} as {fmt}{missing}")


def _export_here(settings: Any, out: Path, fmt: str, wanted: dict[str, Any] | None, run: str | None,
                 query: str | None, k: int, duplicates: bool, copy: bool, as_json: bool,
                 csv_formulas: bool = False) -> dict[str, Any]:
    from indexer.curation.export import DUPLICATES, collect, duplicate_items
    from indexer.curation.export import export as write_export
    from indexer.curation.labels import DEFAULT_RUN, label_runs
    from indexer.search.options import SearchOptions

    collection = settings.collection
    with _opened(settings, collection, query is not None) as (store, engine):
        if duplicates:
            from indexer.curation.duplicates import find_duplicates

            # Read-only: images hashed at index time (or by `clipsearch duplicates`) are compared by hash.
            report = find_duplicates(store, compute_missing=False, progress=not as_json)
            items, run = duplicate_items(store, report), DUPLICATES
        elif query is not None:
            found = engine.search_text(query, k, SearchOptions(filter=wanted)).results
            items = collect(store, hits=[(r.id, r.score) for r in found])
        else:
            items = collect(store, _store_filter(store, wanted, settings.limits))
        if run is None and DEFAULT_RUN in label_runs(store):
            run = DEFAULT_RUN
        return write_export(store, items, fmt, out, run=run, copy=copy, formulas=csv_formulas).summary()


def _store_filter(store: Any, wanted: dict[str, Any] | None, limits: LimitsSettings) -> Any:
    from indexer.stores.filters import Filter

    parsed = Filter.parse(wanted, limits)
    return parsed.resolve(store.schema) if parsed is not None and not parsed.is_empty() else None


class _opened:
    """The collection's store, and a search engine over it when a query needs the model."""

    def __init__(self, settings: Any, collection: str | None, with_engine: bool) -> None:
        self.settings, self.collection, self.with_engine = settings, collection, with_engine
        self.engine: Any = None
        self.store: Any = None

    def __enter__(self) -> tuple[Any, Any]:
        if self.with_engine:
            from indexer.search.engine import SearchEngine

            self.engine = SearchEngine(self.settings, self.collection)
            return self.engine.store, self.engine
        from indexer.stores import open_store

        self.store = open_store(self.settings, self.collection or self.settings.collection)
        return self.store, None

    def __exit__(self, *exc: object) -> None:
        (self.engine or self.store).close()


# --- eval -----------------------------------------------------------------------------------------


@click.command(name="eval")
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option("--model", "models", multiple=True,
              help="An open_clip model to evaluate (repeatable, each with its --pretrained).")
@click.option("--pretrained", "pretrained", multiple=True, help="The weights of each --model, in order.")
@collection_option
@click.option("--vector", "vectors", multiple=True,
              help="With --collection: a stored vector to evaluate (repeatable) [default: the active one].")
@click.option("--templates", default=None,
              help="Prompt templates for the class names: a file, or imagenet, imagenet-full, cifar10.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write report.md, results.json and confusion-matrix PNGs to this folder.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None)
@json_option
def evaluate(data: Path, models: tuple[str, ...], pretrained: tuple[str, ...], collection: str | None,
             vectors: tuple[str, ...], templates: str | None, report_dir: Path | None, device: str | None,
             as_json: bool) -> None:
    """Measure models or stored vectors on labelled DATA (an ImageFolder tree, or a CSV of path,label):
    zero-shot top-1/top-5, text-to-image recall@1/5/10 with class prompts, image-to-image recall@k and mAP.

    Without --model: the vectors of --collection (the default collection), matched to DATA by path."""
    from indexer.curation.evaluate import eval_json, load_dataset, run_eval, write_report
    from indexer.curation.labels import load_templates

    if len(pretrained) > len(models):
        raise click.UsageError("each --pretrained goes with a --model")
    started = time.perf_counter()
    settings = settings_from_flags(device=device)
    dataset = load_dataset(data)
    chosen = load_templates(templates)
    progress = not as_json or sys.stderr.isatty()
    systems = [_model_system(settings, m, p, dataset, chosen, progress)
               for m, p in zip(models, [*pretrained, *[None] * len(models)], strict=False)]
    if collection or vectors or not models:
        systems += _vector_systems(settings, collection, vectors, dataset, chosen)
    evaluated = run_eval(dataset, systems)
    if report_dir is not None:
        title = f"Evaluation on {data}"
        path = write_report(report_dir, dataset, evaluated, title)
        click.echo(f"report: {path}", err=True)
    if as_json:
        emit(eval_json(evaluated))
        return
    seconds = time.perf_counter() - started
    click.echo(f"{evaluated['images']} images, {len(dataset.classes)} classes, {seconds:.1f}s")
    for system in evaluated["systems"]:
        r = system["result"]
        parts = [f"zero-shot top-1 {r['zero_shot']['top1']:.4f} top-5 {r['zero_shot']['top5']:.4f}"]
        for group, title in (("text_to_image", "text-to-image"), ("image_to_image", "image-to-image")):
            parts.append(title + " " + " ".join(f"{k} {v:.4f}" for k, v in r[group].items()))
        click.echo(f"{system['name']}: " + " | ".join(parts))


def _model_system(settings: Any, model: str, pretrained: str | None, dataset: Any, templates: list[str],
                  progress: bool) -> Any:
    from indexer.curation.evaluate import Embedded, embed_images, prompt_name
    from indexer.curation.labels import prompt_embeddings
    from indexer.ingest.pipeline import batch_size_for, workers_for
    from indexer.models.loading import load_model

    clip = load_model(model, pretrained if pretrained is not None else settings.pretrained, settings.device)
    batch, workers = batch_size_for(settings, clip.device), workers_for(settings, clip.device)
    images = embed_images(clip, dataset.paths, settings.max_image_pixels, batch, workers, progress)
    classes = prompt_embeddings(clip, [prompt_name(c) for c in dataset.classes], templates)
    weights = clip.identity.weights.removeprefix("sha256:")[:12] or "random"
    return Embedded(f"{clip.identity.architecture} ({weights})", images, classes)


def _vector_systems(settings: Any, collection: str | None, vectors: tuple[str, ...], dataset: Any,
                    templates: list[str]) -> list[Any]:
    from indexer.curation.evaluate import Embedded, prompt_name, stored_images
    from indexer.curation.labels import prompt_embeddings
    from indexer.models.loading import load_recorded_model
    from indexer.stores import open_store

    name = collection or settings.collection
    if remote.serving_url(settings, name) is not None:
        raise Conflict(f"eval reads the stored vectors of collection {name!r}, which the running server "
                       "holds: evaluate a model instead (--model, --pretrained), or stop the server first")
    store = open_store(settings, name)
    try:
        systems = []
        for vector in vectors or (None,):
            spec = store.schema.vector(vector)
            clip = load_recorded_model(spec.model, settings.device)
            classes = prompt_embeddings(clip, [prompt_name(c) for c in dataset.classes], templates)
            stored = stored_images(store, dataset.paths, spec.name)
            systems.append(Embedded(f"{name}:{spec.name}", stored, classes))
        return systems
    finally:
        store.close()


COMMANDS = [label, export, evaluate]
