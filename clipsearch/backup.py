"""`clipsearch snapshot`, `restore` and `copy`: backups and moves between backends (stores.transfer)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from clipsearch import remote
from clipsearch.common import collection_option, emit, json_option, settings_from_flags
from indexer.collection import restore as restore_archive
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
    report = remote.on_collection(settings, settings.collection, _timed(lambda shop: shop.snapshot(out), out),
                                  progress=not as_json)
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
    if collection is not None and remote.serving_url(settings, collection) is not None:
        # The running server holds that collection: it restores the archive, uploaded to it.
        report = remote.on_collection(settings, collection,
                                      _timed(lambda shop: shop.restore(archive, replace=replace), archive))
    else:
        made = _timed(lambda _: restore_archive(archive, collection, replace=replace, settings=settings,
                                                progress=not as_json), archive)
        report = made(None)
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
    copied = _timed(lambda shop: shop.copy(to_collection, to_store=to_store, replace=replace))
    report = remote.on_collection(source, source.collection, copied, progress=not as_json)
    _done(report, as_json, f"copied {report.points} points into {report.collection!r} ({report.store})")


def _timed(fn: Callable[[Any], Any], archive: Path | None = None) -> Callable[[Any], TransferReport]:
    """fn (a Collection's snapshot, restore or copy, local or the server's) with the time it took and
    the archive here it wrote or read, as the CLI reports it."""

    def run(shop: Any) -> TransferReport:
        started = time.perf_counter()
        done = fn(shop)
        return TransferReport(done.collection, done.store, done.points, done.vectors,
                              time.perf_counter() - started, source=done.source,
                              archive=None if archive is None else str(archive),
                              bytes=None if archive is None else archive.stat().st_size)

    return run


def _done(report: TransferReport, as_json: bool, line: str) -> None:
    if as_json:
        emit(report.to_json())
    else:
        click.echo(f"{line} in {report.seconds:.1f}s")


COMMANDS = [snapshot, restore, copy]

