"""Label runs (`clipsearch label`): scores exactly a softmax over the label prompts, written as declared,
indexed fields that filters find on every backend, human decisions that override them, built-in label
sets and templates, the command, and a run over the CIFAR-10 test images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexer.curation import labels as lb
from indexer.errors import BadInput, DiskFull, ItemNotFound, SchemaError
from indexer.schema import CollectionSchema, ModelIdentity, VectorSpec
from indexer.stores import Record, open_store
from indexer.stores.base import VectorStore
from indexer.stores.filters import Filter
from tests.clirun import cli_home, run, run_json
from tests.helpers import SHARED_DATA, make_settings

CIFAR = SHARED_DATA / "cifar10-test" / "test"
IDENTITY = ModelIdentity(model="test", pretrained="", architecture="test", weights="w", dim=4)
LABELS = ["cat", "dog", "car"]
LABEL_VECTORS = np.eye(3, 4, dtype=np.float32)  # cat, dog, car along the first three axes
SCALE = 10.0


def unit(*values: float) -> np.ndarray:
    vector = np.array(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


def softmax(vector: np.ndarray) -> np.ndarray:
    logits = SCALE * (LABEL_VECTORS @ vector).astype(np.float64)
    return np.exp(logits) / np.exp(logits).sum()


# id suffix -> (vector or None, metadata)
ITEMS: dict[str, tuple[np.ndarray | None, dict[str, Any]]] = {
    "1": (unit(1, 0, 0.1, 0), {"brand": "acme"}),  # cat, then car
    "2": (unit(0.1, 1, 0, 0), {}),  # dog, then cat
    "3": (unit(0.52, 0.5, 0, 0.6), {}),  # cat, barely: under the threshold
    "4": (unit(0, 0.2, 1, 0), {"brand": "acme"}),
    "5": (None, {}),  # no "default" vector yet (still being re-embedded): skipped
}
THRESHOLD = 0.6


def item_id(suffix: str) -> str:
    return f"00000000-0000-0000-0000-00000000000{suffix}"


def test_the_constructed_items_are_what_the_tests_say() -> None:
    assert softmax(ITEMS["1"][0]).max() > THRESHOLD and softmax(ITEMS["4"][0]).argmax() == 2
    probs = softmax(ITEMS["3"][0])
    assert probs.argmax() == 0 and probs.max() < THRESHOLD


@pytest.fixture(params=["edge", "faiss", "qdrant"])
def store(request: pytest.FixtureRequest, tmp_path: Path, tiny_checkpoint: Path) -> VectorStore:
    overrides: dict[str, Any] = {"store": request.param}
    if request.param == "qdrant":
        overrides["qdrant"] = {"path": tmp_path / "qdrant"}
    settings = make_settings(tmp_path / "home", tiny_checkpoint, **overrides)
    schema = CollectionSchema(
        vectors={"default": VectorSpec("default", IDENTITY), "other": VectorSpec("other", IDENTITY)},
        active="default", fields={"brand": "keyword"},
    )
    opened = open_store(settings, "things", create=schema)
    opened.upsert([
        Record(item_id(k), {"other": unit(1, 1, 1, 1), **({"default": v} if v is not None else {})},
               {"uri": f"/img/{k}.jpg", "path": f"/img/{k}.jpg", "fingerprint": k, "metadata": dict(meta)})
        for k, (v, meta) in ITEMS.items()
    ])
    yield opened
    opened.close()


def run_labels(store: VectorStore, **options: Any) -> lb.LabelReport:
    options = {"top_k": 2, "threshold": THRESHOLD, **options}
    return lb.label_store(store, None, LABELS, label_vectors=LABEL_VECTORS, logit_scale=SCALE,
                          progress=False, **options)


def metadata(store: VectorStore, suffix: str) -> dict[str, Any]:
    return store.retrieve([item_id(suffix)])[0].payload["metadata"]


def where(store: VectorStore, **conditions: Any) -> set[str]:
    query = Filter.parse({"must": [{"key": k, "match": {"value": v}} for k, v in conditions.items()]})
    resolved = query.resolve(store.schema)
    assert store.count(resolved) == len(list(store.scan(resolved)))
    return {r.id[-1] for r in store.scan(resolved)}


def test_a_run_writes_top_labels_and_scores_as_indexed_fields(store: VectorStore) -> None:
    report = run_labels(store)
    summary = report.summary()
    assert summary == {"run": "label", "labeled": 4, "unsure": 1, "counts": {"cat": 1, "dog": 1, "car": 1},
                       "seconds": summary["seconds"]}
    assert report.skipped == 1
    for suffix in ("1", "2", "3", "4"):
        probs = softmax(ITEMS[suffix][0])
        best = np.argsort(-probs)[:2]
        found = metadata(store, suffix)
        assert found["label_top"] == [LABELS[i] for i in best]
        assert found["label_top_scores"] == pytest.approx(probs[best].tolist(), abs=2e-6)
        assert found["label_score"] == pytest.approx(probs[best[0]], abs=2e-6)
        assert found["label"] == (LABELS[best[0]] if probs.max() >= THRESHOLD else lb.UNSURE)
    assert metadata(store, "1")["brand"] == "acme"  # the rest of the metadata is kept
    assert "label" not in metadata(store, "5")
    assert store.schema.fields["label"] == "keyword" and store.schema.fields["label_score"] == "float"
    assert store.schema.fields["human_label_at"] == "datetime"
    # Filters (pushed down to the backend) find the labels, arrays of top labels included.
    assert where(store, label="cat") == {"1"}
    assert where(store, label="unsure") == {"3"}
    assert where(store, label_top="dog") == {"2", "3", "4"}
    assert where(store, label="car", brand="acme") == {"4"}
    recorded = lb.label_runs(store)["label"]
    settings = (recorded["labels"], recorded["top_k"], recorded["threshold"], recorded["labeled"])
    assert settings == (LABELS, 2, 0.6, 4)


def test_a_filtered_run_under_another_name_leaves_the_rest_alone(store: VectorStore) -> None:
    run_labels(store)
    acme = Filter.parse({"must": [{"key": "brand", "match": {"value": "acme"}}]}).resolve(store.schema)
    report = run_labels(store, run="kind", store_filter=acme, top_k=1, threshold=0.0)
    assert (report.labeled, report.unsure, dict(report.counts)) == (2, 0, {"cat": 1, "car": 1})
    assert metadata(store, "4")["kind"] == "car" and metadata(store, "4")["kind_top"] == ["car"]
    assert "kind" not in metadata(store, "2") and metadata(store, "2")["label"] == "dog"
    assert set(lb.label_runs(store)) == {"label", "kind"}
    assert lb.human_field("kind") == "human_kind" and store.schema.fields["human_kind"] == "keyword"


def test_a_run_from_another_vector(store: VectorStore) -> None:
    report = run_labels(store, vector="other", run="other_run", threshold=0.0)
    assert report.labeled == 5 and report.skipped == 0  # every item has "other"


def test_human_decisions_override_zero_shot_labels(store: VectorStore) -> None:
    run_labels(store)
    [accepted] = lb.review(store, "label", [item_id("1")], "accept")
    assert (accepted["human_label"], accepted["effective_label"]) == ("cat", "cat")
    assert accepted["human_label_at"].endswith("Z")
    [unsure] = lb.review(store, "label", [item_id("3")], "accept")  # an unsure item: its best guess
    assert unsure["human_label"] == "cat" and unsure["label"] == lb.UNSURE
    changed = lb.review(store, "label", [item_id("2"), item_id("4")], "change", "horse")
    assert [c["effective_label"] for c in changed] == ["horse", "horse"]
    counts = lb.label_counts(store, "label")
    assert counts["counts"] == {"cat": 2, "horse": 2} and counts["reviewed"] == 4
    assert counts["zero_shot"] == {"cat": 1, "dog": 1, "car": 1, "unsure": 1}
    assert where(store, human_label="horse") == {"2", "4"}

    lb.review(store, "label", [item_id("4")], "reject")
    assert lb.effective_label(metadata(store, "4")) is None
    assert lb.label_counts(store)["counts"] == {"cat": 2, "horse": 1, "rejected": 1}
    lb.review(store, "label", [item_id("4")], "clear")
    assert lb.effective_label(metadata(store, "4")) == "car" and "human_label_at" not in metadata(store, "4")
    # A re-run keeps people's decisions.
    run_labels(store)
    assert metadata(store, "2")["human_label"] == "horse"


def test_review_pages_and_bad_decisions(store: VectorStore) -> None:
    run_labels(store, threshold=0.0, top_k=3)
    total, page = lb.review_items(store, "label", "cat")
    assert total == 2 and [i["id"][-1] for i in page] == ["1", "3"]  # most confident first
    assert lb.review_items(store, "label", "cat", offset=1, limit=1)[1][0]["id"][-1] == "3"
    lb.review(store, "label", [item_id("1")], "accept")
    assert lb.review_items(store, "label", "cat", pending=True)[0] == 1
    with pytest.raises(ItemNotFound):
        lb.review(store, "label", [item_id("9")], "accept")
    with pytest.raises(ItemNotFound):
        lb.review(store, "label", ["not-an-id"], "reject")
    with pytest.raises(BadInput, match="new label"):
        lb.review(store, "label", [item_id("1")], "change")
    with pytest.raises(BadInput, match="no label run 'nope'"):
        lb.review_items(store, "nope", "cat")


def test_a_failed_write_stops_the_run_with_its_error(
    store: VectorStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real_set_payloads = store.set_payloads

    def set_payloads(payloads: dict[str, Any]) -> None:
        calls.append(len(payloads))
        if len(calls) == 2:
            raise DiskFull("disk full: no room to write collection 'things'")
        real_set_payloads(payloads)

    monkeypatch.setattr(store, "set_payloads", set_payloads)
    with pytest.raises(DiskFull, match="no room"):
        run_labels(store, batch=1)
    assert calls == [1, 1]  # nothing written after the failure
    assert "label" not in lb.label_runs(store)  # a run that failed is not recorded


def test_scores_are_a_softmax_by_hand_in_any_chunking() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 8)).astype(np.float32)
    labels = rng.normal(size=(7, 8)).astype(np.float32)
    logits = 4.0 * vectors.astype(np.float64) @ labels.T.astype(np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    best, scores = lb.top_labels(vectors, labels, 4.0, 3)
    tied = lb.top_labels(np.array([[1, 0, 0, 0]], dtype=np.float32), np.eye(5, 4, dtype=np.float32), 1.0, 3)
    assert tied[0].tolist() == [[0, 1, 2]]  # labels 1, 2, 3 (and 4) tie: the earlier ones win
    assert (best == np.argsort(-probs, axis=1)[:, :3]).all()
    assert np.allclose(scores, np.take_along_axis(probs, best, axis=1), atol=1e-6)
    again = lb.top_labels(vectors, labels, 4.0, 3, chunk=7)
    assert (again[0] == best).all() and np.allclose(again[1], scores, atol=1e-6)  # BLAS: ulps apart
    every, _ = lb.top_labels(vectors, labels, 4.0, 99)  # k beyond the labels: all of them
    assert every.shape == (50, 7)


def test_built_in_label_sets_and_templates(tmp_path: Path) -> None:
    imagenet = lb.load_labels("imagenet")
    assert len(imagenet) == 1000 == len(set(imagenet)) and imagenet[0] == "tench"
    assert lb.load_labels("CIFAR10")[:3] == ["airplane", "automobile", "bird"]
    assert lb.load_labels(" cat, dog ,cat,, car") == ["cat", "dog", "car"]
    assert [len(lb.load_templates(n)) for n in ("imagenet", "imagenet-full", "cifar10")] == [7, 80, 18]
    assert lb.load_templates() == list(lb.PROMPT_TEMPLATES)
    listed = tmp_path / "classes.txt"
    listed.write_text("# my classes\nred car\n\nblue car\nred car\n")
    assert lb.load_labels(labels_file=listed) == ["red car", "blue car"]
    templates = tmp_path / "templates.txt"
    templates.write_text("# ensemble\na photo of a {}.\na drawing of a {}.\n")
    assert lb.load_templates(templates) == ["a photo of a {}.", "a drawing of a {}."]
    templates.write_text("a photo\n")
    with pytest.raises(BadInput, match="needs {}"):
        lb.load_templates(templates)
    with pytest.raises(BadInput, match="cannot read"):
        lb.load_templates(tmp_path / "missing.txt")
    with pytest.raises(BadInput, match="reserved"):
        lb.load_labels("cat,unsure")
    with pytest.raises(BadInput, match="either --labels or --labels-file"):
        lb.load_labels()
    with pytest.raises(SchemaError, match="run"):
        lb.run_fields("bad name!")


# --- the command ------------------------------------------------------------------------------------


def test_label_command(tmp_path: Path, tiny_checkpoint: Path, tiny_model: Any, imagenet_dir: Path) -> None:
    from indexer.ingest.pipeline import index_sources
    from tests.helpers import photo_copies

    photo_copies(imagenet_dir, tmp_path / "photos", 12)
    with cli_home(tmp_path / "home", tiny_checkpoint) as settings:
        index_sources(settings, [tmp_path / "photos"], model=tiny_model, progress=False)
        first = run_json("label", "--labels", "cat,dog,car", "--top-k", "2")
        assert set(first) == {"run", "labeled", "unsure", "counts", "seconds"}
        assert first["run"] == "label" and first["labeled"] == 12 and first["unsure"] == 0
        assert sum(first["counts"].values()) == 12
        name, count = next(iter(first["counts"].items()))
        second = run("label", "--labels", "red,blue", "--where", f"label = {name}", "--run", "colour").stdout
        assert second.startswith(f"{count} items labelled under 'colour' (0 unsure)")
        third = run_json("label", "--labels", "cifar10", "--templates", "cifar10", "--run", "colour2",
                         "--threshold", "1",
                         "--filter", json.dumps({"must_not": [{"key": "label", "match": {"value": name}}]}))
        assert (third["labeled"], third["unsure"], third["counts"]) == (12 - count, 12 - count, {})
        bad = run("label", "--labels", "a,b", "--where", "label", check=False)
        assert bad.returncode == 3 and "FIELD OP VALUE" in bad.stderr  # the search grammar


def test_a_filter_on_an_undeclared_field_is_refused(settings: Any, tiny_model: Any, imagenet_dir: Path,
                                                    tmp_path: Path) -> None:
    from indexer.errors import InvalidFilter
    from indexer.ingest.pipeline import index_sources
    from tests.helpers import photo_copies

    photo_copies(imagenet_dir, tmp_path / "photos", 2)
    index_sources(settings, [tmp_path / "photos"], model=tiny_model, progress=False)
    with pytest.raises(InvalidFilter, match="not declared"):
        lb.label_collection(settings, None, ["a", "b"], model=tiny_model, progress=False,
                            query_filter={"must": [{"key": "colour", "match": {"value": "x"}}]})


# --- CIFAR-10 --------------------------------------------------------------------------------------


def cifar_subset(root: Path, per_class: int) -> Path:
    if not CIFAR.is_dir():
        pytest.skip(f"CIFAR-10 test images absent: {CIFAR}")
    if per_class >= 1000:
        return CIFAR
    for folder in sorted(CIFAR.iterdir()):
        (root / folder.name).mkdir(parents=True)
        for image in sorted(folder.glob("*.jpg"))[:per_class]:
            (root / folder.name / image.name).symlink_to(image)
    return root


@pytest.mark.parametrize("per_class", [30, pytest.param(1000, marks=pytest.mark.slow)], ids=["300", "10000"])
def test_label_run_over_cifar10(per_class: int, tmp_path: Path, tiny_checkpoint: Path, tiny_model) -> None:
    """Every image labelled with the built-in CIFAR-10 classes and templates, exactly as a computation
    from the stored vectors and the prompts says, and found by filters on the labels."""
    from indexer.ingest.pipeline import index_sources

    data = cifar_subset(tmp_path / "cifar", per_class)
    settings = make_settings(tmp_path / "home", tiny_checkpoint, batch_size=256)
    assert index_sources(settings, [data], model=tiny_model, progress=False).embedded == per_class * 10
    names, templates = lb.load_labels("cifar10"), lb.load_templates("cifar10")
    report = lb.label_collection(settings, None, names, model=tiny_model, templates=templates, threshold=0.12,
                                 top_k=3, progress=False)
    total = per_class * 10
    assert report.labeled == total and report.unsure + sum(report.counts.values()) == total

    prompts = np.stack([tiny_model.encode_texts([t.format(n) for t in templates]).mean(axis=0)
                        for n in names])
    prompts /= np.linalg.norm(prompts, axis=1, keepdims=True)
    store = open_store(settings, settings.collection)
    try:
        records = list(store.scan(with_vectors=True))
        vectors = np.stack([r.vectors["default"] for r in records])
        logits = tiny_model.logit_scale * vectors.astype(np.float64) @ prompts.T
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        expected = [names[i] if p.max() >= 0.12 else lb.UNSURE
                    for i, p in zip(probs.argmax(axis=1), probs, strict=True)]
        found = [r.payload["metadata"]["label"] for r in records]
        agree = np.mean([a == b for a, b in zip(found, expected, strict=True)])
        assert agree > 0.999  # float32 in batches vs float64 here: only exact ties could differ
        counts = lb.label_counts(store)
        for name, count in report.counts.items():
            query = Filter.parse({"must": [{"key": "label", "match": {"value": name}}]})
            resolved = query.resolve(store.schema)
            assert store.count(resolved) == count == counts["counts"][name]
    finally:
        store.close()
