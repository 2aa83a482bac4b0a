"""`clipsearch label / export / eval`: zero-shot labelling of whole collections, exports, and measuring
a model on labelled data (docs/curation.md).

label and export are each a call on the collection (indexer.collection.CollectionAPI): the local one,
or the running server's that holds it (clipsearch.remote.on_collection), the same call either way. eval
measures open_clip models (no collection) and reads a collection's stored vectors here.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import click

from clipsearch import remote
from clipsearch.common import collection_option, emit, json_option, settings_from_flags
from indexer.errors import Conflict
from indexer.limits import load_json

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


def given_filter(filter_json: str | None, max_depth: int) -> dict[str, Any] | None:
    """--filter's JSON (None without it); `max_depth`: how deeply it may nest (CLIPSEARCH_LIMITS_JSON_DEPTH).
    --where goes to the collection as it is: it reads the expressions against its declared fields."""
    return load_json(filter_json, "--filter", max_depth) if filter_json else None


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
    from indexer.curation.labels import load_labels

    settings = settings_from_flags(device=device, collection=collection)
    names = load_labels(labels, labels_file)
    wanted = given_filter(filter_json, settings.limits.json_depth)

    def run_label(shop: Any) -> dict[str, Any]:
        return asdict(shop.label(names, run=run, top_k=top_k, threshold=threshold, templates=templates,
                                 where=list(where), filter=wanted, vector=vector))

    summary = remote.on_collection(settings, settings.collection, run_label,
                                   progress=not as_json or sys.stderr.isatty())
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

    from indexer.curation.export import DUPLICATES
    from indexer.curation.labels import DEFAULT_RUN

    settings = settings_from_flags(collection=collection)
    wanted = given_filter(filter_json, settings.limits.json_depth)

    def run_export(shop: Any) -> dict[str, Any]:
        chosen = DUPLICATES if duplicates else run
        if chosen is None and DEFAULT_RUN in shop.label_runs():
            chosen = DEFAULT_RUN
        return asdict(shop.export(out, fmt, where=list(where), filter=wanted, run=chosen,
                                  formulas=csv_formulas, query=query, k=k, copy=copy))

    report = remote.on_collection(settings, settings.collection, run_export, progress=not as_json)
    if as_json:
        emit(report)
        return
    missing = f", {report['missing']} files missing" if report["missing"] else ""
    click.echo(f"{report['items']} items ({report['labelled']} labelled) exported to {out} as {fmt}{missing}")


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
    if not models and report_dir is None:  # stored vectors only: one call on the collection, or its server's
        name = collection or settings.collection
        document = remote.on_collection(
            settings, name, lambda shop: shop.eval(data, vectors=vectors, templates=templates))
        if as_json:
            emit(document)
            return
        systems = document["systems"] if "systems" in document else \
            {f"{name}:{vectors[0] if vectors else 'active vector'}": document}
        click.echo(f"{len(systems)} system(s), {time.perf_counter() - started:.1f}s")
        for system_name, result in systems.items():
            click.echo(f"{system_name}: {_metrics_line(result)}")
        return
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
        click.echo(f"{system['name']}: {_metrics_line(system['result'])}")


def _metrics_line(result: dict[str, Any]) -> str:
    parts = [f"zero-shot top-1 {result['zero_shot']['top1']:.4f} top-5 {result['zero_shot']['top5']:.4f}"]
    for group, title in (("text_to_image", "text-to-image"), ("image_to_image", "image-to-image")):
        parts.append(title + " " + " ".join(f"{k} {v:.4f}" for k, v in result[group].items()))
    return " | ".join(parts)


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
        raise Conflict(f"eval with --model or --report reads the stored vectors of collection {name!r} here, "
                       "and the running server holds it: leave out --model and --report (the stored vectors "
                       "are then measured through the server), or stop the server first")
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
