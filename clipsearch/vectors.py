"""`clipsearch reembed / vectors / activate / drop-vector`: model upgrades without downtime.

Each works on the collection directly, or, when a running `clipsearch serve` holds an embedded
collection, through that server's API (the same operations, run inside it while it keeps serving).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import click

from clipsearch import remote
from clipsearch.common import collection_option, describe_model, emit, json_option, settings_from_flags
from indexer.errors import Unavailable
from indexer.settings import Settings

POLL_S = 1.0


def _vectors_locally(settings: Settings, collection: str) -> list[dict[str, Any]]:
    from indexer.search.engine import collection_status
    from indexer.stores import open_store

    store = open_store(settings, collection)
    try:
        return collection_status(store)["vectors"]
    finally:
        store.close()


def _on_store(settings: Settings, collection: str, change: Callable[[Any], None]) -> None:
    from indexer.locking import collection_lock
    from indexer.stores import open_store

    with collection_lock(settings.home, collection, "clipsearch vectors"):
        store = open_store(settings, collection)
        try:
            change(store)
        finally:
            store.close()


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
    found = remote.local_or_through_server(
        settings,
        name,
        lambda: _vectors_locally(settings, name),
        lambda url: remote.call(settings, url, "GET", f"/v1/collections/{name}/vectors")["vectors"],
    )
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
    from indexer.ingest.reembed import reembed as run_reembed

    settings = settings_from_flags(device=device)
    name = collection or settings.collection

    def local() -> dict[str, Any]:
        return run_reembed(settings, name, model, pretrained, vector_name, progress=not as_json).summary()

    def through(url: str) -> dict[str, Any]:
        body = {"model": model, "pretrained": pretrained, "name": vector_name}
        started = remote.call(settings, url, "POST", f"/v1/collections/{name}/vectors", json=body)["vectors"]
        target = vector_name or next(v["name"] for v in started if v.get("job"))
        return _follow(settings, url, name, target)

    summary = remote.local_or_through_server(settings, name, local, through)
    if as_json:
        emit(summary)
        return
    click.echo(
        f"{summary['collection']}:{summary['vector']}: {summary['embedded']} embedded, {summary['failed']} "
        f"failed, {summary['remaining']} remaining; {summary['state']}"
    )
    if summary["state"] == "ready":
        click.echo(f"switch queries to it with: clipsearch activate {summary['vector']}", err=True)


def _follow(settings: Settings, url: str, collection: str, vector: str) -> dict[str, Any]:
    """Wait for the server's re-embedding job to end; its summary."""
    while True:
        found = remote.call(settings, url, "GET", f"/v1/collections/{collection}/vectors")["vectors"]
        spec = next(v for v in found if v["name"] == vector)
        job = spec.get("job") or {}
        if job.get("state") not in ("starting", "running"):
            if job.get("state") == "failed":
                raise Unavailable(f"re-embedding failed in the server: {job.get('error')}")
            return {
                "collection": collection,
                "vector": vector,
                "embedded": job.get("embedded", 0),
                "failed": job.get("failed", 0),
                "remaining": job.get("remaining", 0),
                "state": spec["state"],
                "seconds": job.get("seconds", 0.0),
            }
        time.sleep(POLL_S)


def _change(collection: str | None, change: Callable[[Any], None], method: str, route: str) -> str:
    """Apply a schema change to the collection, or through the server that holds it; the collection."""
    settings = settings_from_flags()
    target = collection or settings.collection
    remote.local_or_through_server(
        settings,
        target,
        lambda: _on_store(settings, target, change),
        lambda url: remote.call(settings, url, method, f"/v1/collections/{target}/vectors/{route}"),
    )
    return target


@click.command()
@click.argument("name")
@collection_option
def activate(name: str, collection: str | None) -> None:
    """Make vector NAME the one queries use (at once; a running server follows without a restart)."""
    from indexer.ingest.reembed import activate as run_activate

    target = _change(collection, lambda store: run_activate(store, name), "POST", f"{name}/activate")
    click.echo(f"{target}: queries now use vector {name!r}")


@click.command("drop-vector")
@click.argument("name")
@collection_option
def drop_vector(name: str, collection: str | None) -> None:
    """Remove vector NAME and its storage (not the active one)."""
    from indexer.ingest.reembed import drop_vector as run_drop

    target = _change(collection, lambda store: run_drop(store, name), "DELETE", name)
    click.echo(f"{target}: vector {name!r} dropped")


COMMANDS = [reembed, vectors, activate, drop_vector]
