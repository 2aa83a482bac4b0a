"""Backups and moves (indexer.stores.transfer): snapshot -> restore and copy between every pair of backends
give a collection with the same schema, info, points and vectors (bit for bit), answering every
query as the original did; damaged or foreign archives are refused and create nothing.

The source collections are built through the store API on the real backends (Qdrant Edge,
qdrant-client local mode, FAISS): two named vectors, one only partly filled (still "building"),
declared fields of every type, payloads with missing, null and array values, and failures in info.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import tarfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexer.errors import BadInput, Conflict
from indexer.schema import CollectionSchema, ModelIdentity, VectorSpec
from indexer.settings import Settings
from indexer.stores import collection_exists, open_store, transfer
from indexer.stores.base import Record
from indexer.stores.filters import Filter
from tests.clirun import CLI, REPO

BACKENDS = ["edge", "qdrant", "faiss"]
POINTS = 300
CHUNK = 64  # several chunks, the last one partial
INFO = {"failed": {"file:///photos/broken.jpg": "cannot identify image file"}}
FIELDS = {
    "brand": "keyword", "price": "float", "stock": "integer", "sale": "bool",
    "added": "datetime", "where": "geo", "caption": "text",
}
QUERY_FILTERS: list[dict[str, Any] | None] = [
    None,
    {"must": [{"key": "brand", "match": {"value": "acme"}}]},
    {"must": [{"key": "price", "range": {"gte": 10, "lt": 60}}],
     "must_not": [{"key": "sale", "match": {"value": True}}]},
    {"should": [{"key": "added", "range": {"gte": "2024-01-20T00:00:00Z"}}, {"is_empty": {"key": "brand"}}]},
    {"must": [{"key": "where", "geo_radius": {"center": {"lat": 38.7, "lon": -9.1}, "radius": 300_000}}]},
    {"must": [{"has_vector": "better"}, {"key": "stock", "match": {"any": [1, 2, 3]}}]},
]


def settings_for(home: Path, store: str) -> Settings:
    """One home for all three stores, as the CLI's `copy --to-store` sees it."""
    return Settings(home=home, store=store, qdrant={"path": home / "qdrant"})


def make_schema() -> CollectionSchema:
    clip = ModelIdentity("test-a", "", "test-a", "", 16)
    better = ModelIdentity("test-b", "", "test-b", "sha256:00ff", 12)
    schema = CollectionSchema.new(clip, vector="clip", fields=FIELDS)  # type: ignore[arg-type]
    return schema.with_vector(VectorSpec("better", better, state="building"))


def unit(rng: np.random.Generator, dim: int) -> np.ndarray:
    vector = rng.standard_normal(dim).astype(np.float32)
    return vector / np.linalg.norm(vector)


def make_records() -> list[Record]:
    rng = np.random.default_rng(7)
    records = []
    for i in range(POINTS):
        metadata: dict[str, Any] = {
            "brand": ["acme", "globex", "initech", "umbrella"][i % 4],
            "price": round(float(rng.uniform(0, 100)), 2),
            "stock": i % 6,
            "sale": i % 5 == 0,
            "added": f"2024-01-{1 + i % 28:02d}T{i % 24:02d}:30:00Z",
            "where": {"lat": float(rng.uniform(36, 42)), "lon": float(rng.uniform(-10, -6))},
            "caption": f"photo number {i} of a {['red', 'blue'][i % 2]} thing",
        }
        if i % 7 == 0:
            metadata["brand"] = ["acme", "globex"]
        if i % 11 == 0:
            del metadata["added"], metadata["where"]
        if i % 13 == 0:
            metadata["brand"] = None
        vectors = {"clip": unit(rng, 16)}
        if i % 3:  # the building vector reaches two points in three
            vectors["better"] = unit(rng, 12)
        payload = {"uri": f"file:///photos/{i}.jpg", "path": f"/photos/{i}.jpg", "fingerprint": f"{i:08x}",
                   "metadata": metadata}
        records.append(Record(str(uuid.uuid5(uuid.NAMESPACE_URL, str(i))), vectors, payload))
    return records


