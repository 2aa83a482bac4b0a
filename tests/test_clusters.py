"""Clusters and outliers (indexer.curation.clusters): exact on constructed vectors, through a real store.

Blobs: unit vectors around well-separated centres; k-means must return exactly the blobs, numbered by
decreasing size, each blob's centre-most point first. Outliers: points placed at known distances from
a tight group must come out most isolated first. Then the fields written back with --store, and the
real `clipsearch clusters` command once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer.curation.clusters import (
    MAX_SEED,
    cluster_collection,
    kmeans,
    load_vectors,
    neighbours,
    outlier_scores,
)
from indexer.errors import BadInput
from indexer.schema import CollectionSchema, ModelIdentity
from indexer.stores import Record, open_store
from indexer.stores.base import canonical_id
from indexer.stores.filters import Filter
from tests.helpers import make_settings

DIM = 32
IDENTITY = ModelIdentity("synthetic", "", "synthetic", "", DIM)
SIZES = [40, 30, 20, 15, 10]


def blobs(seed: int, spread: float = 0.02) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectors, their blob, and the blob centres (random directions: pairwise cosines near 0)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(SIZES), DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.concatenate([c + spread * rng.normal(size=(n, DIM)) for c, n in zip(centres, SIZES, strict=True)])
    truth = np.repeat(np.arange(len(SIZES)), SIZES)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), truth, centres


@pytest.mark.parametrize("seed", range(8))
def test_kmeans_finds_exactly_the_blobs_numbered_by_size(seed: int) -> None:
    x, truth, _ = blobs(seed)
    order = np.random.default_rng(100 + seed).permutation(len(x))  # input order must not matter
    found = kmeans(x[order], len(SIZES), seed=seed)
    # Sizes are distinct and clusters are numbered largest first, so the labels must equal the blobs.
    assert found.assignment.tolist() == truth[order].tolist()
    assert np.bincount(found.assignment).tolist() == SIZES


def test_most_central_member_is_the_one_nearest_the_centroid() -> None:
    x, truth, centres = blobs(1)
    found = kmeans(x, len(SIZES))
    for c in range(len(SIZES)):
        members = found.members(c)
        expected = np.flatnonzero(truth == c)
        assert sorted(members.tolist()) == expected.tolist()
        cosines = x[members] @ found.centroids[c]
        assert np.all(np.diff(cosines) <= 1e-6)  # most central first
        assert found.centroids[c] @ centres[c] > 0.99  # the centroid is the blob's centre


def test_k_out_of_range_is_refused_naming_the_flag() -> None:
    x, _, _ = blobs(0)
    with pytest.raises(BadInput, match="--k"):
        kmeans(x, len(x) + 1)
    with pytest.raises(BadInput, match="--k"):
        kmeans(x, 0)


@pytest.mark.parametrize("seed", [-1, MAX_SEED + 1, 2**40])
def test_seed_outside_what_faiss_holds_is_refused_naming_the_flag(seed: int) -> None:
    x, _, _ = blobs(0)
    with pytest.raises(BadInput, match="--seed"):
        kmeans(x, 3, seed=seed)


@pytest.fixture
def store(tmp_path: Path, tiny_checkpoint: Path):
    settings = make_settings(tmp_path / "home", tiny_checkpoint)
    schema = CollectionSchema.new(IDENTITY, fields={"width": "integer"})
    opened = open_store(settings, "vectors", create=schema)
    yield opened
    opened.close()


def _put(store, vectors: np.ndarray) -> list[str]:
    ids = [canonical_id(f"00000000-0000-4000-8000-{i:012d}") for i in range(len(vectors))]
    store.upsert([
        Record(id_, {"default": v}, {"uri": f"/p/{i}.jpg", "path": f"/p/{i}.jpg", "fingerprint": "1:1",
                                     "metadata": {"width": i}})
        for i, (id_, v) in enumerate(zip(ids, vectors, strict=True))
    ])
    return ids


def isolated_points() -> tuple[np.ndarray, list[int]]:
    """A tight group of 30 around one direction, and 4 points at known, growing angles from it:
    the last is the most isolated. Returns the vectors and the 4 outliers' indices, most isolated first."""
    rng = np.random.default_rng(7)
    base = np.zeros(DIM)
    base[0] = 1.0
    group = base + 0.01 * rng.normal(size=(30, DIM))
    away = []
    for angle in (0.4, 0.8, 1.2, 1.6):  # radians from the group, in distinct directions
        direction = np.zeros(DIM)
        direction[len(away) + 1] = 1.0
        away.append(np.cos(angle) * base + np.sin(angle) * direction)
    x = np.concatenate([group, np.array(away)])
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), [33, 32, 31, 30]


