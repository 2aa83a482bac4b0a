"""Specification of the VLM stage in the HTTP API, through real servers on loopback: ours (uvicorn, over
real photos indexed with the tiny model) and an OpenAI-compatible stand-in (tests/vlm_server.py) that
recognises each photo it is shown and answers what the test scripted for it.

- `rerank` on /v1/search and /v1/search/image: the first top_n hits in the order of the VLM's scores, the
  rest in the search's order after them; max(k, top_n) fetched, k answered; offset pages re-ranked within.
- Never worse than no VLM: off, dead, slow, 4xx/5xx/429, garbage -> 200, the search's order, a status.
- `explain` in a search, POST /v1/explain and its server-sent events; /healthz and /v1/vlm; metrics;
  the OpenAPI document.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from indexer.models.loading import ClipModel
from tests.helpers import Served, index_photos, make_settings, serve
from tests.vlm_photos import Photos, scores_by_id
from tests.vlm_server import FakeVlm, Reply, closed_port_url, error, order, score

PHOTOS = 12
TOP_N = 5  # the server's CLIPSEARCH_VLM_TOP_N
# The served collection's VLM limits: never reached by a stand-in that answers (a busy machine may take
# seconds for an instant answer); the tests of deadlines run a server of their own with short ones, and
# their stand-in never answers in time, so no outcome rests on a clock.
GENEROUS_S = 60.0
DEADLINE_S = 1.0
QUERY = "a photo of a dog"


# --- servers -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeVlm]:
    with FakeVlm() as vlm:
        yield vlm


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, imagenet_dir: Path, tiny_checkpoint: Path,
        tiny_model: ClipModel, fake: FakeVlm) -> Iterator[tuple[Any, Served]]:
    from search_api import create_app

    root = tmp_path_factory.mktemp("vlm-api")
    vlm = {"url": fake.url, "top_n": TOP_N, "deadline_s": GENEROUS_S, "timeout_s": GENEROUS_S,
           "concurrency": 4}
    settings, photos, ids = index_photos(root, imagenet_dir, tiny_checkpoint, tiny_model, PHOTOS, vlm=vlm)
    application = create_app(settings, model=tiny_model)
    with serve(application) as url:
        yield application, Served(url, settings, photos, ids)


@pytest.fixture(scope="module")
def served(app: tuple[Any, Served]) -> Served:
    return app[1]


@pytest.fixture(scope="module")
def photos(served: Served) -> Photos:
    paths = {}
    for item_id in served.ids:
        item = httpx.get(f"{served.url}/v1/collections/default/items/{item_id}", timeout=30).json()
        paths[item_id] = Path(item["uri"])
    return Photos(paths)


@pytest.fixture
def vlm(fake: FakeVlm, photos: Photos, app: tuple[Any, Served]) -> Iterator[FakeVlm]:
    """The stand-in, fresh for each test: no requests recorded, every score 0 until scripted, and
    nothing in the server's cache of its answers (each test scripts its own)."""
    app[0].state.vlm.clear_cache()
    fake.requests.clear()
    fake.max_in_flight = 0
    fake.responder = scores_by_id(photos, {})
    yield fake


@pytest.fixture(scope="module")
def other_home(tmp_path_factory: pytest.TempPathFactory, imagenet_dir: Path, tiny_checkpoint: Path,
               tiny_model: ClipModel) -> Path:
    """A second small collection, for servers with other VLM settings (one server at a time holds it)."""
    root = tmp_path_factory.mktemp("vlm-other")
    index_photos(root, imagenet_dir, tiny_checkpoint, tiny_model, 6)
    return root / "home"


def server_with(home: Path, checkpoint: Path, model: ClipModel, **vlm: Any) -> Any:
    from search_api import create_app

    return serve(create_app(make_settings(home, checkpoint, vlm=vlm), model=model))


def post(url: str, path: str, **kwargs: Any) -> httpx.Response:
    response = httpx.post(f"{url}{path}", timeout=60, **kwargs)
    assert response.status_code < 500, response.text  # never a 5xx, whatever the VLM did
    return response


def search(url: str, **body: Any) -> dict[str, Any]:
    response = post(url, "/v1/search", json={"text": QUERY, **body})
    assert response.status_code == 200, response.text
    return response.json()


def ids(answer: dict[str, Any]) -> list[str]:
    return [hit["id"] for hit in answer["results"]]


def clip_order(url: str, k: int, offset: int = 0) -> list[str]:
    return ids(search(url, k=k, offset=offset))


# --- re-ranking ----------------------------------------------------------------------------------------


