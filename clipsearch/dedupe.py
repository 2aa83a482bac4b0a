"""`clipsearch duplicates` and `clipsearch clusters`: curation reports over a collection's vectors
(indexer.curation.duplicates, indexer.curation.clusters). Neither deletes or moves a file."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from clipsearch import remote
from clipsearch.common import collection_option, emit, json_option, settings_from_flags
from indexer.curation.clusters import MAX_SEED
from indexer.curation.duplicates import DEFAULT_THRESHOLD, HASH_DISTANCE
from indexer.errors import BadInput


@click.command()
@click.option(
    "--threshold",
    type=click.FloatRange(0.0, 1.01),
    default=DEFAULT_THRESHOLD,
    show_default=True,
    help="CLIP cosine at or above which two images are near duplicates; above 1 turns this path off.",
)
@click.option(
    "--hash-distance",
    type=click.IntRange(-1, 32),
    default=HASH_DISTANCE,
    show_default=True,
    help="Perceptual-hash bits (of 64) within which two images are the same picture; -1 turns it off.",
)
@click.option("--vector", default=None, help="Compare this named vector [default: the active one].")
@click.option(
    "--keep-list",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the images to keep (every image but the duplicates of a keeper) to this .csv or .json.",
)
@click.option(
    "--remove-list",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the duplicates (every group member but its keeper) to this .csv or .json.",
)
@collection_option
@json_option
def duplicates(
    threshold: float,
    hash_distance: int,
    vector: str | None,
    keep_list: Path | None,
    remove_list: Path | None,
    collection: str | None,
    as_json: bool,
) -> None:
    """Groups of exact (same bytes) and near duplicates, each with the image to keep: the largest,
    then the oldest. Never deletes anything. Files indexed before hashes were taken are hashed now
    (and their hashes stored)."""
    from indexer.curation.export import duplicate_lists, write_list

    lists = {"keep": keep_list, "remove": remove_list}
    for which, out in lists.items():  # a wrong name is refused before the work, not after
        if out is not None and out.suffix.lower() not in (".csv", ".json"):
            raise BadInput(f"--{which}-list {out} must end in .csv or .json (its format)")
    settings = settings_from_flags(collection=collection)

    def run_duplicates(shop: Any) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        found = asdict(shop.duplicates(threshold=threshold, hash_distance=hash_distance, vector=vector))
        items = []
        if keep_list:  # every item's id and uri, for the keep list: the collection's JSON Lines export
            document, _ = shop.export_document("jsonl")
            rows = (json.loads(line) for line in document.splitlines() if line.strip())
            items = [(str(row["id"]), str(row.get("uri", ""))) for row in rows]
        return found, items

    report, items = remote.on_collection(settings, settings.collection, run_duplicates,
                                         progress=not as_json or sys.stderr.isatty())
    rows = duplicate_lists(report, items) if keep_list or remove_list else {}
    for which, out in lists.items():
        if out is not None:
            write_list(rows[which], which, out)
            click.echo(f"{which} list: {len(rows[which])} images written to {out}", err=True)
    if as_json:
        emit(report)
        return
    for group in report["groups"]:
        click.echo(f"{group['kind']}: keep {group['keep']}")
        for uri, score in zip(group["others"], group["scores"], strict=True):
            click.echo(f"    {score:.4f}  {uri}")
    others = sum(len(g["others"]) for g in report["groups"])
    click.echo(
        f"{len(report['groups'])} groups, {others} duplicates among {report['items']} images "
        f"in {report['seconds']:.1f}s",
        err=True,
    )


@click.command()
@click.option("-k", "--k", "k", type=click.IntRange(min=1), default=20, show_default=True, help="Clusters.")
@click.option("--central", type=click.IntRange(min=0), default=5, show_default=True,
              help="Most central images listed per cluster.")
@click.option("--outliers", type=click.IntRange(min=0), default=20, show_default=True,
              help="Most isolated images listed.")
@click.option("--neighbours", type=click.IntRange(min=1), default=10, show_default=True,
              help="Outlier score: 1 - mean cosine to this many nearest images.")
@click.option("--store", "save", is_flag=True,
              help="Write `cluster` and `outlier` into each image's metadata (filterable, exported).")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True, help="k-means seed.")
@click.option("--vector", default=None, help="Cluster this named vector [default: the active one].")
@collection_option
@json_option
def clusters(
    k: int,
    central: int,
    outliers: int,
    neighbours: int,
    save: bool,
    seed: int,
    vector: str | None,
    collection: str | None,
    as_json: bool,
) -> None:
    """k-means clusters of the collection's images (FAISS, spherical), each with its size and most
    central images, and the most isolated images (outliers) first."""
    settings = settings_from_flags(collection=collection)

    def run_clusters(shop: Any) -> dict[str, Any]:
        started = time.perf_counter()
        found = shop.clusters(k, central=central, seed=seed, vector=vector, store=save, neighbours=neighbours)
        isolated = shop.outliers(outliers, neighbours=neighbours, vector=vector).outliers if outliers else []
        return {"k": found.k, "clusters": [asdict(c) for c in found.clusters],
                "outliers": [asdict(o) for o in isolated], "stored": save,
                "seconds": round(time.perf_counter() - started, 3)}

    report = remote.on_collection(settings, settings.collection, run_clusters,
                                  progress=not as_json or sys.stderr.isatty())
    if as_json:
        emit(report)
        return
    for cluster in report["clusters"]:
        central_uris = ", ".join(item["uri"] for item in cluster["central"])
        click.echo(f"cluster {cluster['cluster']}: {cluster['size']} images; central: {central_uris}")
    click.echo("outliers (most isolated first):")
    for item in report["outliers"]:
        click.echo(f"    {item['score']:.4f}  {item['uri']}")


@click.command()
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="How many.")
@click.option("--neighbours", type=click.IntRange(1, 100), default=10, show_default=True,
              help="Outlier score: 1 - mean cosine to this many nearest images.")
@click.option("--vector", default=None, help="This named vector [default: the active one].")
@collection_option
@json_option
def outliers(limit: int, neighbours: int, vector: str | None, collection: str | None, as_json: bool) -> None:
    """The most isolated images of the collection first (through the server that holds it, if one does)."""
    settings = settings_from_flags(collection=collection)
    found = remote.on_collection(settings, settings.collection,
                                 lambda c: c.outliers(limit, neighbours=neighbours, vector=vector))
    if as_json:
        emit({"outliers": [{"id": o.id, "uri": o.uri, "score": o.score} for o in found]})
        return
    for item in found:
        click.echo(f"{item.score:.4f}  {item.uri}")


COMMANDS = [duplicates, clusters, outliers]