def test_outliers_most_isolated_first_through_the_store(store) -> None:
    x, expected = isolated_points()
    ids = _put(store, x)
    loaded_ids, _, vectors = load_vectors(store)
    assert loaded_ids == sorted(ids)
    position = [loaded_ids.index(i) for i in ids]  # loaded in id order; ours were made in that order
    assert position == list(range(len(ids)))
    found, scores = neighbours(store, loaded_ids, vectors, 5)
    assert (found != np.arange(len(ids))[:, None]).all()  # never its own neighbour
    # The store's answers equal exact search (small collections are searched exhaustively).
    exact = vectors @ vectors.T
    np.fill_diagonal(exact, -np.inf)
    assert np.allclose(scores, -np.sort(-exact, axis=1)[:, :5], atol=1e-5)
    isolation = outlier_scores(scores)
    assert np.argsort(-isolation)[:4].tolist() == expected
    assert isolation[:30].max() < isolation[30]


def test_cluster_report_and_stored_fields_are_filterable(store) -> None:
    x, truth, _ = blobs(3)
    ids = _put(store, x)
    report = cluster_collection(store, len(SIZES), central=3, outliers=5, neighbours_k=5, save=True)
    assert [c["size"] for c in report["clusters"]] == SIZES
    by_id = {id_: i for i, id_ in enumerate(ids)}
    for c, cluster in enumerate(report["clusters"]):
        assert len(cluster["central"]) == 3
        assert {truth[by_id[item["id"]]] for item in cluster["central"]} == {c}
        assert [i["score"] for i in cluster["central"]] == sorted((i["score"] for i in cluster["central"]),
                                                                   reverse=True)
    scores = [o["score"] for o in report["outliers"]]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    # Stored: declared fields, every item, the rest of the payload kept.
    assert store.schema.fields["cluster"] == "integer" and store.schema.fields["outlier"] == "float"
    records = {r.id: r.payload for r in store.scan()}
    assert all(records[i]["metadata"]["cluster"] == truth[n] for n, i in enumerate(ids))
    assert all(records[i]["metadata"]["width"] == n for n, i in enumerate(ids))
    query = Filter.model_validate({"must": [{"key": "cluster", "match": {"value": 4}}]})
    assert store.count(query.resolve(store.schema)) == SIZES[4]
    most_isolated = report["outliers"][0]
    outlier_filter = Filter.model_validate(
        {"must": [{"key": "outlier", "range": {"gte": most_isolated["score"] - 1e-6}}]}
    )
    assert store.count(outlier_filter.resolve(store.schema)) == 1


def test_clusters_command(tmp_path: Path, tiny_checkpoint: Path, imagenet_dir: Path) -> None:
    """The real CLI over a freshly indexed folder: JSON shape, and --store writes the fields."""
    from tests.clirun import cli_home, run, run_json
    from tests.helpers import copy_photos

    photos = copy_photos(imagenet_dir, tmp_path / "photos", 12)
    with cli_home(tmp_path / "home", tiny_checkpoint) as settings:
        run("index", str(photos), "--json")
        report = run_json("clusters", "--k", "3", "--central", "2", "--outliers", "4", "--store")
        assert report["k"] == 3 and report["stored"] is True
        assert sum(c["size"] for c in report["clusters"]) == 12
        assert [c["cluster"] for c in report["clusters"]] == [0, 1, 2]
        assert len(report["outliers"]) == 4
        assert all(item["uri"].startswith(str(photos)) for c in report["clusters"] for item in c["central"])
        opened = open_store(settings, settings.collection)
        try:
            assert {r.payload["metadata"]["cluster"] for r in opened.scan()} == {0, 1, 2}
        finally:
            opened.close()
        refused = run("clusters", "--k", "13", check=False)
        assert refused.returncode != 0 and "--k" in refused.stderr
