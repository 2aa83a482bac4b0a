"""`clipsearch reembed / vectors / activate / drop-vector`: model upgrades without downtime.

Each is one call on the collection (indexer.collection.CollectionAPI): the local one, or, when a running
`clipsearch serve` holds an embedded collection, that server's (the same operations, run inside it
while it keeps serving).
"""

from __future__ import annotations

from typing import Any

import click

from clipsearch import remote
from clipsearch.common import collection_option, describe_model, emit, json_option, settings_from_flags


def _print_vectors(vectors: list[dict[str, Any]], count: int | None = None) -> None:
    for v in vectors:
        mark = "*" if v["active"] else " "
        progress = f"{v['count']}" + (f"/{count}" if count is not None else "")
        job = v.get("job") or {}
        extra = f"  job: {job['state']}" + (f" ({job['error']})" if job.get("error") else "") if job else ""
        click.echo(f"{mark} {v['name']}\t{describe_model(v['model'])}\t{v['state']}\t{progress}{extra}")


@click.command()
@collection_option
@json_option
def vectors(collection: str | None, as_json: bool) -> None:
    """List a collection's vectors: model, state and how many items have each (* = active)."""
    settings = settings_from_flags()
    name = collection or settings.collection
    found = [v.to_json() for v in remote.on_collection(settings, name, lambda c: c.vectors())]
    if as_json:
        emit({"collection": name, "vectors": found})
    else:
        _print_vectors(found)


@click.command()
@click.option("--model", required=True, help="open_clip architecture name or model-config JSON path.")
@click.option("--pretrained", default="", help="open_clip pretrained tag or local checkpoint path.")
@click.option(
    "--vector", "vector_name", default=None, help="Name of the new vector [default: from the model]."
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None)
@collection_option
@json_option
def reembed(
    model: str,
    pretrained: str,
    vector_name: str | None,
    device: str | None,
    collection: str | None,
    as_json: bool,
) -> None:
    """Embed every item of a collection with another model into a new named vector (or finish one a
    killed run left), while searches keep using the active vector; then `clipsearch activate NAME`."""
    settings = settings_from_flags(device=device)
    name = collection or settings.collection
    found = remote.on_collection(settings, name, lambda c: c.reembed(model, pretrained, name=vector_name),
                                 progress=not as_json)
    # The vector filled carries the run (a server's job, or this process's run) with its counts.
    spec = next(v for v in found if (v.name == vector_name if vector_name else v.job))
    job = spec.job or {}
    summary = {"collection": name, "vector": spec.name, "embedded": job.get("embedded", 0),
               "failed": job.get("failed", 0), "remaining": job.get("remaining", 0), "state": spec.state,
               "seconds": job.get("seconds", 0.0)}
    if as_json:
        emit(summary)
        return
    click.echo(
        f"{summary['collection']}:{summary['vector']}: {summary['embedded']} embedded, {summary['failed']} "
        f"failed, {summary['remaining']} remaining; {summary['state']}"
    )
    if summary["state"] == "ready":
        click.echo(f"switch queries to it with: clipsearch activate {summary['vector']}", err=True)


@click.command()
@click.argument("name")
@collection_option
def activate(name: str, collection: str | None) -> None:
    """Make vector NAME the one queries use (at once; a running server follows without a restart)."""
    settings = settings_from_flags()
    target = collection or settings.collection
    remote.on_collection(settings, target, lambda c: c.activate(name))
    click.echo(f"{target}: queries now use vector {name!r}")


@click.command("drop-vector")
@click.argument("name")
@collection_option
def drop_vector(name: str, collection: str | None) -> None:
    """Remove vector NAME and its storage (not the active one)."""
    settings = settings_from_flags()
    target = collection or settings.collection
    remote.on_collection(settings, target, lambda c: c.drop_vector(name))
    click.echo(f"{target}: vector {name!r} dropped")


COMMANDS = [reembed, vectors, activate, drop_vector]
