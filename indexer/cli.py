"""The `clipsearch` command line: a thin layer over the library.

Results go to stdout (one JSON document with --json); progress and logs go to stderr.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from indexer.settings import Settings

# Errors a user can fix: printed as one line, exit code 1, no traceback.
_USER_ERRORS: tuple[type[Exception], ...] = ()


def _user_errors() -> tuple[type[Exception], ...]:
    global _USER_ERRORS
    if not _USER_ERRORS:
        from indexer.decode import ImageDecodeError
        from indexer.engine import ItemNotFound
        from indexer.locking import CollectionLocked
        from indexer.models import ModelLoadError, ModelMismatchError
        from indexer.stores import StoreError

        _USER_ERRORS = (
            ModelLoadError,
            ModelMismatchError,
            StoreError,
            CollectionLocked,
            ImageDecodeError,
            ItemNotFound,
            FileNotFoundError,
        )
    return _USER_ERRORS


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except _user_errors() as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            click.echo(f"error: {message}", err=True)
            sys.exit(1)


def _settings(**flags: Any) -> Settings:
    """Flags given on the command line override CLIPSEARCH_* variables, which override defaults."""
    return Settings(**{name: value for name, value in flags.items() if value is not None})


def _emit(data: Any) -> None:
    click.echo(json.dumps(data, ensure_ascii=False))


collection_option = click.option(
    "--collection", "-c", default=None, help="Collection name [default: default]."
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
model_options = [
    click.option("--model", default=None, help="open_clip architecture name or model-config JSON path."),
    click.option("--pretrained", default=None, help="open_clip pretrained tag or local checkpoint path."),
    click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None),
]


def with_model_options(func: Any) -> Any:
    for option in reversed(model_options):
        func = option(func)
    return func


@click.group(cls=_Group)
@click.option("-v", "--verbose", is_flag=True, help="Log more to stderr.")
def main(verbose: bool) -> None:
    """Semantic image search over your own collections, with open_clip models."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )


@main.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@collection_option
@with_model_options
@click.option(
    "--batch-size", type=int, default=None, help="Images per encoder batch [default: 256 on CUDA, 64 on CPU]."
)
@click.option(
    "--workers",
    type=int,
    default=None,
    help="Decode processes; 1: a decode thread in this process [default: one per core on CUDA, "
    "one per 4 cores on CPU].",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "int8"]),
    default=None,
    help="int8: approximate CPU fast path (int8 image encoder, embeddings within cosine ~0.999 of fp32). "
    "A collection keeps the precision it was built with [default: fp32].",
)
@json_option
def index(
    sources: tuple[Path, ...],
    collection: str | None,
    model: str | None,
    pretrained: str | None,
    device: str | None,
    batch_size: int | None,
    workers: int | None,
    precision: str | None,
    as_json: bool,
) -> None:
    """Embed new and changed images under SOURCES; drop the ones that are gone."""
    from indexer.pipeline import index_sources

    settings = _settings(
        model=model,
        pretrained=pretrained,
        device=device,
        batch_size=batch_size,
        workers=workers,
        precision=precision,
    )
    report = index_sources(settings, list(sources), collection, progress=not as_json or sys.stderr.isatty())
    if as_json:
        _emit(report.summary())
        return
    s = report.summary()
    click.echo(
        f"{s['collection']}: {s['embedded']} embedded, {s['unchanged']} unchanged, "
        f"{s['removed']} removed, {s['failed']} failed in {s['seconds']:.1f}s"
    )
    if report.failed:
        click.echo("see `clipsearch status` for the failed files and why", err=True)


@main.command()
@click.argument("text", required=False)
@click.option(
    "--image", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Find images like this."
)
@click.option("-k", type=click.IntRange(1, 10_000), default=10, show_default=True, help="Number of results.")
@collection_option
@json_option
def search(text: str | None, image: Path | None, k: int, collection: str | None, as_json: bool) -> None:
    """Find images by TEXT, or by an example --image."""
    from indexer.decode import decode_image
    from indexer.engine import SearchEngine

    if bool(text) == bool(image):
        raise click.UsageError("give either TEXT or --image")
    settings = _settings()
    with SearchEngine(settings, collection) as engine:
        if image:
            query = decode_image(image, settings.max_image_pixels, draft_size=engine.model.draft_size)
            results = engine.search_image(query, k)
        else:
            results = engine.search_text(text or "", k)
    if as_json:
        _emit({"results": [r.__dict__ for r in results]})
        return
    for r in results:
        click.echo(f"{r.score:.4f}\t{r.uri}")