def test_the_top_n_follow_the_vlm_scores_and_the_rest_keep_clip_order(served: Served, vlm: FakeVlm,
                                                                       photos: Photos) -> None:
    clip = clip_order(served.url, 8)
    plain = search(served.url, k=8)
    assert plain["rerank"] is None and all(h["vlm_score"] is None and h["rerank"] is None and
                                           h["explanation"] is None for h in plain["results"])
    assert vlm.chats() == []  # not asked, not sent

    vlm.responder = scores_by_id(photos, {clip[i]: 2 * i for i in range(TOP_N)})  # the CLIP order reversed
    answer = search(served.url, k=8, rerank=True)
    assert ids(answer) == [*reversed(clip[:TOP_N]), *clip[TOP_N:]]
    assert answer["rerank"]["status"] == "ok" and answer["rerank"]["reason"] is None
    assert (answer["rerank"]["mode"], answer["rerank"]["top_n"]) == ("pointwise", TOP_N)
    assert answer["timings"]["rerank_ms"] > 0
    by_id = {hit["id"]: hit for hit in answer["results"]}
    for place, item_id in enumerate(clip):
        hit = by_id[item_id]
        if place < TOP_N:
            assert hit["vlm_score"] == 2 * place
            assert hit["rerank"] == {"status": "ok", "error": None, "rank": None,
                                     "reason": f"reason for {item_id}", "cached": False}
        else:
            assert hit["vlm_score"] is None and hit["rerank"]["status"] == "skipped"
        assert hit["score"] == next(h["score"] for h in plain["results"] if h["id"] == item_id)  # CLIP's own
        assert hit["explanation"] is None  # not asked
    # One request per hit of the top N, each showing that hit alone; none for the others.
    assert sorted(photos.candidate(r) for r in vlm.chats()) == sorted(clip[:TOP_N])
    assert all(len(r.images()) == 1 and json.dumps(QUERY) in r.text() for r in vlm.chats())


def test_top_n_beyond_k_fetches_more_and_answers_k(served: Served, vlm: FakeVlm, photos: Photos) -> None:
    clip = clip_order(served.url, 7)
    vlm.responder = scores_by_id(photos, {clip[6]: 10, clip[5]: 9}, default=score(1))
    answer = search(served.url, k=3, rerank={"top_n": 7})
    assert ids(answer) == [clip[6], clip[5], clip[0]]  # from below k; ties (1) by CLIP score
    assert answer["rerank"]["top_n"] == 7 and len(vlm.chats()) == 7


def test_offset_pages_are_reranked_within_themselves(served: Served, vlm: FakeVlm, photos: Photos) -> None:
    clip = clip_order(served.url, 8)
    assert clip_order(served.url, 4, offset=4) == clip[4:]
    vlm.responder = scores_by_id(photos, {clip[4]: 1, clip[5]: 2, clip[6]: 3, clip[7]: 4})
    page = search(served.url, k=4, offset=4, rerank={"top_n": 4})
    assert ids(page) == [clip[7], clip[6], clip[5], clip[4]]  # the second page, re-ranked
    assert sorted(photos.candidate(r) for r in vlm.chats()) == sorted(clip[4:])  # the first page never sent


def test_listwise_mode_follows_the_models_order(served: Served, vlm: FakeVlm, photos: Photos) -> None:
    clip = clip_order(served.url, 6)
    vlm.responder = lambda request: order([2, 4, 1, 3])  # candidates numbered from 1 in CLIP order
    answer = search(served.url, k=6, rerank={"top_n": 4, "mode": "listwise"})
    assert ids(answer) == [clip[1], clip[3], clip[0], clip[2], clip[4], clip[5]]
    [request] = vlm.chats()
    assert [photos.shown(image) for image in request.images()] == clip[:4]
    assert [hit["rerank"]["rank"] for hit in answer["results"][:4]] == [1, 2, 3, 4]
    assert answer["rerank"]["mode"] == "listwise" and answer["results"][0]["vlm_score"] is None


def test_image_search_reranks_with_form_fields(served: Served, vlm: FakeVlm, photos: Photos) -> None:
    example = served.photos[3].read_bytes()
    form = {"k": "4"}

    def image_search(**fields: str) -> dict[str, Any]:
        response = post(served.url, "/v1/search/image", data={**form, **fields},
                        files={"file": ("query.jpg", example)})
        assert response.status_code == 200, response.text
        return response.json()

    clip = ids(image_search())
    vlm.responder = scores_by_id(photos, {clip[3]: 9, clip[2]: 8})
    answer = image_search(rerank="true", top_n="4", mode="pointwise")
    assert ids(answer) == [clip[3], clip[2], clip[0], clip[1]]
    assert answer["rerank"]["status"] == "ok"
    for request in vlm.chats():  # the example image first, then the candidate
        first, _ = request.images()
        assert photos.shown(first) == photos.shown(Image.open(served.photos[3]))