def build(settings: Settings, name: str) -> None:
    records = make_records()
    store = open_store(settings, name, create=make_schema())
    try:
        store.upsert(records[: POINTS // 2])
        store.upsert(records[POINTS // 2:])
        store.delete([r.id for r in records[:5]])  # deleted points must not come back
        store.write_info(INFO)
        store.flush()
    finally:
        store.close()


def observe(settings: Settings, name: str) -> dict[str, Any]:
    """Everything a user can see of a collection: schema, info, counts, points, and query answers."""
    rng = np.random.default_rng(11)
    store = open_store(settings, name)
    try:
        schema = store.schema
        store_filters = [Filter.parse(f).resolve(schema) if f else None for f in QUERY_FILTERS]
        answers = {}
        for vector, spec in schema.vectors.items():
            for q in range(3):
                query = unit(rng, spec.dim)
                for f, store_filter in enumerate(store_filters):
                    hits = store.search(query, 10, using=vector, filter=store_filter)
                    answers[vector, q, f] = [(h.id, h.score) for h in hits]
                answers[vector, q, "offset"] = [
                    (h.id, h.score) for h in store.search(query, 10, using=vector, offset=5)
                ]
        return {
            "schema": transfer.portable_schema(schema).to_dict(),
            "info": store.read_info(),
            "count": store.count(),
            "counts": [store.count(f) for f in store_filters],
            "points": {r.id: r for r in store.scan(with_vectors=True)},
            "answers": answers,
        }
    finally:
        store.close()


# What the stores themselves change in what they are given (test_stores_keep_what_they_are_given
# shows each; the transfer itself is lossless, test_the_archive_holds_exactly_what_the_store_holds):
# - qdrant-edge-py 0.9 parses payload floats 1 ulp off now and then (-9.819521902348205 comes back
#   as ...203), like serde_json without its float_roundtrip feature;
# - FAISS (our faiss_store.index.normalised) and qdrant-client's local mode renormalise vectors that
#   are already unit length, which moves the last bit of about a third of them; local mode even
#   renormalises its stored vectors in place while searching. Edge and Qdrant proper keep unit
#   vectors as they are.
ROUNDS_PAYLOAD_FLOATS = {"edge"}
ROUNDS_VECTORS = {"qdrant", "faiss"}


def assert_same(original: dict[str, Any], copy: dict[str, Any], source: str, target: str) -> None:
    """`copy` is `original` restored or copied: bit for bit where the stores allow (see above)."""
    assert copy["schema"] == original["schema"]
    assert copy["info"] == original["info"] == INFO
    assert copy["count"] == original["count"] == POINTS - 5
    assert copy["counts"] == original["counts"]
    assert copy["points"].keys() == original["points"].keys()
    exact_vectors = not {source, target} & ROUNDS_VECTORS
    for point_id, record in original["points"].items():
        restored = copy["points"][point_id]
        if target in ROUNDS_PAYLOAD_FLOATS:
            assert restored.payload == approx_json(record.payload), point_id
        else:
            assert restored.payload == record.payload, point_id
        assert restored.vectors.keys() == record.vectors.keys(), point_id
        for name, vector in record.vectors.items():
            got = np.asarray(restored.vectors[name], np.float32)
            if exact_vectors:
                assert got.tobytes() == vector.tobytes(), point_id
            else:
                assert np.abs(got - vector).max() <= 2.4e-7, point_id  # a few ulp around 0.5
    assert copy["answers"].keys() == original["answers"].keys()
    for query, hits in original["answers"].items():
        assert hits, query  # every query finds something, so the comparison means something
        got_hits = copy["answers"][query]
        assert [h[0] for h in got_hits] == [h[0] for h in hits], query
        assert [h[1] for h in got_hits] == pytest.approx([h[1] for h in hits], abs=1e-5), query


def approx_json(value: Any) -> Any:
    """`value` with every float compared to 1e-14 relative (the last bit or two)."""
    if isinstance(value, dict):
        return {k: approx_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [approx_json(v) for v in value]
    if isinstance(value, float):
        return pytest.approx(value, rel=1e-14, abs=0)
    return value


# --- fixtures: one source collection per backend, and its archive --------------------------------


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("transfer") / "home"


@pytest.fixture(scope="module")
def originals(home: Path) -> dict[str, dict[str, Any]]:
    seen = {}
    for kind in BACKENDS:
        build(settings_for(home, kind), f"src-{kind}")
        seen[kind] = observe(settings_for(home, kind), f"src-{kind}")
    return seen


@pytest.fixture(scope="module")
def archives(home: Path, originals: dict[str, Any]) -> dict[str, Path]:
    paths = {}
    for kind in BACKENDS:
        suffix = ".tar.gz" if kind == "edge" else ".tar"  # both flavours
        path = home.parent / f"{kind}{suffix}"
        store = open_store(settings_for(home, kind), f"src-{kind}")
        try:
            report = transfer.snapshot(store, path, store_kind=kind, chunk_points=CHUNK)
        finally:
            store.close()
        assert report.points == POINTS - 5
        paths[kind] = path
    return paths


# --- the archive --------------------------------------------------------------------------------


def test_archive_holds_a_manifest_and_checksummed_chunks(archives: dict[str, Path]) -> None:
    with tarfile.open(archives["faiss"]) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile(transfer.MANIFEST))  # type: ignore[arg-type]
    assert names[-1] == transfer.MANIFEST
    assert manifest["format"] == "clipsearch-archive" and manifest["format_version"] == 1
    assert manifest["collection"] == "src-faiss" and manifest["source_store"] == "faiss"
    assert manifest["schema"] == transfer.portable_schema(make_schema()).to_dict()
    assert manifest["info"] == INFO
    assert manifest["points"] == POINTS - 5
    assert manifest["chunks"] == [CHUNK] * 4 + [POINTS - 5 - 4 * CHUNK]
    better = sum(1 for i in range(5, POINTS) if i % 3)
    assert manifest["vectors"] == {
        "clip": {"dim": 16, "count": POINTS - 5}, "better": {"dim": 12, "count": better}
    }
    assert set(manifest["members"]) == set(names) - {transfer.MANIFEST}
    assert "chunks/000000/has_vector/better.npy" in names
    with tarfile.open(archives["edge"], "r:gz") as tar:  # .tar.gz names are gzip-compressed
        assert tar.getnames()[-1] == transfer.MANIFEST


@pytest.mark.parametrize("kind", BACKENDS)
def test_the_archive_holds_exactly_what_the_store_holds(
    home: Path, originals: dict[str, Any], kind: str, tmp_path: Path
) -> None:
    """The transfer itself is lossless: ids, payloads and vectors bit for bit, whatever the store."""
    settings = settings_for(home, kind)
    archive = tmp_path / "exact.tar"
    transfer.snapshot_collection(settings, f"src-{kind}", archive)
    store = open_store(settings, f"src-{kind}")
    try:
        held = {r.id: r for r in store.scan(with_vectors=True)}
    finally:
        store.close()
    manifest = transfer.verify(archive)
    archived = {r.id: r for chunk in transfer.read_records(archive, manifest) for r in chunk}
    assert archived.keys() == held.keys()
    for point_id, record in held.items():
        assert archived[point_id].payload == record.payload
        assert archived[point_id].vectors.keys() == record.vectors.keys()
        for name, vector in record.vectors.items():
            assert archived[point_id].vectors[name].tobytes() == np.asarray(vector, np.float32).tobytes()


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("edge", marks=pytest.mark.xfail(strict=True, reason="edge rounds payload floats")),
        pytest.param("qdrant", marks=pytest.mark.xfail(strict=True, reason="local mode renormalises")),
        pytest.param("faiss", marks=pytest.mark.xfail(strict=True, reason="faiss_store renormalises")),
    ],
)
def test_stores_keep_what_they_are_given(kind: str, tmp_path: Path) -> None:
    """What makes copies bit for bit everywhere; fails today for the reasons at ROUNDS_VECTORS. When
    a store is fixed, its case passes here (strict xfail fails): then drop it from the ROUNDS sets."""
    settings = settings_for(tmp_path, kind)
    records = make_records()
    store = open_store(settings, "given", create=make_schema())
    try:
        store.upsert(records)
        store.search(records[0].vectors["clip"], 5)  # local mode changes stored vectors while searching
        kept = {r.id: r for r in store.scan(with_vectors=True)}
    finally:
        store.close()
    payloads = sum(kept[r.id].payload != r.payload for r in records)
    vectors = sum(
        kept[r.id].vectors[name].tobytes() != vector.tobytes()
        for r in records
        for name, vector in r.vectors.items()
    )
    assert (payloads, vectors) == (0, 0), f"{payloads} payloads and {vectors} vectors changed"


def test_snapshot_leaves_no_temp_file_behind(archives: dict[str, Path]) -> None:
    folder = archives["edge"].parent
    assert not [p.name for p in folder.iterdir() if ".tmp-" in p.name]


# --- restore and copy between every pair of backends --------------------------------------------


@pytest.mark.parametrize("target", BACKENDS)
@pytest.mark.parametrize("source", BACKENDS)
def test_restore_into_any_backend_answers_as_the_original(
    home: Path, originals: dict[str, Any], archives: dict[str, Path], source: str, target: str
) -> None:
    settings = settings_for(home, target)
    name = f"restored-{source}"
    report = transfer.restore(settings, archives[source], name)
    assert (report.collection, report.store, report.points) == (name, target, POINTS - 5)
    assert report.vectors == {"clip": POINTS - 5, "better": sum(1 for i in range(5, POINTS) if i % 3)}
    assert_same(originals[source], observe(settings, name), source, target)


@pytest.mark.parametrize("target", BACKENDS)
@pytest.mark.parametrize("source", BACKENDS)
def test_copy_between_backends_answers_as_the_original(
    home: Path, originals: dict[str, Any], source: str, target: str
) -> None:
    if source == target:
        pytest.skip("a copy within one backend is tested under another name below")
    name = f"copied-{source}"
    report = transfer.copy_collection(
        settings_for(home, source), f"src-{source}", settings_for(home, target), name
    )
    assert (report.collection, report.store, report.points) == (name, target, POINTS - 5)
    assert_same(originals[source], observe(settings_for(home, target), name), source, target)


def test_copy_within_a_backend_under_another_name(home: Path, originals: dict[str, Any]) -> None:
    settings = settings_for(home, "edge")
    transfer.copy_collection(settings, "src-edge", settings, "edge-twin")
    assert_same(originals["edge"], observe(settings, "edge-twin"), "edge", "edge")


def test_an_existing_target_is_kept_unless_replace_is_given(
    home: Path, originals: dict[str, Any], archives: dict[str, Path]
) -> None:
    edge, faiss = settings_for(home, "edge"), settings_for(home, "faiss")
    with pytest.raises(Conflict, match="--replace.*--collection"):
        transfer.restore(edge, archives["faiss"], "src-edge")
    with pytest.raises(Conflict, match="--replace.*--to-collection"):
        transfer.copy_collection(edge, "src-edge", faiss, "src-faiss")
    assert_same(originals["faiss"], observe(faiss, "src-faiss"), "faiss", "faiss")  # untouched

    transfer.restore(edge, archives["qdrant"], "replaced")
    transfer.restore(edge, archives["faiss"], "replaced", replace=True)
    assert_same(originals["faiss"], observe(edge, "replaced"), "faiss", "edge")
    transfer.copy_collection(faiss, "src-faiss", edge, "replaced", replace=True)
    assert_same(originals["faiss"], observe(edge, "replaced"), "faiss", "edge")


def test_a_collection_is_not_copied_onto_itself(home: Path) -> None:
    settings = settings_for(home, "faiss")
    with pytest.raises(BadInput, match="onto itself"):
        transfer.copy_collection(settings, "src-faiss", settings, "src-faiss", replace=True)
    assert collection_exists(settings, "src-faiss")


# --- damaged and foreign archives ---------------------------------------------------------------


def _flip_byte_in(archive: Path, member: str) -> bytes:
    data = bytearray(archive.read_bytes())
    with tarfile.open(archive) as tar:
        offset = tar.getmember(member).offset_data
    data[offset + 200] ^= 0x55
    return bytes(data)


def _tar(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _with_manifest(archive: Path, **changes: Any) -> bytes:
    with tarfile.open(archive) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]
    manifest = {**json.loads(members[transfer.MANIFEST]), **changes}
    members[transfer.MANIFEST] = json.dumps(manifest).encode()
    return _tar(members)


DAMAGE = {
    "truncated": (lambda a: a["faiss"].read_bytes()[: a["faiss"].stat().st_size // 2], "truncated"),
    "truncated gzip": (lambda a: a["edge"].read_bytes()[: a["edge"].stat().st_size * 2 // 3], "truncated"),
    "flipped byte": (
        lambda a: _flip_byte_in(a["faiss"], "chunks/000002/vectors/clip.npy"),
        "chunks/000002/vectors/clip.npy fails its checksum",
    ),
    "not a tar file": (lambda a: b"PK\x03\x04 this is a zip, or something else", "not a tar archive"),
    "foreign tar": (lambda a: _tar({"photos/1.jpg": b"\xff\xd8\xff"}), "no manifest.json"),
    "foreign gzip": (lambda a: gzip.compress(b"hello"), "not a"),
    "newer format": (lambda a: _with_manifest(a["faiss"], format_version=2), "newer than this clipsearch"),
    "other format": (
        lambda a: _with_manifest(a["faiss"], format="something-else"), "not a clipsearch archive"
    ),
    "wrong count": (lambda a: _with_manifest(a["faiss"], points=7), "inconsistent"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_or_foreign_archive_is_refused_and_creates_nothing(
    home: Path, archives: dict[str, Path], damage: str, tmp_path: Path
) -> None:
    make, message = DAMAGE[damage]
    bad = tmp_path / "bad.tar"
    bad.write_bytes(make(archives))
    settings = settings_for(home, "faiss")
    with pytest.raises(BadInput, match=message) as caught:
        transfer.restore(settings, bad, "from-damaged")
    assert str(bad) in str(caught.value)
    assert not collection_exists(settings, "from-damaged")


# --- the command line ---------------------------------------------------------------------------


def test_snapshot_restore_and_copy_through_the_cli(
    home: Path, originals: dict[str, Any], tmp_path: Path
) -> None:
    env = {**os.environ, "CLIPSEARCH_HOME": str(home), "CLIPSEARCH_STORE": "qdrant",
           "CLIPSEARCH_QDRANT_PATH": str(home / "qdrant"), "CLIPSEARCH_COLLECTION": "src-qdrant"}

    def clipsearch(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, *args], capture_output=True, text=True,
                              env=env, cwd=REPO, timeout=300)

    archive = tmp_path / "backup.tar.gz"
    done = clipsearch("snapshot", str(archive), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["collection"] == "src-qdrant" and summary["points"] == POINTS - 5
    assert summary["vectors"]["better"] < summary["vectors"]["clip"] == POINTS - 5
    assert summary["archive"] == str(archive) and summary["bytes"] == archive.stat().st_size

    done = clipsearch("restore", str(archive), "--collection", "cli-restored", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["points"] == POINTS - 5

    done = clipsearch("restore", str(archive), "--collection", "cli-restored")
    assert done.returncode == 5, done.stderr  # conflict
    assert done.stderr.splitlines()[-1].startswith("error: collection 'cli-restored' already exists")
    assert "--replace" in done.stderr

    done = clipsearch("copy", "--to-store", "faiss", "--to-collection", "cli-copied", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["collection"], summary["store"], summary["points"]) == ("cli-copied", "faiss", POINTS - 5)
    assert "seconds" in summary

    restored = observe(settings_for(home, "qdrant"), "cli-restored")
    assert_same(originals["qdrant"], restored, "qdrant", "qdrant")
    assert_same(originals["qdrant"], observe(settings_for(home, "faiss"), "cli-copied"), "qdrant", "faiss")

    done = clipsearch("restore", str(tmp_path))
    assert done.returncode == 2  # click: a directory is not an archive


# --- a collection written by the previous release -----------------------------------------------


def test_a_version_1_collection_moves_with_its_vectors_and_results(tmp_path: Path) -> None:
    """The v1 edge fixture (tests/fixtures/v1) snapshots without being rewritten, and restores into
    every backend as a version-2 collection with the same vectors, info and results."""
    fixtures = Path(__file__).parent / "fixtures" / "v1"
    expected = json.loads((fixtures / "expected.json").read_text())
    with tarfile.open(fixtures / "edge.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    old = settings_for(tmp_path / "home", "edge")
    info_file = old.collection_dir("photos") / "info.json"
    before = info_file.read_bytes()
    archive = tmp_path / "v1.tar"
    transfer.snapshot_collection(old, "photos", archive)
    assert info_file.read_bytes() == before  # reading is not a first write

    for kind in BACKENDS:
        settings = settings_for(tmp_path / "restored", kind)
        transfer.restore(settings, archive)
        store = open_store(settings, "photos")
        try:
            assert list(store.schema.vectors) == ["default"]
            assert store.schema.vectors["default"].model == ModelIdentity.from_dict(expected["model"])
            assert store.read_info() == {"failed": expected["failed"]}
            points = {r.id: r for r in store.scan(with_vectors=True)}
            assert len(points) == len(expected["points"])
            for point in expected["points"]:
                assert points[point["id"]].payload == point["payload"]
                want = np.asarray(point["vector"], np.float32)
                got = points[point["id"]].vectors["default"]
                if kind in ROUNDS_VECTORS:
                    assert np.abs(got - want).max() <= 2.4e-7, kind
                else:
                    assert got.tobytes() == want.tobytes(), kind
            edge_results = expected["stores"]["edge"]["results"]
            for query, results in zip(expected["queries"], edge_results, strict=True):
                hits = store.search(np.asarray(query, np.float32), expected["k"])
                assert [h.id for h in hits] == [r["id"] for r in results], kind
                assert [h.score for h in hits] == pytest.approx([r["score"] for r in results], abs=1e-5)
        finally:
            store.close()
