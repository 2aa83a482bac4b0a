"""`clipsearch eval`: every metric exact on constructed embeddings whose answers are worked out by hand,
datasets from an ImageFolder tree or a CSV, the report, and the command on real images against a
computation from the same stored vectors."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from indexer.curation import evaluate as ev
from indexer.errors import BadInput
from tests.clirun import cli_home, run, run_json
from tests.helpers import SHARED_DATA

CIFAR = SHARED_DATA / "cifar10-test" / "test"


def one_hot(count: int) -> np.ndarray:
    return np.eye(count, dtype=np.float32)


def test_zero_shot_top1_top5_per_class_and_confusion() -> None:
    # Six classes along the axes; each image's ranking of the classes is its coordinates' order.
    images = np.array([
        [0.9, 0.1, 0, 0, 0, 0],          # class 0: predicted 0
        [0.5, 0.8, 0, 0, 0, 0],          # class 0: predicted 1, class 0 second (in the top 5)
        [-1, 0.1, 0.5, 0.4, 0.3, 0.2],   # class 1: ranked 2,3,4,5,1,0 -> fifth, in the top 5
        [0.2, -1, 0.6, 0.5, 0.4, 0.3],   # class 1: ranked last -> not in the top 5
        [0, 0, 1, 0, 0, 0],              # class 2: predicted 2
    ], dtype=np.float32)
    labels = np.array([0, 0, 1, 1, 2])
    names = ["a", "b", "c", "d", "e", "f"]
    result = ev.zero_shot(images, labels, one_hot(6), names)
    assert result.top1 == pytest.approx(2 / 5)
    assert result.top5 == pytest.approx(4 / 5)
    assert result.per_class == {
        "a": {"top1": 0.5, "top5": 1.0, "count": 2},
        "b": {"top1": 0.0, "top5": 0.5, "count": 2},
        "c": {"top1": 1.0, "top5": 1.0, "count": 1},
    }  # classes without images are not listed
    expected = np.zeros((6, 6), dtype=int)
    expected[0, 0] = expected[0, 1] = 1
    expected[1, 2] = 2
    expected[2, 2] = 1
    assert (result.confusion == expected).all()


def test_top5_with_fewer_than_five_classes_counts_every_class() -> None:
    images = np.array([[0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    result = ev.zero_shot(images, np.array([0, 0]), one_hot(2), ["x", "y"])
    assert (result.top1, result.top5) == (0.5, 1.0)


def test_text_to_image_recall() -> None:
    images = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.6, 0.6]], dtype=np.float32)
    labels = np.array([0, 1, 1, 2])
    queries = np.array([
        [1, 0],    # class 0: image 0 first                      -> found at 1
        [0, 1],    # class 1: image 2 first                      -> found at 1
        [-1, 0],   # class 2: images 2 (class 1), 3 (class 2)    -> found at 2
        [0, -1],   # class 3: no images -> not a query
    ], dtype=np.float32)
    result = ev.text_to_image(queries, images, labels, ks=(1, 2, 3))
    assert result == {"recall@1": pytest.approx(2 / 3), "recall@2": 1.0, "recall@3": 1.0}


def angles(*degrees: float) -> np.ndarray:
    radians = np.radians(degrees)
    return np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)


# Points on a circle: cosine similarity falls with the angle between them, so each ranking is by
# angular distance. A0 0, A1 10, B0 25, A2 90, B1 100, C0 210 degrees.
CIRCLE = angles(0, 10, 25, 90, 100, 210)
CIRCLE_LABELS = np.array([0, 0, 1, 0, 1, 2])
# Rankings of the others (self excluded), relevant = same class:
#   A0: A1 B0 A2 B1 C0 -> 1 0 1 0 0   AP (1 + 2/3) / 2 = 5/6
#   A1: A0 B0 A2 B1 C0 -> 1 0 1 0 0   AP 5/6
#   B0: A1 A0 A2 B1 C0 -> 0 0 0 1 0   AP 1/4
#   A2: B1 B0 A1 A0 C0 -> 0 0 1 1 0   AP (1/3 + 2/4) / 2 = 5/12
#   B1: A2 B0 A1 A0 C0 -> 0 1 0 0 0   AP 1/2
#   C0: the only one of its class: not a query.


def test_image_to_image_recall_and_map_exclude_the_query_itself() -> None:
    result = ev.image_to_image(CIRCLE, CIRCLE_LABELS, ks=(1, 2, 3, 4))
    assert result["recall@1"] == pytest.approx(2 / 5)  # with itself counted, every query would hit at 1
    assert result["recall@2"] == pytest.approx(3 / 5)
    assert result["recall@3"] == pytest.approx(4 / 5)
    assert result["recall@4"] == pytest.approx(1.0)
    assert result["map"] == pytest.approx((5 / 6 + 5 / 6 + 1 / 4 + 5 / 12 + 1 / 2) / 5)


def test_chunked_ranking_gives_the_same_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    whole = ev.image_to_image(CIRCLE, CIRCLE_LABELS)
    zero_shot = ev.zero_shot(CIRCLE, CIRCLE_LABELS, angles(0, 30, 200), ["a", "b", "c"])
    monkeypatch.setattr(ev, "CHUNK", 2)
    assert ev.image_to_image(CIRCLE, CIRCLE_LABELS) == whole
    again = ev.zero_shot(CIRCLE, CIRCLE_LABELS, angles(0, 30, 200), ["a", "b", "c"])
    assert again.to_json() == zero_shot.to_json() and (again.confusion == zero_shot.confusion).all()


def test_ties_rank_in_index_order() -> None:
    assert ev.ranking(np.array([[0.5, 0.9, 0.5, 0.9]])).tolist() == [[1, 3, 0, 2]]


def test_evaluate_has_exactly_the_documented_shape() -> None:
    result, confusion = ev.evaluate(CIRCLE, CIRCLE_LABELS, angles(0, 30, 200), ["a", "b", "c"])
    assert set(result) == {"zero_shot", "text_to_image", "image_to_image"}
    assert set(result["zero_shot"]) == {"top1", "top5", "per_class"}
    assert set(result["text_to_image"]) == {"recall@1", "recall@5", "recall@10"}
    assert set(result["image_to_image"]) == {"recall@1", "recall@5", "recall@10", "map"}
    assert confusion.shape == (3, 3) and confusion.sum() == len(CIRCLE)


# --- data -----------------------------------------------------------------------------------------


def test_imagefolder_and_csv_datasets(tmp_path: Path) -> None:
    for cls, names in (("cat", ["1.jpg", "2.png"]), ("dog", ["3.jpg"])):
        (tmp_path / "tree" / cls).mkdir(parents=True)
        for name in names:
            (tmp_path / "tree" / cls / name).write_bytes(b"x")
    (tmp_path / "tree" / "dog" / "notes.txt").write_text("not an image")
    tree = ev.load_dataset(tmp_path / "tree")
    assert tree.classes == ["cat", "dog"]
    assert [Path(p).name for p in tree.paths] == ["1.jpg", "2.png", "3.jpg"]
    assert tree.labels.tolist() == [0, 0, 1]

    table = tmp_path / "labels.csv"
    table.write_text("path,label\ntree/dog/3.jpg,dog\n/abs/x.jpg,bird\n")
    data = ev.load_dataset(table)
    assert data.paths == [str(tmp_path / "tree" / "dog" / "3.jpg"), "/abs/x.jpg"]
    assert data.classes == ["bird", "dog"] and data.labels.tolist() == [1, 0]

    table.write_text("only-a-path.jpg\n")
    with pytest.raises(BadInput, match="row 1"):
        ev.load_dataset(table)
    with pytest.raises(BadInput, match="does not exist"):
        ev.load_dataset(tmp_path / "nowhere")


def test_report_puts_two_systems_side_by_side(tmp_path: Path) -> None:
    data = ev.Dataset([f"/x/{i}.jpg" for i in range(6)], CIRCLE_LABELS, ["a", "b", "c"])
    systems = [ev.Embedded("first", list(CIRCLE), angles(0, 30, 200)),
               ev.Embedded("second", [*CIRCLE[:5], None], angles(0, 100, 200))]  # one image unembedded
    evaluated = ev.run_eval(data, systems)
    assert (evaluated["images"], evaluated["missing"]) == (5, 1)  # both on the images both have
    document = ev.eval_json(evaluated)
    assert set(document["systems"]) == {"first", "second"}
    report = ev.write_report(tmp_path / "report", data, evaluated, "Constructed")
    text = report.read_text()
    assert "| metric | first | second |" in text and "1 without an embedding left out" in text
    for number in (1, 2):
        png = tmp_path / "report" / f"confusion-{number}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"({png.name})" in text
    saved = json.loads((tmp_path / "report" / "results.json").read_text())
    assert saved["systems"]["first"] == document["systems"]["first"]


# --- the command on real images ------------------------------------------------------------------


def by_hand(images: np.ndarray, labels: np.ndarray, classes: np.ndarray) -> dict[str, float]:
    """The headline metrics with plain loops, independently of indexer.curation.evaluate."""
    n = len(labels)
    top1 = top5 = 0
    for i in range(n):
        scores = [float(images[i] @ c) for c in classes]
        order = sorted(range(len(classes)), key=lambda c: (-scores[c], c))
        top1 += order[0] == labels[i]
        top5 += labels[i] in order[:5]
    aps, r1 = [], 0
    for i in range(n):
        others = [j for j in range(n) if j != i]
        if not any(labels[j] == labels[i] for j in others):
            continue
        others.sort(key=lambda j: (-float(images[i] @ images[j]), j))
        relevant = [labels[j] == labels[i] for j in others]
        r1 += relevant[0]
        hits, precision = 0, []
        for position, rel in enumerate(relevant, start=1):
            if rel:
                hits += 1
                precision.append(hits / position)
        aps.append(sum(precision) / len(precision))
    return {"top1": top1 / n, "top5": top5 / n, "i2i_r1": r1 / len(aps), "map": sum(aps) / len(aps)}


@pytest.fixture
def small_cifar(tmp_path: Path) -> Path:
    if not CIFAR.is_dir():
        pytest.skip(f"CIFAR-10 test images absent: {CIFAR}")
    root = tmp_path / "data"
    for cls in ("airplane", "cat", "ship", "truck"):
        (root / cls).mkdir(parents=True)
        for image in sorted((CIFAR / cls).glob("*.jpg"))[:6]:
            shutil.copy2(image, root / cls / image.name)
    return root


def test_eval_command_equals_a_computation_by_hand(small_cifar: Path, tmp_path: Path,
                                                   tiny_checkpoint: Path, tiny_model) -> None:
    from indexer.curation.labels import load_templates, prompt_embeddings
    from indexer.stores import open_store

    with cli_home(tmp_path / "home", tiny_checkpoint) as settings:
        run("index", str(small_cifar))
        document = run_json("eval", str(small_cifar), "--templates", "cifar10")
        store = open_store(settings, settings.collection)
        try:
            stored = {r.payload["path"]: r.vectors["default"] for r in store.scan(with_vectors=True)}
        finally:
            store.close()
        # Two systems: a model (embedding DATA itself) and the stored vector; the report has both.
        report = tmp_path / "report"
        both = run_json("eval", str(small_cifar), "--model", settings.model, "--pretrained",
                        settings.pretrained, "--vector", "default", "--report", str(report))
    assert set(document) == {"zero_shot", "text_to_image", "image_to_image"}
    data = ev.load_dataset(small_cifar)
    images = np.stack([stored[p] for p in data.paths])
    classes = prompt_embeddings(tiny_model, data.classes, load_templates("cifar10"))
    expected = by_hand(images, data.labels, classes)
    assert document["zero_shot"]["top1"] == pytest.approx(expected["top1"])
    assert document["zero_shot"]["top5"] == pytest.approx(expected["top5"])
    assert document["image_to_image"]["recall@1"] == pytest.approx(expected["i2i_r1"])
    assert document["image_to_image"]["map"] == pytest.approx(expected["map"])
    assert sum(c["count"] for c in document["zero_shot"]["per_class"].values()) == 24
    assert len(both["systems"]) == 2
    assert all(math.isfinite(s["image_to_image"]["map"]) for s in both["systems"].values())
    text = (report / "report.md").read_text()
    assert all(name in text for name in both["systems"])
    assert (report / "confusion-1.png").exists() and (report / "confusion-2.png").exists()


def test_eval_of_a_csv_and_its_errors(small_cifar: Path, tmp_path: Path, tiny_checkpoint: Path) -> None:
    table = tmp_path / "labels.csv"
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        for image in sorted(small_cifar.rglob("*.jpg")):
            writer.writerow([image.relative_to(tmp_path), image.parent.name])
    with cli_home(tmp_path / "home", tiny_checkpoint) as settings:
        model = ("--model", settings.model, "--pretrained", settings.pretrained)
        document = run_json("eval", str(table), *model)
        assert sum(c["count"] for c in document["zero_shot"]["per_class"].values()) == 24
        missing = run("eval", str(table), check=False)  # no collection indexed: says how to make one
    assert missing.returncode == 4 and "clipsearch index" in missing.stderr
