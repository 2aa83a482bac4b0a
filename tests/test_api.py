"""The HTTP API, served for real by uvicorn on a loopback port and queried over HTTP.

Specification: one collection of 40 real photos, indexed with the tiny model. Every route answers in
its documented shape; an indexed image's id (or its uploaded file) finds that image first with cosine
~1; results agree with exact brute-force search over the stored vectors; /v1/images serves only
indexed items (never a path from the client) and 404s everything else; bad client input is a 4xx
with a JSON {"detail": "..."}, never a 500.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from indexer.ingest.pipeline import index_sources
from indexer.models.loading import ClipModel
from indexer.settings import Settings
from indexer.stores import open_store
from search_api import create_app
from tests.helpers import assert_error, make_settings, photo_copies, png_bytes, raw_get, serve

PHOTOS = 40


# --- fixtures ----------------------------------------------------------------------------------------


@dataclass
class Corpus:
    settings: Settings
    photos: list[Path]
    ids: list[str]
    vectors: np.ndarray  # (N, dim), as stored
    uris: list[str]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, imagenet_dir: Path, tiny_checkpoint: Path,
           tiny_model: ClipModel) -> Corpus:
    root = tmp_path_factory.mktemp("api")
    photos = photo_copies(imagenet_dir, root / "photos", PHOTOS)
    settings = make_settings(root / "home", tiny_checkpoint)
    report = index_sources(settings, [root / "photos"], model=tiny_model, progress=False)
    assert (report.embedded, report.failed) == (PHOTOS, 0)
    # Read the stored vectors now: once the server has the embedded collection open, nothing else can.
    store = open_store(settings, settings.collection)
    try:
        ids = [record.id for record in store.scan()]
        records = store.retrieve(ids, with_vectors=True)
    finally:
        store.close()
    vectors = np.stack([record.vectors["default"] for record in records]).astype(np.float32)
    return Corpus(settings, photos, ids, vectors, [record.payload["uri"] for record in records])


@pytest.fixture(scope="module")
def base_url(corpus: Corpus, tiny_model: ClipModel) -> Iterator[str]:
    with serve(create_app(corpus.settings, model=tiny_model)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=60) as http:
        yield http


def assert_agrees_with_brute_force(results: list[dict[str, Any]], corpus: Corpus, query: np.ndarray) -> None:
    """Same top ids, in the same order, with the same scores as exact search over the stored vectors."""
    exact = dict(zip(corpus.ids, (corpus.vectors @ query).tolist(), strict=True))
    expected = sorted(exact, key=exact.__getitem__, reverse=True)[: len(results)]
    np.testing.assert_allclose([r["score"] for r in results], [exact[i] for i in expected], atol=1e-5)
    for rank, (result, want) in enumerate(zip(results, expected, strict=True)):
        # Two stored vectors scoring the same may come in either order; anything else must match.
        assert result["id"] == want or abs(exact[result["id"]] - exact[want]) < 1e-6, (rank, result, want)


def search(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/search", json=body)
    assert response.status_code == 200, response.text
    return response.json()


# --- happy paths ---------------------------------------------------------------------------------------


def test_healthz(client: httpx.Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "vlm": "off"}  # no CLIPSEARCH_VLM_URL


def test_text_search_shape(client: httpx.Client, corpus: Corpus) -> None:
    body = search(client, text="a photo of a fish", k=7)
    assert set(body) == {"results", "took_ms", "timings", "rerank", "facets", "mode"}
    assert body["facets"] is None and body["mode"] == "vector"  # no facets asked; a folder has no text
    assert body["rerank"] is None  # not asked (tests/test_vlm_api.py)
    results = body["results"]
    assert len(results) == 7
    for result in results:
        assert set(result) == {"id", "uri", "score", "metadata", "vlm_score", "explanation", "rerank"}
        assert result["vlm_score"] is None and result["explanation"] is None and result["rerank"] is None
        assert result["uri"] in corpus.uris and Path(result["uri"]).is_file()
        assert result["metadata"]["width"] > 0 and result["metadata"]["height"] > 0
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    stages = {"decode_ms", "encode_ms", "search_ms", "fetch_ms", "rerank_ms", "explain_ms"}
    assert set(body["timings"]) == stages
    assert all(value >= 0 for value in body["timings"].values())
    assert body["took_ms"] >= body["timings"]["search_ms"] > 0


def test_text_search_agrees_with_brute_force(
    client: httpx.Client, corpus: Corpus, tiny_model: ClipModel
) -> None:
    for text in ("a dog on the grass", "a red car", "fish"):
        results = search(client, text=text, k=10)["results"]
        assert len(results) == 10
        assert_agrees_with_brute_force(results, corpus, tiny_model.encode_texts([text])[0])


def test_text_search_k_larger_than_collection(client: httpx.Client) -> None:
    assert len(search(client, text="anything", k=500)["results"]) == PHOTOS


def test_every_indexed_image_finds_itself_first(client: httpx.Client, corpus: Corpus) -> None:
    for index, item_id in enumerate(corpus.ids):
        body = search(client, image_id=item_id, k=10)
        first = body["results"][0]
        assert first["id"] == item_id and first["uri"] == corpus.uris[index]
        assert first["score"] > 0.999
        assert_agrees_with_brute_force(body["results"], corpus, corpus.vectors[index])
        assert body["timings"]["encode_ms"] < body["took_ms"]


def test_image_id_in_another_spelling(client: httpx.Client, corpus: Corpus) -> None:
    item_id = corpus.ids[0]
    assert search(client, image_id=item_id.upper(), k=1)["results"][0]["id"] == item_id


def test_upload_search_finds_the_uploaded_photo_first(client: httpx.Client, corpus: Corpus) -> None:
    for photo in corpus.photos[:3]:
        response = client.post("/v1/search/image", files={"file": (photo.name, photo.read_bytes())},
                               data={"k": "5"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["results"]) == 5
        assert body["results"][0]["uri"] == str(photo)
        assert body["results"][0]["score"] > 0.99
        assert body["timings"]["encode_ms"] > 0


def test_upload_search_default_k(client: httpx.Client, corpus: Corpus) -> None:
    photo = corpus.photos[4]
    response = client.post("/v1/search/image", files={"file": ("query.jpg", photo.read_bytes())})
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == 10


def test_concurrent_queries_are_all_answered_correctly(client: httpx.Client, corpus: Corpus) -> None:
    # Routes run in a thread pool while the engine admits one caller at a time: nothing may interleave.
    def query(index: int) -> tuple[str, str]:
        photo = corpus.photos[index % 8]
        if index % 3 == 0:
            body = search(client, image_id=corpus.ids[index % PHOTOS], k=3)
            return body["results"][0]["id"], corpus.ids[index % PHOTOS]
        if index % 3 == 1:
            response = client.post("/v1/search/image", files={"file": (photo.name, photo.read_bytes())},
                                   data={"k": "3"})
            assert response.status_code == 200, response.text
            return response.json()["results"][0]["uri"], str(photo)
        body = search(client, text=f"a photo of thing number {index}", k=3)
        return str(len(body["results"])), "3"

    with ThreadPoolExecutor(max_workers=8) as pool:
        for got, expected in pool.map(query, range(48)):
            assert got == expected


def test_classify(client: httpx.Client, corpus: Corpus) -> None:
    labels = ["cat", "dog", "car", "fish", "mountain"]
    response = client.post("/v1/classify", files={"file": ("x.jpg", corpus.photos[0].read_bytes())},
                           data={"labels": " cat, dog,car ,fish,mountain,dog,"})
    assert response.status_code == 200, response.text
    scored = response.json()["labels"]
    assert sorted(item["label"] for item in scored) == sorted(labels)  # trimmed, duplicates and blanks gone
    scores = [item["score"] for item in scored]
    assert scores == sorted(scores, reverse=True)
    assert sum(scores) == pytest.approx(1.0, abs=1e-5)
    assert all(0 <= score <= 1 for score in scores)


def test_classify_one_label_is_certain(client: httpx.Client, corpus: Corpus) -> None:
    response = client.post("/v1/classify", files={"file": ("x.jpg", corpus.photos[1].read_bytes())},
                           data={"labels": "cat"})
    assert response.status_code == 200
    assert response.json()["labels"] == [{"label": "cat", "score": pytest.approx(1.0)}]


def test_get_image_serves_the_indexed_file(client: httpx.Client, corpus: Corpus) -> None:
    hit = search(client, text="a photo", k=1)["results"][0]
    response = client.get(f"/v1/images/{hit['id']}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    assert response.content == Path(hit["uri"]).read_bytes()


def test_collections(client: httpx.Client, corpus: Corpus, tiny_model: ClipModel) -> None:
    response = client.get("/v1/collections")
    assert response.status_code == 200
    [collection] = response.json()["collections"]
    assert collection["name"] == corpus.settings.collection
    assert collection["count"] == PHOTOS
    assert collection["model"]["dim"] == tiny_model.dim == 32
    assert collection["model"]["weights"] == tiny_model.identity.weights


def test_metrics_after_searches(client: httpx.Client) -> None:
    search(client, text="a cat", k=3)
    search(client, text="a cat", k=3)  # the second one comes from the text-embedding cache
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for name in (
        "clipsearch_http_requests_total",
        "clipsearch_http_request_duration_seconds_bucket",
        "clipsearch_query_stage_duration_seconds_bucket",
        "clipsearch_text_cache_hits_total",
        "clipsearch_text_cache_misses_total",
    ):
        assert name in text, name
    assert 'route="/v1/search"' in text and 'status="200"' in text
    for stage in ("encode", "search", "fetch"):
        assert f'stage="{stage}"' in text
    hits = next(line for line in text.splitlines() if line.startswith("clipsearch_text_cache_hits_total"))
    assert float(hits.split()[-1]) >= 1
    # Route templates, not raw paths, label requests: ids never become label values.
    client.get(f"/v1/images/{uuid.uuid4()}")
    assert 'route="/v1/images/{id}"' in client.get("/metrics").text


def test_openapi_and_docs(client: httpx.Client) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    schema = json.loads(response.text)
    paths = schema["paths"]
    for path, method in [("/healthz", "get"), ("/v1/search", "post"), ("/v1/search/image", "post"),
                         ("/v1/classify", "post"), ("/v1/images/{id}", "get"), ("/v1/collections", "get")]:
        assert method in paths[path], path
    schemas = schema["components"]["schemas"]
    for name in ("SearchRequest", "SearchResponse", "SearchResult", "ClassifyResponse", "CollectionsResponse",
                 "ErrorResponse", "ImageSearchForm", "ClassifyForm"):
        assert schemas[name].get("description"), name
    assert "securitySchemes" not in schema.get("components", {})  # no API key configured here
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower() and "/openapi.json" in docs.text


# --- client errors: 4xx with a JSON detail, never 500 ---------------------------------------------------


@pytest.mark.parametrize("item_id", ["00000000-0000-0000-0000-000000000000", "not-an-id", "..", "%2e%2e"])
def test_image_unknown_ids_are_404(client: httpx.Client, item_id: str) -> None:
    assert_error(client.get(f"/v1/images/{item_id}"), 404)


def test_image_random_uuid_is_404(client: httpx.Client) -> None:
    assert_error(client.get(f"/v1/images/{uuid.uuid4()}"), 404, "no indexed image")


@pytest.mark.parametrize("path", [
    "/v1/images/../../etc/passwd",
    "/v1/images/..%2f..%2fetc%2fpasswd",
    "/v1/images/%2e%2e%2fetc%2fpasswd",
    "/v1/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/v1/images//etc/passwd",
    "/v1/images/%2Fetc%2Fpasswd",
    "/v1/images/etc/passwd",
    "/v1/images/",
    "/v1/images/%00",
])
def test_path_like_image_ids_are_404(base_url: str, path: str) -> None:
    status, body = raw_get(base_url, path)
    assert status == 404, (path, status, body)
    assert isinstance(json.loads(body)["detail"], str)
    assert b"root:" not in body


def test_image_whose_file_was_deleted_is_404(client: httpx.Client, corpus: Corpus) -> None:
    photo = corpus.photos[-1]  # no other test uses the last photo's file
    item_id = corpus.ids[corpus.uris.index(str(photo))]
    assert client.get(f"/v1/images/{item_id}").status_code == 200
    photo.unlink()
    assert_error(client.get(f"/v1/images/{item_id}"), 404, "file is gone")


@pytest.mark.parametrize("body, message", [
    ({"text": "", "k": 3}, "empty"),
    ({"text": "   \n\t", "k": 3}, "empty"),
    ({"k": 3}, "exactly one"),
    ({"text": "a cat", "image_id": "00000000-0000-0000-0000-000000000000"}, "exactly one"),
    ({"text": "a cat", "k": 0}, "k"),
    ({"text": "a cat", "k": -5}, "k"),
    ({"text": "a cat", "k": 1001}, "between 1 and 1000"),
    ({"text": "a cat", "k": "many"}, "k"),
    ({"text": "x" * 1001}, "text"),
    ({"text": "a cat", "colour": "red"}, "colour"),
])
def test_bad_search_requests_are_422(client: httpx.Client, body: dict[str, Any], message: str) -> None:
    assert_error(client.post("/v1/search", json=body), 422, message)


def test_malformed_json_is_422(client: httpx.Client) -> None:
    response = client.post("/v1/search", content=b'{"text": ', headers={"content-type": "application/json"})
    assert_error(response, 422)


@pytest.mark.parametrize("image_id", ["00000000-0000-0000-0000-000000000000", "../../etc/passwd", "42", ""])
def test_unknown_or_malformed_image_id_is_404(client: httpx.Client, image_id: str) -> None:
    assert_error(client.post("/v1/search", json={"image_id": image_id}), 404, "no indexed image")


@pytest.mark.parametrize("route, data", [("/v1/search/image", {}), ("/v1/classify", {"labels": "cat,dog"})])
@pytest.mark.parametrize("content, reason", [
    (b"this is not an image", "not an image"),
    (b"", "empty"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, ""),  # a PNG signature, then garbage
])
def test_non_image_upload_is_400(client: httpx.Client, route: str, data: dict[str, str], content: bytes,
                                 reason: str) -> None:
    response = client.post(route, files={"file": ("photo.jpg", content, "image/jpeg")}, data=data)
    assert_error(response, 400, reason)


def test_truncated_jpeg_is_400(client: httpx.Client, corpus: Corpus) -> None:
    data = corpus.photos[2].read_bytes()[:2000]
    assert_error(client.post("/v1/search/image", files={"file": ("cut.jpg", data)}), 400)


def test_upload_without_file_is_422(client: httpx.Client) -> None:
    assert_error(client.post("/v1/search/image", data={"k": "3"}), 422, "file")
    assert_error(client.post("/v1/search/image", json={"k": 3}), 422)


@pytest.mark.parametrize("k", ["0", "1001", "ten"])
def test_upload_search_k_out_of_range_is_422(client: httpx.Client, k: str) -> None:
    response = client.post("/v1/search/image", files={"file": ("x.png", png_bytes((32, 32)))}, data={"k": k})
    assert_error(response, 422, "k")


@pytest.mark.parametrize("data", [{}, {"labels": ""}, {"labels": " , ,"}])
def test_classify_without_labels_is_422(client: httpx.Client, corpus: Corpus, data: dict[str, str]) -> None:
    upload = {"file": ("x.jpg", corpus.photos[0].read_bytes())}
    assert_error(client.post("/v1/classify", files=upload, data=data), 422, "labels")


def test_classify_too_many_labels_is_422(client: httpx.Client) -> None:
    labels = ",".join(f"label{i}" for i in range(300))
    upload = {"file": ("x.png", png_bytes((32, 32)))}
    assert_error(client.post("/v1/classify", files=upload, data={"labels": labels}), 422, "at most")


def test_unknown_route_and_wrong_method_are_json(client: httpx.Client) -> None:
    assert_error(client.get("/v1/nothing-here"), 404)
    assert_error(client.get("/v1/search"), 405)


# --- a server whose collection does not exist yet -------------------------------------------------------


def test_missing_collection_is_404_not_500(
    tmp_path: Path, tiny_checkpoint: Path, tiny_model: ClipModel
) -> None:
    settings = make_settings(tmp_path / "empty-home", tiny_checkpoint, collection="photos")
    with serve(create_app(settings, model=tiny_model)) as url, httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/healthz").json() == {"status": "ok", "vlm": "off"}
        expected = (
            "collection 'photos' not found: index it first (`clipsearch index SOURCE --collection photos`, "
            "or `clipsearch serve --watch FOLDER`)"
        )
        assert assert_error(http.post("/v1/search", json={"text": "a cat"}), 404) == expected
        assert assert_error(http.post("/v1/search", json={"image_id": str(uuid.uuid4())}), 404) == expected
        upload = {"file": ("x.png", png_bytes((32, 32)))}
        assert assert_error(http.post("/v1/search/image", files=upload), 404) == expected
        assert assert_error(http.post("/v1/classify", files=upload, data={"labels": "a,b"}), 404) == expected
        assert assert_error(http.get(f"/v1/images/{uuid.uuid4()}"), 404) == expected
        assert http.get("/v1/collections").json() == {"collections": []}


def test_engine_errors_are_409_and_503_not_500(
    tmp_path: Path, imagenet_dir: Path, tiny_checkpoint: Path, tiny_model: ClipModel
) -> None:
    photo_copies(imagenet_dir, tmp_path / "photos", 3)
    settings = make_settings(tmp_path / "home", tiny_checkpoint)
    index_sources(settings, [tmp_path / "photos"], model=tiny_model, progress=False)
    text = {"text": "a cat", "k": 2}

    # A model other than the one the collection was built with serves only collections that record it:
    # this collection is searched with its own recorded model, never with mixed vectors.
    other = copy.copy(tiny_model)
    other.identity = dataclasses.replace(tiny_model.identity, weights="sha256:" + "0" * 64)
    other.encode_texts = lambda texts: pytest.fail("the other model encoded a query")  # type: ignore[method-assign]
    with serve(create_app(settings, model=tiny_model)) as url:
        expected = httpx.post(f"{url}/v1/search", json=text, timeout=30).json()["results"]
    with serve(create_app(settings, model=other)) as url:
        assert httpx.post(f"{url}/v1/search", json=text, timeout=30).json()["results"] == expected

    # The embedded store admits one opener: a second server over the same collection answers 409 (busy)
    # and says why on /readyz. (The store's own message says so; only its naming the collection is checked.)
    with serve(create_app(settings, model=tiny_model)) as first, serve(create_app(settings)) as second:
        [listed] = httpx.get(f"{first}/v1/collections").json()["collections"]
        assert listed["count"] == 3 and listed["error"] is None and listed["default"]
        assert httpx.post(f"{first}/v1/search", json=text, timeout=30).status_code == 200
        assert httpx.get(f"{first}/readyz").status_code == 200
        assert_error(httpx.post(f"{second}/v1/search", json=text, timeout=30), 409, "'default'")
        not_ready = httpx.get(f"{second}/readyz")
        assert not_ready.status_code == 503 and "'default'" in not_ready.json()["reason"]
        [listed] = httpx.get(f"{second}/v1/collections").json()["collections"]
        assert listed["count"] is None and "'default'" in listed["error"]
