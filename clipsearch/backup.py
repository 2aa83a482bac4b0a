"""`clipsearch snapshot`, `restore` and `copy`: backups and moves between backends (stores.transfer)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from clipsearch import remote
from clipsearch.common import collection_option, emit, json_option, settings_from_flags
from indexer.stores import transfer
from indexer.stores.transfer import TransferReport

STORES = ["edge", "qdrant", "faiss"]


@click.command()
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@collection_option
@json_option
def snapshot(out: Path, collection: str | None, as_json: bool) -> None:
    """Write a collection (vectors, payloads, schema, info) to the portable archive OUT.

    OUT is a tar file, gzip-compressed when its name ends in .gz or .tgz; it can be restored into
    any store (edge, qdrant, faiss). The collection's write lock is held meanwhile."""
    settings = settings_from_flags(collection=collection)

    def run_snapshot(shop: Any) -> TransferReport:
        started = time.perf_counter()
        done = shop.snapshot(out)
        return TransferReport(done.collection, done.store, done.points, done.vectors,
                              time.perf_counter() - started, archive=str(out), bytes=out.stat().st_size)

    report = remote.on_collection(settings, settings.collection, run_snapshot, progress=not as_json)
    _done(report, as_json, f"wrote {report.points} points of {report.collection!r} to {out}")


@click.command()
@click.argument("archive", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--collection", "-c", default=None, help="Restore under this name [default: the archived one's]."
)
@click.option("--replace", is_flag=True, help="Drop an existing collection of that name first.")
@json_option
def restore(archive: Path, collection: str | None, replace: bool, as_json: bool) -> None:
    """Create a collection in the configured store (CLIPSEARCH_STORE) from a snapshot ARCHIVE.

    The whole archive is verified before anything is created or replaced; a failed restore leaves
    no collection behind."""
    settings = settings_from_flags()
    if collection is not None:
        _refuse_if_served(settings, collection, "restore replaces the collection, which the running server "
                          "holds: restore under another name (--collection NEW), or stop the server first")
    report = transfer.restore(settings, archive, collection, replace=replace, progress=not as_json)
    _done(report, as_json, f"restored {report.points} points into {report.collection!r} ({settings.store})")


@click.command()
@click.option("--to-store", type=click.Choice(STORES), required=True, help="The store to copy into.")
@click.option("--to-collection", default=None, help="Name in the target store [default: the same name].")
@collection_option
@click.option("--replace", is_flag=True, help="Drop an existing target collection first.")
@json_option
def copy(
    to_store: str, to_collection: str | None, collection: str | None, replace: bool, as_json: bool
) -> None:
    """Copy a collection into another store (or under another name) with its vectors, payloads, schema
    and info, without re-embedding.

    The target uses the same settings with the store replaced (for qdrant: CLIPSEARCH_QDRANT_URL)."""
    source = settings_from_flags(collection=collection)
    _refuse_if_served(source, source.collection, "copy reads the whole collection, which the running "
                      "server holds: `clipsearch snapshot OUT` (through the server) then `clipsearch restore "
                      "OUT` into the other store, or stop the server first")
    target = source.with_flags(store=to_store)
    name = to_collection or source.collection
    report = transfer.copy_collection(
        source, source.collection, target, name, replace=replace, progress=not as_json
    )
    _done(report, as_json, f"copied {report.points} points into {name!r} ({to_store})")


def _done(report: TransferReport, as_json: bool, line: str) -> None:
    if as_json:
        emit(report.to_json())
    else:
        click.echo(f"{line} in {report.seconds:.1f}s")


COMMANDS = [snapshot, restore, copy]


def _refuse_if_served(settings: Any, collection: str, advice: str) -> None:
    from indexer.errors import Conflict

    if remote.serving_url(settings, collection) is not None:
        raise Conflict(advice)