@main.command()
@click.argument(
    "images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--labels", required=True, help='Comma-separated class names, e.g. "cat,dog,car".')
@collection_option
@with_model_options
@json_option
def classify(
    images: tuple[Path, ...],
    labels: str,
    collection: str | None,
    model: str | None,
    pretrained: str | None,
    device: str | None,
    as_json: bool,
) -> None:
    """Score IMAGES against LABELS (zero-shot); uses the collection's model unless --model is given."""
    from indexer.classify import classify_embeddings, parse_labels
    from indexer.decode import decode_image

    label_list = parse_labels(labels)
    if not label_list:
        raise click.UsageError("--labels needs at least one non-empty label")
    settings = _settings(model=model, pretrained=pretrained, device=device)
    clip = _classify_model(settings, collection, explicit=model is not None or pretrained is not None)
    uris = [str(path.resolve()) for path in images]
    pictures = [decode_image(uri, settings.max_image_pixels, draft_size=clip.draft_size) for uri in uris]
    scored = classify_embeddings(clip, clip.encode_images(pictures), label_list)
    rows = [
        {"uri": uri, "labels": [{"label": lb, "score": s} for lb, s in labels_]}
        for uri, labels_ in zip(uris, scored, strict=True)
    ]
    if as_json:
        _emit(rows)
        return
    for row in rows:
        best = ", ".join(f"{x['label']} {x['score']:.3f}" for x in row["labels"][:5])
        click.echo(f"{row['uri']}\t{best}")


def _classify_model(settings: Settings, collection: str | None, explicit: bool) -> Any:
    from indexer.models import ModelIdentity, load_model, load_recorded_model
    from indexer.stores import CollectionNotFound, open_store

    if not explicit:
        try:
            store = open_store(settings, collection or settings.collection)
        except CollectionNotFound:
            pass
        else:
            try:
                model = store.read_info().get("model")
            finally:
                store.close()
            if model:
                return load_recorded_model(ModelIdentity.from_dict(model), settings.device)
    return load_model(settings.model, settings.pretrained, settings.device)


@main.command()
@collection_option
@json_option
def status(collection: str | None, as_json: bool) -> None:
    """Count, model and failed files of a collection."""
    from indexer.engine import collection_status
    from indexer.stores import open_store

    settings = _settings()
    store = open_store(settings, collection or settings.collection)
    try:
        report = collection_status(store)
    finally:
        store.close()
    if as_json:
        _emit(report)
        return
    model = report["model"]
    click.echo(f"collection: {report['collection']}")
    click.echo(f"count:      {report['count']}")
    click.echo(
        f"model:      {model['architecture']} ({model['weights'] or 'random'}, {model['dim']}-d)"
        if model
        else "model:      none"
    )
    click.echo(f"failed:     {len(report['failed'])}")
    for entry in report["failed"]:
        click.echo(f"  {entry['uri']}: {entry['reason']}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@collection_option
@click.option(
    "--watch",
    "watch",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Also index this folder into the collection, again every --interval (repeatable).",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="Seconds between two syncs of the --watch folders.",
)
def serve(host: str, port: int, collection: str | None, watch: tuple[Path, ...], interval: float) -> None:
    """Run the HTTP API; with --watch, it also keeps the collection in line with folders."""
    import uvicorn

    from search_api.app import create_app

    settings = _settings(collection=collection)
    if watch:  # an index run writing the collection: one line now, rather than a failed startup later
        from indexer.locking import collection_lock
        from search_api.watch import ADVICE, HOLDER

        with collection_lock(settings.home, settings.collection, HOLDER, ADVICE):
            pass
    app = create_app(settings, watch=watch, watch_interval=interval)
    uvicorn.run(app, host=host, port=port, log_level="info")


@main.command()
@click.option("--port", type=int, default=8501, show_default=True)
@click.option("--api-url", default=None, help="Where the API runs [default: http://127.0.0.1:8000].")
def ui(port: int, api_url: str | None) -> None:
    """Run the Streamlit UI (talks to the API over HTTP)."""
    import ui as ui_package

    env = dict(os.environ)
    if api_url:
        env["CLIPSEARCH_API_URL"] = api_url
    app = Path(ui_package.__file__).with_name("app.py")
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app),
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
    ]
    sys.exit(subprocess.call(command, env=env))


if __name__ == "__main__":
    main()