def test_answers_are_cached(served: Served, vlm: FakeVlm, photos: Photos) -> None:
    clip = clip_order(served.url, 4)
    vlm.responder = scores_by_id(photos, {clip[3]: 7})
    query = {"text": "a cached query", "k": 4, "rerank": {"top_n": 4}}
    first = search(served.url, **query)
    assert len(vlm.chats()) == 4 and not any(hit["rerank"]["cached"] for hit in first["results"])
    again = search(served.url, **query)
    assert len(vlm.chats()) == 4  # nothing sent again
    assert ids(again) == ids(first) and all(hit["rerank"]["cached"] for hit in again["results"])


# --- never worse than no VLM ---------------------------------------------------------------------------


@pytest.mark.parametrize(("reply", "kind"), [
    (error(500), "http_5xx"),
    (error(429, "slow down"), "http_429"),
    (error(400, "no images here"), "http_4xx"),
    (Reply(body="<html>bad gateway</html>"), "protocol"),
    (Reply("I would rather talk about the weather."), "unparseable"),
])
def test_a_failing_vlm_gives_clip_order_with_a_status(served: Served, vlm: FakeVlm, reply: Reply,
                                                       kind: str) -> None:
    clip = clip_order(served.url, 6)
    vlm.responder = lambda request: reply
    answer = search(served.url, k=6, rerank=True)
    assert ids(answer) == clip
    assert answer["rerank"]["status"] == "failed" and answer["rerank"]["reason"]
    assert [hit["rerank"]["status"] for hit in answer["results"]] == ["failed"] * TOP_N + ["skipped"]
    assert {hit["rerank"]["error"] for hit in answer["results"][:TOP_N]} == {kind}  # late: "deadline"
    assert all(hit["vlm_score"] is None for hit in answer["results"])


@pytest.mark.parametrize("reply", [Reply(hang=True), score(9, delay_s=DEADLINE_S + 3)], ids=["hang", "late"])
def test_a_vlm_slower_than_the_deadline_gives_clip_order(other_home: Path, tiny_checkpoint: Path,
                                                          tiny_model: ClipModel, vlm: FakeVlm,
                                                          reply: Reply) -> None:
    vlm.responder = lambda request: reply  # answers after the deadline has passed, or never
    with server_with(other_home, tiny_checkpoint, tiny_model, url=vlm.url, top_n=TOP_N,
                     deadline_s=DEADLINE_S) as url:
        clip = clip_order(url, 6)
        answer = search(url, k=6, rerank=True)
    assert ids(answer) == clip
    assert answer["rerank"]["status"] == "failed"
    assert "CLIPSEARCH_VLM_DEADLINE_S" in answer["rerank"]["reason"]
    assert [hit["rerank"]["status"] for hit in answer["results"]] == ["failed"] * TOP_N + ["skipped"]
    assert {hit["rerank"]["error"] for hit in answer["results"][:TOP_N]} == {"deadline"}
    assert all(hit["vlm_score"] is None for hit in answer["results"])


def test_some_failures_make_a_partial_rerank(served: Served, vlm: FakeVlm, photos: Photos) -> None:
    clip = clip_order(served.url, 5)
    scripted = {clip[0]: 1, clip[1]: error(503), clip[2]: 8, clip[3]: 5, clip[4]: 9}
    vlm.responder = scores_by_id(photos, scripted)
    answer = search(served.url, k=5, rerank=True)
    # clip[1] keeps its place; the others are ordered among the places they held.
    assert ids(answer) == [clip[4], clip[1], clip[2], clip[3], clip[0]]
    assert answer["rerank"]["status"] == "partial" and "http_5xx" in answer["rerank"]["reason"]
    assert answer["results"][1]["rerank"] == {"status": "failed", "error": "http_5xx", "rank": None,
                                              "reason": None, "cached": False}


