"""The HTTP API's guards, against a real server with an API key, CORS and small limits configured.

Specification: with an API key set, every route but /healthz answers 401 (JSON detail) without the key
or with a wrong one, and works with it sent as X-API-Key or as a Bearer token; the key is checked
before a request body is read. Uploads over max_upload_bytes are 413, whether the size is declared
(Content-Length) or not (chunked); images over max_image_pixels are 400; k over max_k is 422.
CORS preflights from an allowed origin are answered without a key.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from indexer.ingest.pipeline import index_sources
from indexer.models.loading import ClipModel
from search_api import create_app
from search_api.limits import MULTIPART_OVERHEAD
from tests.helpers import assert_error, make_settings, photo_copies, png_bytes, raw_get, serve

KEY = "s3cret-key-\u00e9"  # non-ASCII on purpose: compared as bytes
MAX_UPLOAD = 60_000
MAX_PIXELS = 100 * 100
MAX_K = 5
ORIGIN = "http://ui.example"
PHOTOS = 5
# Past the whole-body limit (the file limit plus multipart room), yet small enough for loopback socket
# buffers to hold: the server answers 413 without reading it all, and a client still writing a body much
# bigger than the buffers could see the connection reset before it reads the answer.
OVER_BODY_LIMIT = MULTIPART_OVERHEAD + 20_000


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, imagenet_dir: Path) -> list[Path]:
    return photo_copies(imagenet_dir, tmp_path_factory.mktemp("api-security") / "photos", PHOTOS)


@pytest.fixture(scope="module")
def base_url(photos: list[Path], tiny_checkpoint: Path, tiny_model: ClipModel) -> Iterator[str]:
    settings = make_settings(
        photos[0].parent.parent / "home", tiny_checkpoint, api_key=KEY, max_upload_bytes=MAX_UPLOAD,
        max_image_pixels=MAX_PIXELS, max_k=MAX_K, cors_origins=[ORIGIN],
    )
    # Indexing is not limited by the API's pixel cap: index with the default, serve with the small one.
    report = index_sources(settings.model_copy(update={"max_image_pixels": 10**8}), [photos[0].parent],
                           model=tiny_model, progress=False)
    assert report.embedded == PHOTOS
    with serve(create_app(settings, model=tiny_model)) as url:
        yield url


@pytest.fixture(scope="module")
def anonymous(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=60) as http:
        yield http


@pytest.fixture(scope="module")
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=60, headers={"X-API-Key": KEY.encode()}) as http:
        yield http


SMALL_PNG = png_bytes((64, 64))  # 4096 pixels: under the cap
PROTECTED = [
    ("POST", "/v1/search", {"json": {"text": "a cat"}}),
    ("POST", "/v1/search/image", {"files": {"file": ("x.png", SMALL_PNG)}}),
    ("POST", "/v1/classify", {"files": {"file": ("x.png", SMALL_PNG)}, "data": {"labels": "a,b"}}),
    ("GET", "/v1/images/6a0f6b0e-2b1c-4d7e-9a3b-5c4d3e2f1a0b", {}),
    ("GET", "/v1/collections", {}),
    ("GET", "/metrics", {}),
    ("GET", "/openapi.json", {}),
    ("GET", "/docs", {}),
    ("GET", "/v1/no-such-route", {}),
]


def test_healthz_needs_no_key(anonymous: httpx.Client) -> None:
    response = anonymous.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok", "vlm": "off"}


@pytest.mark.parametrize("method, path, kwargs", PROTECTED)
@pytest.mark.parametrize("headers", [
    {},
    {"X-API-Key": "wrong"},
    {"X-API-Key": ""},
    {"Authorization": "Bearer wrong"},
    {"Authorization": f"Basic {KEY}"},  # the right secret under the wrong scheme
    {"X-API-Key": KEY[:-1]},  # a prefix of the key
])
def test_without_the_key_every_route_is_401(anonymous: httpx.Client, method: str, path: str, kwargs: dict,
                                            headers: dict[str, str]) -> None:
    encoded = {name: value.encode() for name, value in headers.items()}
    response = anonymous.request(method, path, headers=encoded, **kwargs)
    assert_error(response, 401, "API key")
    assert response.headers["www-authenticate"] == "Bearer"


def test_key_is_checked_before_the_body_is_read(anonymous: httpx.Client) -> None:
    # An oversize upload without the key is refused as unauthenticated: the body never mattered.
    upload = {"file": ("x.jpg", b"\0" * (MAX_UPLOAD + OVER_BODY_LIMIT))}
    assert_error(anonymous.post("/v1/search/image", files=upload), 401)


@pytest.mark.parametrize("headers", [
    {"X-API-Key": KEY.encode()},
    {"Authorization": b"Bearer " + KEY.encode()},
    {"Authorization": b"bearer " + KEY.encode()},
])
def test_with_the_key_routes_work(base_url: str, photos: list[Path], headers: dict[str, bytes]) -> None:
    with httpx.Client(base_url=base_url, timeout=60, headers=headers) as http:
        body = http.post("/v1/search", json={"text": "a photo", "k": 3}).json()
        assert len(body["results"]) == 3
        hit = body["results"][0]
        similar = http.post("/v1/search", json={"image_id": hit["id"], "k": 1}).json()
        assert similar["results"][0]["id"] == hit["id"]
        assert http.get(f"/v1/images/{hit['id']}").content == Path(hit["uri"]).read_bytes()
        [collection] = http.get("/v1/collections").json()["collections"]
        assert collection["count"] == PHOTOS
        upload = http.post("/v1/search/image", files={"file": ("x.png", SMALL_PNG)}, data={"k": "2"})
        assert upload.status_code == 200 and len(upload.json()["results"]) == 2
        labels = http.post("/v1/classify", files={"file": ("x.png", SMALL_PNG)}, data={"labels": "red,blue"})
        assert labels.status_code == 200
        assert http.get("/metrics").status_code == 200
        assert http.get("/docs").status_code == 200


def test_openapi_documents_the_key(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["ApiKeyHeader"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schemes["BearerToken"]["scheme"] == "bearer"
    assert "security" in schema["paths"]["/v1/search"]["post"]
    assert "security" not in schema["paths"]["/healthz"]["get"]


def test_raw_path_traversal_is_401_without_key_and_404_with(base_url: str) -> None:
    path = "/v1/images/../../etc/passwd"
    assert raw_get(base_url, path)[0] == 401
    status, body = raw_get(base_url, path, headers={"X-API-Key": KEY.encode()})
    assert status == 404 and b"root:" not in body


# --- CORS ------------------------------------------------------------------------------------------------


def test_cors_preflight_needs_no_key(anonymous: httpx.Client) -> None:
    response = anonymous.options("/v1/search", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-api-key, content-type",
    })
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN


def test_cors_headers_on_answers_and_errors(client: httpx.Client, anonymous: httpx.Client) -> None:
    ok = client.post("/v1/search", json={"text": "a cat", "k": 1}, headers={"Origin": ORIGIN})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == ORIGIN
    denied = anonymous.get("/v1/collections", headers={"Origin": ORIGIN})
    assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == ORIGIN
    other = client.get("/v1/collections", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers


# --- limits ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("route, data", [("/v1/search/image", {}), ("/v1/classify", {"labels": "a,b"})])
@pytest.mark.parametrize("size", [MAX_UPLOAD + 1, MAX_UPLOAD + 20_000, MAX_UPLOAD + OVER_BODY_LIMIT])
def test_oversize_upload_is_413(client: httpx.Client, route: str, data: dict[str, str], size: int) -> None:
    # Just over the limit is caught by the exact per-file check; far over it by the body limit, from
    # the declared Content-Length, before the body is read.
    response = client.post(route, files={"file": ("big.jpg", b"\xff" * size)}, data=data)
    assert_error(response, 413, f"limit is {MAX_UPLOAD} bytes")


def test_upload_at_the_limit_is_not_413(client: httpx.Client) -> None:
    padded = SMALL_PNG + b"\0" * (MAX_UPLOAD - len(SMALL_PNG))  # trailing bytes after IEND are ignored
    response = client.post("/v1/search/image", files={"file": ("x.png", padded)})
    assert response.status_code == 200, response.text


def _chunked_multipart(file_size: int) -> tuple[Iterator[bytes], str]:
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode()

    def body() -> Iterator[bytes]:
        yield head
        for _ in range(file_size // 8192):
            yield b"\xff" * 8192
        yield f"\r\n--{boundary}--\r\n".encode()

    return body(), f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize("size", [MAX_UPLOAD + 8192, MAX_UPLOAD + OVER_BODY_LIMIT])
def test_chunked_oversize_upload_is_413(client: httpx.Client, size: int) -> None:
    # No Content-Length to check: the body is counted as it arrives.
    content, content_type = _chunked_multipart(size)
    response = client.post("/v1/search/image", content=content, headers={"content-type": content_type})
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "limit")


@pytest.mark.parametrize("route, data", [("/v1/search/image", {}), ("/v1/classify", {"labels": "a,b"})])
def test_too_many_pixels_is_400(client: httpx.Client, photos: list[Path], route: str, data: dict) -> None:
    photo = min(photos, key=lambda path: path.stat().st_size)  # a real photo under the byte limit
    assert photo.stat().st_size <= MAX_UPLOAD
    response = client.post(route, files={"file": ("photo.jpg", photo.read_bytes())}, data=data)
    assert_error(response, 400, f"exceeds the limit of {MAX_PIXELS}")
    tiny_but_wide = png_bytes((MAX_PIXELS + 1, 1))  # few bytes, too many pixels
    assert_error(client.post(route, files={"file": ("wide.png", tiny_but_wide)}, data=data), 400, "too large")


def test_k_over_max_k_is_422(client: httpx.Client) -> None:
    assert client.post("/v1/search", json={"text": "a cat", "k": MAX_K}).status_code == 200
    message = f"between 1 and {MAX_K}"
    assert_error(client.post("/v1/search", json={"text": "a cat", "k": MAX_K + 1}), 422, message)
    upload = {"file": ("x.png", SMALL_PNG)}
    assert_error(client.post("/v1/search/image", files=upload, data={"k": str(MAX_K + 1)}), 422, message)


def test_default_k_is_capped_by_max_k(client: httpx.Client) -> None:
    # k left out: the default (10) is more than this server allows, which is not the client's fault.
    assert len(client.post("/v1/search", json={"text": "a cat"}).json()["results"]) == MAX_K
    upload = client.post("/v1/search/image", files={"file": ("x.png", SMALL_PNG)})
    assert upload.status_code == 200 and len(upload.json()["results"]) == MAX_K
