"""The Streamlit UI, driven with Streamlit's AppTest against a real API server on a loopback port.

One collection of 40 real photos is indexed with the tiny model and served by `search_api` in a
background thread for the whole module; each test points the UI at it through CLIPSEARCH_API_URL.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from streamlit.testing.v1 import AppTest

from ui.client import ApiClient, ApiError, ApiUnreachable

TESTS = Path(__file__).parent
APP = TESTS.parent / "ui" / "app.py"
PHOTOS = 40


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, imagenet_dir: Path) -> Path:
    # conftest's photo_folder is function-scoped; the module shares one indexed copy instead.
    # Only JPEGs: the shared folder also holds a README.md, which is not a photo.
    folder = tmp_path_factory.mktemp("ui") / "photos"
    folder.mkdir()
    for source in sorted(imagenet_dir.glob("*.JPEG"))[:PHOTOS]:
        shutil.copy2(source, folder / source.name)
    return folder


@pytest.fixture(scope="module")
def api_url(photos: Path, tiny_checkpoint: Path, tiny_model) -> Iterator[str]:
    """A live API over a freshly indexed collection, served by uvicorn in a background thread."""
    create_app = pytest.importorskip("search_api.app", reason="search_api.app not written yet").create_app
    import uvicorn

    from indexer.pipeline import index_sources
    from indexer.settings import Settings

    # The same settings conftest's `settings` fixture exports, given directly: module scope can't use it.
    settings = Settings(
        home=photos.parent / "home", model=str(TESTS / "tiny-clip.json"), pretrained=str(tiny_checkpoint),
        device="cpu", workers=1, batch_size=16, api_key=None,
    )
    report = index_sources(settings, [photos], model=tiny_model, progress=False)
    assert report.embedded == PHOTOS

    port = free_port()
    app = create_app(settings, model=tiny_model)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert thread.is_alive() and time.monotonic() < deadline, "API server did not come up"
        time.sleep(0.1)
    yield url
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def app(api_url: str, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("CLIPSEARCH_API_URL", api_url)
    monkeypatch.delenv("CLIPSEARCH_API_KEY", raising=False)
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    assert not at.exception
    return at


def photo(photos: Path, index: int = 0) -> Path:
    return sorted(photos.iterdir())[index]


def result_captions(block) -> list[str]:
    """Captions of the result thumbnails in a tab (the uploaded query image is captioned differently)."""
    return [caption for image in block.image for caption in image.captions if caption != "your image"]


def scores(block) -> list[float]:
    return [float(m.value.split("**")[1]) for m in block.markdown if m.value.startswith("score **")]


def test_renders_with_collection_status(app: AppTest, api_url: str) -> None:
    assert app.title[0].value == "clipsearch"
    assert [tab.label for tab in app.tabs] == ["Search", "Search by image", "Classify"]
    sidebar = app.sidebar
    assert any(api_url in caption.value for caption in sidebar.caption)
    assert sidebar.success[0].value == "API is up"
    assert sidebar.metric[0].value == f"{PHOTOS} images"
    assert "`default`" in sidebar.metric[0].label
    assert not app.error


def test_text_search_shows_k_results(app: AppTest, photos: Path) -> None:
    app.slider(key="k").set_value(5)
    app.text_input(key="query").input("a photo of a dog").run()
    assert not app.exception and not app.error
    search = app.tabs[0]
    captions = result_captions(search)
    assert len(captions) == 5 == len(search.image)
    assert all(Path(uri).parent == photos and Path(uri).is_file() for uri in captions)
    found = scores(search)
    assert len(found) == 5 and found == sorted(found, reverse=True)
    assert search.caption[0].value.startswith("5 results")


def test_similar_button_searches_by_image_id(app: AppTest) -> None:
    app.slider(key="k").set_value(4)
    app.text_input(key="query").input("a red car").run()
    chosen = result_captions(app.tabs[0])[2]
    similar = [button for button in app.tabs[0].button if button.label == "similar"]
    assert len(similar) == 4
    similar[2].click().run()
    assert not app.exception and not app.error
    search = app.tabs[0]
    assert any(m.value == f"Images similar to `{chosen}`" for m in search.markdown)
    # Self-retrieval: an indexed image's own vector finds it first, with cosine ~1.
    assert result_captions(search)[0] == chosen
    assert scores(search)[0] == pytest.approx(1.0, abs=1e-3)
    back = next(button for button in search.button if button.label == "back to text search")
    back.click().run()
    assert not any(m.value.startswith("Images similar to") for m in app.tabs[0].markdown)


def test_search_by_uploaded_image(app: AppTest, photos: Path) -> None:
    query = photo(photos, 3)
    app.slider(key="k_image").set_value(6)
    app.file_uploader(key="query_image").upload(query.name, query.read_bytes(), "image/jpeg")
    app.run()
    assert not app.exception and not app.error
    block = app.tabs[1]
    captions = result_captions(block)
    assert len(captions) == 6
    assert captions[0] == str(query)  # an indexed photo finds itself first
    assert len(scores(block)) == 6


def test_classify_shows_every_label(app: AppTest, photos: Path) -> None:
    labels = ["cat", "dog", "car", "mountain"]
    app.text_input(key="labels").input(", ".join(labels))
    image = photo(photos)
    app.file_uploader(key="classify_image").upload(image.name, image.read_bytes(), "image/jpeg")
    app.run()
    assert not app.exception and not app.error
    table = app.tabs[2].dataframe[0].value
    assert sorted(table["label"]) == sorted(labels)
    assert table["score"].sum() == pytest.approx(1.0, abs=1e-4)
    assert list(table["score"]) == sorted(table["score"], reverse=True)


def test_api_error_detail_is_shown(app: AppTest) -> None:
    app.file_uploader(key="query_image").upload("broken.jpg", b"this is not an image", "image/jpeg")
    app.run()
    assert not app.exception
    errors = [error.value for error in app.tabs[1].error]
    assert len(errors) == 1 and errors[0].startswith("API error 4")


def test_unreachable_api_is_an_error_not_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # bound then released: nothing listens there
    monkeypatch.setenv("CLIPSEARCH_API_URL", closed)
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    assert not at.exception
    assert "unreachable" in at.sidebar.error[0].value
    at.text_input(key="query").input("a dog").run()
    assert not at.exception
    assert any("unreachable" in error.value for error in at.tabs[0].error)


# --- the client behind the layout, against the same live server ---------------------------------------


def test_client_against_live_api(api_url: str, photos: Path) -> None:
    client = ApiClient(api_url)
    try:
        assert client.health()["status"] == "ok"
        [collection] = client.collections()
        assert collection["count"] == PHOTOS
        query = photo(photos, 7)
        hits = client.search_image(query.read_bytes(), query.name, k=3).results
        assert len(hits) == 3 and hits[0].uri == str(query)
        assert client.search_similar(hits[0].id, k=1).results[0].id == hits[0].id
        assert client.image(hits[0].id) == query.read_bytes()
        labels = client.classify(query.read_bytes(), ["cat", "dog"])
        assert {label for label, _ in labels} == {"cat", "dog"}
        with pytest.raises(ApiError) as missing:
            client.search_similar("00000000-0000-0000-0000-000000000000")
        assert 400 <= (missing.value.status or 0) < 500 and missing.value.detail
    finally:
        client.close()


def test_client_reports_unreachable() -> None:
    client = ApiClient(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ApiUnreachable):
        client.health()


def test_client_sends_api_key_and_reads_error_details() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.headers.get("X-API-Key") != "s3cret":
            return httpx.Response(401, json={"detail": "missing or wrong API key"})
        # FastAPI's own validation errors carry a list of {"msg": ...} as detail.
        return httpx.Response(422, json={"detail": [{"loc": ["body", "k"], "msg": "k must be at least 1"}]})

    with pytest.raises(ApiError, match="missing or wrong API key"):
        ApiClient("http://api.test", transport=httpx.MockTransport(handler)).collections()
    with pytest.raises(ApiError, match="k must be at least 1") as invalid:
        ApiClient("http://api.test", "s3cret", transport=httpx.MockTransport(handler)).search_text("x", k=0)
    assert invalid.value.status == 422
    assert [request.url.path for request in seen] == ["/v1/collections", "/v1/search"]
