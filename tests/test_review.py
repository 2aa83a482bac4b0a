"""Human review of label runs: the API's label routes (search_api/curation.py) through a real server, and
the UI's Review page (Streamlit AppTest) against it. Decisions are stored as `human_label` with a time
and are what counts, filters and later pages see."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from streamlit.testing.v1 import AppTest

from tests.helpers import assert_error, index_photos, serve

APP = Path(__file__).parent.parent / "ui" / "app.py"
PHOTOS = 10
LABELS = ["cat", "dog", "car"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, imagenet_dir: Path, tiny_checkpoint: Path,
           tiny_model: Any) -> Iterator[tuple[str, list[str]]]:
    """A live API over 10 real photos labelled twice: run "label" (every item sure) and run "mood"
    (threshold 1: every item unsure)."""
    from indexer.curation.labels import label_collection
    from search_api.app import create_app

    settings, _, ids = index_photos(tmp_path_factory.mktemp("review"), imagenet_dir, tiny_checkpoint,
                                    tiny_model, PHOTOS)
    label_collection(settings, None, LABELS, model=tiny_model, progress=False)
    label_collection(settings, None, ["calm", "busy"], run="mood", threshold=1.0, model=tiny_model,
                     progress=False)
    with serve(create_app(settings, model=tiny_model)) as url:
        yield url, ids


@pytest.fixture
def api(served: tuple[str, list[str]]) -> Iterator[httpx.Client]:
    """A client, with every earlier decision cleared."""
    url, ids = served
    with httpx.Client(base_url=f"{url}/v1/collections/default/labels", timeout=60) as client:
        for run in ("label", "mood"):
            assert client.post(f"/{run}/review", json={"ids": ids, "action": "clear"}).status_code == 200
        yield client


def items(api: httpx.Client, label: str, run: str = "label", **params: Any) -> dict[str, Any]:
    response = api.get(f"/{run}/items", params={"label": label, **params})
    assert response.status_code == 200, response.text
    return response.json()


def test_runs_and_counts(api: httpx.Client) -> None:
    runs = api.get(str(api.base_url).rstrip("/")).json()["runs"]  # the base URL has a slash added
    assert [r["run"] for r in runs] == ["label", "mood"]
    assert runs[0]["labels"] == LABELS and runs[0]["labeled"] == PHOTOS and runs[1]["threshold"] == 1.0
    counts = api.get("/label").json()
    assert counts["total"] == PHOTOS and counts["reviewed"] == 0
    assert counts["counts"] == counts["zero_shot"] and sum(counts["zero_shot"].values()) == PHOTOS
    assert api.get("/mood").json()["zero_shot"] == {"unsure": PHOTOS}


def test_pages_of_one_label_most_confident_first(api: httpx.Client) -> None:
    label, count = next(iter(api.get("/label").json()["zero_shot"].items()))
    whole = items(api, label, limit=50)
    assert whole["total"] == count == len(whole["items"])
    scores = [item["score"] for item in whole["items"]]
    assert scores == sorted(scores, reverse=True)
    assert all(item["label"] == label and item["top"][0]["label"] == label for item in whole["items"])
    paged = [i["id"] for offset in range(count) for i in items(api, label, offset=offset, limit=1)["items"]]
    assert paged == [item["id"] for item in whole["items"]]


def test_accept_change_reject_and_clear(api: httpx.Client, served: tuple[str, list[str]]) -> None:
    url, ids = served
    first, second, third = ids[:3]
    [accepted] = api.post("/label/review", json={"ids": [first], "action": "accept"}).json()["items"]
    assert accepted["human_label"] == accepted["label"] and accepted["human_label_at"].endswith("Z")
    body = {"ids": [second, third], "action": "change", "label": "lion"}
    changed = api.post("/label/review", json=body).json()
    assert changed["updated"] == 2 and {i["effective_label"] for i in changed["items"]} == {"lion"}
    counts = api.get("/label").json()
    assert counts["reviewed"] == 3 and counts["counts"]["lion"] == 2
    # The decisions are indexed fields: searches filter on them.
    found = httpx.post(f"{url}/v1/search", json={
        "text": "a photo", "k": 10, "filter": {"must": [{"key": "human_label", "match": {"value": "lion"}}]}})
    assert {r["id"] for r in found.json()["results"]} == {second, third}
    # Reviewed items leave the pending pages.
    label = accepted["label"]
    pending = items(api, label, pending="true")
    assert first not in {i["id"] for i in pending["items"]}
    assert pending["total"] == items(api, label)["total"] - 1 - sum(
        1 for i in changed["items"] if i["label"] == label)

    [rejected] = api.post("/label/review", json={"ids": [first], "action": "reject"}).json()["items"]
    assert (rejected["human_label"], rejected["effective_label"]) == ("rejected", None)
    assert api.get("/label").json()["counts"]["rejected"] == 1
    [cleared] = api.post("/label/review", json={"ids": [first], "action": "clear"}).json()["items"]
    assert cleared["human_label"] is None and cleared["effective_label"] == cleared["label"]


def test_accepting_unsure_items_takes_their_best_guess(api: httpx.Client) -> None:
    page = items(api, "unsure", run="mood")
    assert page["total"] == PHOTOS
    ids = [item["id"] for item in page["items"][:2]]
    done = api.post("/mood/review", json={"ids": ids, "action": "accept"}).json()["items"]
    assert [d["human_label"] for d in done] == [i["top"][0]["label"] for i in page["items"][:2]]
    assert api.get("/mood").json()["reviewed"] == 2


def test_bad_review_requests(api: httpx.Client, served: tuple[str, list[str]]) -> None:
    _, ids = served
    assert_error(api.get("/nope"), 400, "no label run 'nope'")
    assert_error(api.get("/nope/items", params={"label": "cat"}), 400, "clipsearch label --run nope")
    assert_error(api.post("/label/review", json={"ids": ["0" * 8 + "-0000-0000-0000-" + "0" * 12],
                                                 "action": "accept"}), 404, "no indexed image")
    assert_error(api.post("/label/review", json={"ids": ids[:1], "action": "change"}), 400, "new label")
    assert api.post("/label/review", json={"ids": ids[:1], "action": "delete"}).status_code == 422
    assert api.post("/label/review", json={"ids": [], "action": "accept"}).status_code == 422
    assert api.get("/label/items").status_code == 422  # the label is required
    assert_error(httpx.get(api.base_url.copy_with(path="/v1/collections/missing/labels")), 404, "not found")


def test_a_label_run_takes_its_templates_or_a_built_in_set_never_a_path(api: httpx.Client) -> None:
    runs = str(api.base_url).rstrip("/")
    assert_error(api.post(runs, json={"labels": ["cat"], "templates": ["a photo"]}), 400, "{}")
    assert api.post(runs, json={"labels": ["cat"], "templates": ["a {}"] * 101}).status_code == 422
    assert api.post(runs, json={"labels": ["cat"], "templates": []}).status_code == 422
    assert api.post(runs, json={"labels": ["cat"], "templates": "/etc/passwd"}).status_code == 422
    assert [r["run"] for r in api.get(runs).json()["runs"]] == ["label", "mood"]  # none was made


# --- the UI -----------------------------------------------------------------------------------------


def start(url: str, monkeypatch: pytest.MonkeyPatch, **state: Any) -> AppTest:
    monkeypatch.setenv("CLIPSEARCH_API_URL", url)
    monkeypatch.delenv("CLIPSEARCH_API_KEY", raising=False)
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.session_state["page"] = "Review"
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, at.exception
    return at


def card_ids(at: AppTest) -> list[str]:
    return [box.key.removeprefix("review-select-") for box in at.checkbox
            if box.key and box.key.startswith("review-select-") and box.key != "review-select-all"]


def test_review_page_accepts_one_image(api: httpx.Client, served: tuple[str, list[str]],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    url, _ = served
    at = start(url, monkeypatch)
    assert at.selectbox(key="review_run").options == ["label", "mood"]
    label = at.selectbox(key="review_label").value
    shown = card_ids(at)
    assert set(shown) == {i["id"] for i in items(api, label)["items"]} and shown
    assert len(at.main.image) == len(shown)  # a thumbnail per card
    at.button(key=f"review-accept-{shown[0]}").click().run()
    assert not at.exception
    assert any("1 image accepted" in s.value for s in at.success)
    assert shown[0] not in card_ids(at)  # pending only, by default
    [item] = [i for i in items(api, label)["items"] if i["id"] == shown[0]]
    assert item["human_label"] == label
    if len(shown) > 1:  # another image's own Change (in its popover)
        at.selectbox(key=f"review-new-{shown[1]}").select("car")
        at.button(key=f"review-change-{shown[1]}").click().run()
        assert any("1 image changed to car" in s.value for s in at.success)
        assert {i["id"]: i["human_label"] for i in items(api, label)["items"]}[shown[1]] == "car"


def test_review_page_changes_a_selection(api: httpx.Client, served: tuple[str, list[str]],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    url, _ = served
    at = start(url, monkeypatch, review_run="mood")
    assert at.selectbox(key="review_label").value == "unsure"
    chosen = card_ids(at)[:2]
    for item_id in chosen:
        at.checkbox(key=f"review-select-{item_id}").check()
    at.selectbox(key="review-change-to").select("busy")
    at.button(key="review-change-selected").click().run()
    assert not at.exception
    assert any("2 images changed to busy" in s.value for s in at.success)
    assert api.get("/mood").json()["counts"]["busy"] == 2
    decided = {i["id"]: i["human_label"] for i in items(api, "unsure", run="mood", limit=50)["items"]}
    assert [decided[i] for i in chosen] == ["busy", "busy"]
    # Nothing selected: the page says so and changes nothing.
    at.button(key="review-reject-selected").click().run()
    assert any("Select some images first" in w.value for w in at.warning)
    assert api.get("/mood").json()["reviewed"] == 2


def test_review_page_without_runs_explains_how_to_make_one(tmp_path: Path, tiny_checkpoint: Path,
                                                           tiny_model: Any, imagenet_dir: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from search_api.app import create_app

    settings, _, _ = index_photos(tmp_path, imagenet_dir, tiny_checkpoint, tiny_model, 2)
    with serve(create_app(settings, model=tiny_model)) as url:
        at = start(url, monkeypatch)
    assert any("clipsearch label" in i.value for i in at.info)