def test_a_dead_endpoint(other_home: Path, tiny_checkpoint: Path, tiny_model: ClipModel) -> None:
    with server_with(other_home, tiny_checkpoint, tiny_model, url=closed_port_url()) as url:
        clip = clip_order(url, 6)
        answer = search(url, k=6, rerank=True, explain=True)
        assert ids(answer) == clip and answer["rerank"]["status"] == "failed"
        assert {hit["rerank"]["error"] for hit in answer["results"][:TOP_N]} == {"connect"}
        assert "CLIPSEARCH_VLM_URL" in answer["rerank"]["reason"]
        assert all(hit["explanation"] is None for hit in answer["results"])
        health = httpx.get(f"{url}/healthz", timeout=30)
        assert health.status_code == 200 and health.json() == {"status": "ok", "vlm": "down"}
        explained = post(url, "/v1/explain", json={"query": QUERY, "image_id": clip[0]})
        assert explained.status_code == 200
        assert explained.json()["status"] == "failed" and explained.json()["error"] == "connect"
        assert explained.json()["explanation"] is None
        events = stream_events(url, {"query": QUERY, "image_id": clip[0]})
        assert [name for name, _ in events] == ["error"] and events[0][1]["error"] == "connect"


def test_without_a_vlm(other_home: Path, tiny_checkpoint: Path, tiny_model: ClipModel) -> None:
    with server_with(other_home, tiny_checkpoint, tiny_model) as url:
        assert httpx.get(f"{url}/healthz", timeout=30).json() == {"status": "ok", "vlm": "off"}
        status = httpx.get(f"{url}/v1/vlm", params={"probe": "true"}, timeout=30).json()
        assert status["enabled"] is False and status["status"] == "off"
        clip = clip_order(url, 6)
        answer = search(url, k=6, rerank=True)
        assert ids(answer) == clip and answer["rerank"]["status"] == "failed"
        assert "CLIPSEARCH_VLM_URL" in answer["rerank"]["reason"]
        assert answer["results"][0]["rerank"]["error"] == "off"
        explained = post(url, "/v1/explain", json={"query": QUERY, "image_id": clip[0]}).json()
        assert (explained["status"], explained["error"]) == ("failed", "off")


def test_bad_rerank_options_are_422(served: Served, vlm: FakeVlm) -> None:
    for rerank in ({"top_n": 0}, {"top_n": 101}, {"mode": "sideways"}, {"top": 3}, 1, "yes"):
        response = post(served.url, "/v1/search", json={"text": QUERY, "rerank": rerank})
        assert response.status_code == 422, (rerank, response.text)
    assert vlm.chats() == []


# --- explanations --------------------------------------------------------------------------------------


def stream_events(url: str, body: dict[str, Any], on_event: Callable[[], object] | None = None
                  ) -> list[tuple[str, dict[str, Any]]]:
    """The server-sent events of /v1/explain/stream, as (event name, data), calling `on_event` as each
    arrives."""
    events, name = [], "message"
    with httpx.stream("POST", f"{url}/v1/explain/stream", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
                if on_event is not None:
                    on_event()
                name = "message"
    return events


def test_explain(served: Served, vlm: FakeVlm, photos: Photos) -> None:
    target = served.ids[2]
    vlm.responder = scores_by_id(photos, {}, explain=lambda shown: Reply(f"It shows {shown}; no dog."))
    response = post(served.url, "/v1/explain", json={"query": QUERY, "image_id": target})
    assert response.status_code == 200
    answer = response.json()
    assert answer["explanation"] == f"It shows {target}; no dog." and answer["status"] == "ok"
    [request] = vlm.chats()
    assert photos.candidate(request) == target and json.dumps(QUERY) in request.text()

    missing = post(served.url, "/v1/explain", json={"query": QUERY, "image_id": "no-such-id"})
    assert missing.status_code in (400, 404)  # not the VLM's doing: an error of ours, said as such
    assert len(vlm.chats()) == 1


def test_explain_streams_pieces_as_they_come(served: Served, vlm: FakeVlm, photos: Photos) -> None:
    pieces = ["It is ", "a dog ", "on grass, ", "not a beach."]
    first_arrived = threading.Event()  # the VLM writes its last piece only once the first reached us
    vlm.responder = lambda request: Reply(chunks=pieces, hold_last=first_arrived)
    events = stream_events(served.url, {"query": "a dog on a beach", "image_id": served.ids[5]},
                           first_arrived.set)  # a stream buffered on the way would stall here and fail
    assert [name for name, _ in events] == ["message"] * 4 + ["done"]
    assert [data["text"] for _, data in events[:4]] == pieces
    assert events[-1][1]["explanation"] == "".join(pieces).strip()


def test_a_stream_cut_short_ends_with_an_error_event(other_home: Path, tiny_checkpoint: Path,
                                                     tiny_model: ClipModel, vlm: FakeVlm) -> None:
    never = threading.Event()  # "a dog" is held back until the stand-in stops: the time limit ends the stream
    vlm.responder = lambda request: Reply(chunks=["It is ", "a dog"], hold_last=never)
    # A longer limit only when this machine did not pass "It is " on within the shorter one.
    for limit in (1.0, 2.0, 4.0, 8.0, 16.0, 32.0):
        with server_with(other_home, tiny_checkpoint, tiny_model, url=vlm.url, timeout_s=limit) as url:
            [some_id] = clip_order(url, 1)
            events = stream_events(url, {"query": "a dog", "image_id": some_id})
        assert events[-1][0] == "error" and events[-1][1]["error"] in ("timeout", "deadline")
        assert [name for name, _ in events] in (["error"], ["message", "error"])
        if len(events) == 2:
            break
    assert [name for name, _ in events] == ["message", "error"], "the first piece never came before the limit"
    assert events[0][1]["text"] == "It is " and events[1][1]["text"] == "It is "


def test_a_failing_stream_is_an_error_event(served: Served, vlm: FakeVlm) -> None:
    vlm.responder = lambda request: error(429, "slow down")
    events = stream_events(served.url, {"query": "a dog", "image_id": served.ids[7]})
    assert [(name, data["error"]) for name, data in events] == [("error", "http_429")]


def test_search_with_explanations(served: Served, vlm: FakeVlm, photos: Photos) -> None:
    clip = clip_order(served.url, 8)
    vlm.responder = scores_by_id(photos, {clip[1]: 9}, explain=lambda shown: Reply(f"Because of {shown}."))
    answer = search(served.url, k=8, rerank={"top_n": 3}, explain=True)
    assert ids(answer)[:3] == [clip[1], clip[0], clip[2]]
    explained = [hit["explanation"] for hit in answer["results"]]
    assert explained[:3] == [f"Because of {i}." for i in ids(answer)[:3]]  # the top_n, after re-ranking
    assert explained[3:] == [None] * 5
    assert answer["timings"]["explain_ms"] > 0


# --- health, status, metrics, schema -------------------------------------------------------------------


def test_health_and_status_report_the_vlm(served: Served, vlm: FakeVlm) -> None:
    health = httpx.get(f"{served.url}/healthz", timeout=30)
    assert health.status_code == 200 and health.json() == {"status": "ok", "vlm": "up"}
    status = httpx.get(f"{served.url}/v1/vlm", params={"probe": "true"}, timeout=30).json()
    assert status["enabled"] is True and status["status"] == "up"
    assert status["url"] == vlm.url and status["model"] == "fake-vl"


def test_metrics_count_vlm_requests_errors_cache_and_tokens(served: Served, vlm: FakeVlm) -> None:
    vlm.responder = lambda request: score(4, "fine")
    search(served.url, text="metrics one", k=3, rerank={"top_n": 3})
    search(served.url, text="metrics one", k=3, rerank={"top_n": 3})  # from the cache
    vlm.responder = lambda request: error(500)
    search(served.url, text="metrics two", k=3, rerank={"top_n": 3})
    text = httpx.get(f"{served.url}/metrics", timeout=30).text

    def value(sample: str) -> float:
        [line] = [line for line in text.splitlines() if line.startswith(sample + " ")]
        return float(line.split()[-1])

    assert value('clipsearch_vlm_requests_total{op="score"}') >= 6
    assert value('clipsearch_vlm_errors_total{kind="http_5xx"}') >= 3
    assert value('clipsearch_vlm_cache_hits_total{what="score"}') >= 3
    assert value('clipsearch_vlm_tokens_total{kind="prompt"}') >= 300  # the stand-in reports 100 a request
    assert value('clipsearch_vlm_reranks_total{status="failed"}') >= 1
    assert value("clipsearch_vlm_request_duration_seconds_count") >= 6
    assert value("clipsearch_vlm_rerank_duration_seconds_count") >= 3
    assert value("clipsearch_vlm_enabled") == 1


def test_openapi_documents_the_vlm(served: Served) -> None:
    schema = httpx.get(f"{served.url}/openapi.json", timeout=30).json()
    paths, components = schema["paths"], schema["components"]["schemas"]
    assert {"rerank", "explain"} <= set(components["SearchRequest"]["properties"])
    assert {"vlm_score", "explanation", "rerank"} <= set(components["SearchResult"]["properties"])
    assert "rerank" in components["SearchResponse"]["properties"]
    form = paths["/v1/search/image"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    form = components[form["$ref"].rsplit("/", 1)[-1]] if "$ref" in form else form
    assert {"rerank", "top_n", "mode", "explain"} <= set(form["properties"])
    assert "/v1/explain" in paths and "/v1/vlm" in paths
    assert "text/event-stream" in paths["/v1/explain/stream"]["post"]["responses"]["200"]["content"]
    assert components["HealthResponse"]["properties"]["vlm"]["enum"] == ["off", "up", "down", "unknown"]
