"""The Streamlit UI, driven with Streamlit's AppTest against a real API server on a loopback port.

One store with three collections is indexed with the tiny model and served by `search_api` in a
background thread for the whole module; each test points the UI at it through CLIPSEARCH_API_URL.
- `default` (the server's): 40 real photos, and one file that is not an image (a failure);
- `single`: one photo, whose record carries a catalog-style `title`;
- `empty`: nothing indexed, only the failed file.
"""

from __future__ import annotations

import html
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from tests.helpers import app_test, photo_copies, refusing_port
from ui.client import ApiClient, ApiError, ApiUnreachable
from ui.format import camera, display_name, file_name, photo_facts, plural, short_path

PHOTOS = 40
TITLE = "Harbour at dusk"
NOT_AN_IMAGE = b"this is not an image"


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, imagenet_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("ui") / "photos"
    photo_copies(imagenet_dir, folder, PHOTOS)
    return folder


@pytest.fixture(scope="module")
def broken(photos: Path) -> Path:
    """A file with an image's name and no image in it: the indexer records it as failed."""
    path = photos.parent / "bad" / "broken.jpg"
    path.parent.mkdir()
    path.write_bytes(NOT_AN_IMAGE)
    return path


@pytest.fixture(scope="module")
def single(photos: Path, imagenet_dir: Path) -> Path:
    """The one photo of the `single` collection (not one of the 40)."""
    path = photos.parent / "single" / "lone.jpg"
    path.parent.mkdir()
    shutil.copy2(sorted(imagenet_dir.glob("*.JPEG"))[PHOTOS], path)
    return path


def give_title(settings: Any, collection: str, title: str) -> None:
    """What a catalog source stores: a declared `title` field in the item's metadata."""
    from indexer.stores import open_store

    store = open_store(settings, collection)
    try:
        store.set_schema(store.schema.with_fields({"title": "text"}))
        [record] = list(store.scan())
        payload = {**record.payload, "metadata": {**record.payload.get("metadata", {}), "title": title}}
        store.set_payloads({record.id: payload})
    finally:
        store.close()


@pytest.fixture(scope="module")
def api_url(photos: Path, broken: Path, single: Path, tiny_checkpoint: Path, tiny_model) -> Iterator[str]:
    """A live API over three freshly indexed collections, served by uvicorn in a background thread."""
    from indexer.ingest.pipeline import index_sources
    from search_api.app import create_app
    from tests.helpers import make_settings, serve

    settings = make_settings(photos.parent / "home", tiny_checkpoint)
    report = index_sources(settings, [photos, broken.parent], model=tiny_model, progress=False)
    assert (report.embedded, report.failed) == (PHOTOS, 1)
    report = index_sources(settings, [single.parent], collection="single", model=tiny_model, progress=False)
    assert report.embedded == 1
    give_title(settings, "single", TITLE)
    report = index_sources(settings, [broken.parent], collection="empty", model=tiny_model, progress=False)
    assert (report.embedded, report.failed) == (0, 1)
    with serve(create_app(settings, model=tiny_model)) as url:
        yield url


def start(url: str, monkeypatch: pytest.MonkeyPatch, **state: Any) -> AppTest:
    return app_test(url, monkeypatch, **state)


@pytest.fixture
def app(api_url: str, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    at = start(api_url, monkeypatch)
    assert not at.exception and not at.error
    return at


def photo(photos: Path, index: int = 0) -> Path:
    return sorted(photos.iterdir())[index]


def result_captions(at: AppTest) -> list[str]:
    """Captions of the result thumbnails (an uploaded query image is captioned "your image"): a product's
    title; a photo has none (its path line says what it is)."""
    return [caption for image in at.main.image for caption in image.captions
            if caption not in ("your image", "")]


PATH_LINE = re.compile(
    r'<div class="cs-path" title="([^"]*)">([^<]*)</div>'
    r'(?:<div class="cs-facts" title="[^"]*">([^<]*)</div>)?'
)


def card_names(at: AppTest) -> list[str]:
    """What each result card is called: a product's title, a photo's path as shown."""
    return result_captions(at) + [shown for _, shown, _ in path_lines(at)]


def path_lines(at: AppTest) -> list[tuple[str, str, str]]:
    """(full path on hover, path shown, facts) of each photo card, in grid order."""
    return [(html.unescape(m.group(1)), html.unescape(m.group(2)), html.unescape(m.group(3) or ""))
            for block in at.main.markdown if (m := PATH_LINE.search(block.value))]


def scores(at: AppTest) -> list[float]:
    return [float(m.value.split("**")[1]) for m in at.main.markdown if m.value.startswith("score **")]


def buttons(at: AppTest, label: str) -> list:
    return [button for button in at.main.button if button.label == label]


def search(at: AppTest, text: str, k: int) -> AppTest:
    at.slider(key="k").set_value(k)
    at.text_input(key="query").input(text).run()
    assert not at.exception and not at.error
    return at


def table(at: AppTest, *columns: str) -> Any:
    """The one table on the page with these columns."""
    [found] = [frame.value for frame in at.dataframe if list(frame.value.columns) == list(columns)]
    return found


# --- collection picker ---------------------------------------------------------------------------------


def test_picker_lists_every_collection_and_preselects_the_servers(app: AppTest, api_url: str) -> None:
    picker = app.selectbox(key="collection")
    assert picker.value == "default"  # the server's default collection, though not the first by name
    assert sorted(picker.options) == sorted(
        ["default (40 images)", "single (1 image)", "empty (0 images)"]
    )
    assert app.title[0].value == "clipsearch"
    assert any(api_url in caption.value for caption in app.sidebar.caption)
    assert any("tiny-clip" in caption.value for caption in app.sidebar.caption)  # the model, in words


def test_search_uses_the_picked_collection(app: AppTest, single: Path) -> None:
    app.selectbox(key="collection").set_value("single").run()
    search(app, "a photo of a dog", 5)
    assert result_captions(app) == [TITLE]  # the collection's one item, captioned by its title
    assert app.main.caption[0].value.startswith("1 result ")  # singular
    app.selectbox(key="collection").set_value("default").run()
    assert len(card_names(app)) == 5


def test_empty_collection_says_so(app: AppTest) -> None:
    app.selectbox(key="collection").set_value("empty").run()
    assert not app.exception and not app.error
    assert any("`empty` is empty" in info.value and "clipsearch index" in info.value for info in app.info)
    assert not app.text_input  # nothing to search


def test_a_collection_deleted_since_it_was_picked_is_explained(api_url: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    at = start(api_url, monkeypatch, collection="gone")
    assert not at.exception and not at.error
    assert any("`gone` no longer exists" in warning.value for warning in at.warning)
    assert at.selectbox(key="collection").value == "default"


def test_unreachable_api_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    at = start(f"http://127.0.0.1:{refusing_port()}", monkeypatch)  # bound, never listening: refused
    assert not at.exception
    [error] = at.error
    assert "unreachable" in error.value and "clipsearch serve" in error.value
    assert not at.text_input  # no page to fill in while nothing answers


# --- result grid -----------------------------------------------------------------------------------------


def test_results_are_named_by_their_last_folders_with_the_path_on_hover(app: AppTest, photos: Path) -> None:
    search(app, "a photo of a dog", 5)
    lines = path_lines(app)
    assert len(lines) == 5 == len(app.main.image) and result_captions(app) == []
    for full, shown, facts in lines:
        path = Path(full)
        assert path.is_file() and path.parent == photos
        assert shown == f"{photos.parent.name}/{photos.name}/{path.name}"  # two folders and the name
        with Image.open(path) as image:
            assert f"{image.width} × {image.height} px" in facts  # the resolution, as indexed
    found = scores(app)
    assert len(found) == 5 and found == sorted(found, reverse=True)
    assert app.main.caption[0].value.startswith("5 results")


def test_similar_button_searches_by_image(app: AppTest) -> None:
    search(app, "a red car", 4)
    chosen = card_names(app)[2]
    similar = buttons(app, "Similar")
    assert len(similar) == 4
    similar[2].click().run()
    assert not app.exception and not app.error
    assert any(m.value == f"Images similar to **{chosen}**" for m in app.main.markdown)
    # Self-retrieval: an indexed image's own vector finds it first, with cosine ~1.
    assert card_names(app)[0] == chosen
    assert scores(app)[0] == pytest.approx(1.0, abs=1e-3)
    buttons(app, "Back to text search")[0].click().run()
    assert not any(m.value.startswith("Images similar to") for m in app.main.markdown)


def test_search_by_uploaded_image(app: AppTest, photos: Path) -> None:
    query = photo(photos, 3)
    app.radio(key="page").set_value("Search by image").run()
    app.slider(key="k_image").set_value(6)
    app.file_uploader(key="query_image").upload(query.name, query.read_bytes(), "image/jpeg")
    app.run()
    assert not app.exception and not app.error
    names = card_names(app)
    assert len(names) == 6 and names[0] == f"{photos.parent.name}/{photos.name}/{query.name}"  # itself first


def test_api_error_detail_is_shown(app: AppTest) -> None:
    app.radio(key="page").set_value("Search by image").run()
    app.file_uploader(key="query_image").upload("broken.jpg", NOT_AN_IMAGE, "image/jpeg")
    app.run()
    assert not app.exception
    [error] = app.error
    assert error.value.startswith("API error 4")


# --- detail view -----------------------------------------------------------------------------------------


def open_dialog(at: AppTest) -> Any:
    """The detail dialog open over the page, if any (AppTest keeps it in the main block)."""
    found = [block for block in walk(at._tree) if getattr(block, "type", None) == "dialog"]
    assert len(found) <= 1
    return found[0] if found else None


def walk(node: Any) -> Iterator[Any]:
    yield node
    for child in getattr(node, "children", {}).values():
        yield from walk(child)


def test_details_show_the_original_its_metadata_and_a_download(app: AppTest, photos: Path) -> None:
    search(app, "a bird on a branch", 4)
    name = card_names(app)[1]
    assert open_dialog(app) is None
    buttons(app, "Details")[1].click().run()
    assert not app.exception and not app.error
    dialog = open_dialog(app)
    assert dialog.proto.dialog.title == name
    original = photos / Path(name).name
    width, height = Image.open(original).size
    [image] = dialog.image
    assert image.captions[0].startswith(f"{width} × {height} px · image/jpeg")
    [frame] = dialog.dataframe
    metadata = dict(frame.value.values.tolist())
    assert metadata["file"] == str(original)
    assert (metadata["width"], metadata["height"]) == (str(width), str(height))
    [download] = dialog.get("download_button")
    assert download.proto.label == "Download original"
    assert download.proto.url.endswith(".jpg")  # served as image/jpeg (the browser test downloads it)
    assert len(card_names(app)) == 4  # the results stay on the page under the dialog
    next(button for button in dialog.button if button.label == "Find similar").click().run()
    assert not app.exception and not app.error
    assert open_dialog(app) is None
    assert any(m.value == f"Images similar to **{name}**" for m in app.main.markdown)
    assert card_names(app)[0] == name


def test_details_of_another_collection(app: AppTest, single: Path) -> None:
    app.selectbox(key="collection").set_value("single").run()
    search(app, "anything", 3)
    buttons(app, "Details")[0].click().run()
    assert not app.exception and not app.error
    dialog = open_dialog(app)
    assert dialog.proto.dialog.title == TITLE
    metadata = dict(dialog.dataframe[0].value.values.tolist())
    assert metadata["file"] == str(single) and metadata["title"] == TITLE
    assert [button.proto.label for button in dialog.get("download_button")] == ["Download original"]
    app.radio(key="page").set_value("Failures").run()  # leaving the page closes the dialog
    assert open_dialog(app) is None
    app.radio(key="page").set_value("Search").run()
    assert result_captions(app) == [TITLE] and open_dialog(app) is None


# --- failures page ---------------------------------------------------------------------------------------


def test_failures_page_lists_failed_files_and_vectors(app: AppTest, broken: Path) -> None:
    app.radio(key="page").set_value("Failures").run()
    assert not app.exception and not app.error
    metrics = {metric.label: metric.value for metric in app.metric}
    assert metrics == {"Indexed": "40 images", "Failed": "1 file", "Vectors": "1 vector"}
    failed = table(app, "file", "reason", "path")
    assert failed.values.tolist() == [["broken.jpg", "not an image file", str(broken)]]
    assert table(app, "reason", "files").values.tolist() == [["not an image file", 1]]
    [row] = table(app, "name", "model", "state", "count", "active").values.tolist()
    assert row[0] == "default" and "tiny-clip" in row[1] and row[2:] == ["ready", PHOTOS, True]


def test_failures_page_of_a_clean_collection(app: AppTest) -> None:
    app.radio(key="page").set_value("Failures").run()
    app.selectbox(key="collection").set_value("single").run()
    assert not app.exception and not app.error
    assert {metric.label: metric.value for metric in app.metric}["Failed"] == "0 files"
    assert any("No failed files" in success.value for success in app.success)


# --- classify ----------------------------------------------------------------------------------------------


def test_classify_several_files_a_bad_one_included(app: AppTest, photos: Path) -> None:
    labels = ["cat", "dog", "car", "mountain"]
    app.radio(key="page").set_value("Classify").run()
    app.text_input(key="labels").input(", ".join(labels))
    good = [photo(photos, 0), photo(photos, 5)]
    files = [(good[0].name, good[0].read_bytes(), "image/jpeg"), ("broken.jpg", NOT_AN_IMAGE, "image/jpeg"),
             (good[1].name, good[1].read_bytes(), "image/jpeg")]
    app.file_uploader(key="classify_images").set_value(files).run()
    assert not app.exception
    [error] = app.error
    assert error.value.startswith("broken.jpg: ")
    tables = [frame.value for frame in app.main.dataframe]
    assert len(tables) == 2  # both good files keep their labels
    for scored in tables:
        assert sorted(scored["label"]) == sorted(labels)
        assert scored["score"].sum() == pytest.approx(1.0, abs=1e-4)
        assert list(scored["score"]) == sorted(scored["score"], reverse=True)
    named = [m.value for m in app.main.markdown if m.value.startswith("**")]
    assert [value.split("**")[1] for value in named] == [good[0].name, good[1].name]
    assert "2 images labelled, 1 failed" in [caption.value for caption in app.main.caption]


# --- the client and the words, against the same live server -------------------------------------------------


def test_client_against_live_api(api_url: str, photos: Path, single: Path, broken: Path) -> None:
    client = ApiClient(api_url)
    try:
        assert client.health()["status"] == "ok"
        found = {c["name"]: c for c in client.collections()}
        assert found["default"]["count"] == PHOTOS and found["default"]["default"] is True
        assert found["single"]["count"] == 1 and not found["single"]["default"]
        query = photo(photos, 7)
        hits = client.search_image(query.read_bytes(), query.name, k=3).results
        assert len(hits) == 3 and hits[0].uri == str(query)
        assert client.search_similar(hits[0].id, k=1).results[0].id == hits[0].id
        original = client.original(hits[0].id)
        assert (original.data, original.media_type) == (query.read_bytes(), "image/jpeg")
        item = client.item("default", hits[0].id)
        assert (item.id, item.uri) == (hits[0].id, str(query))
        assert item.metadata["width"] == Image.open(query).width
        labels = client.classify(query.read_bytes(), ["cat", "dog"], collection="single")
        assert {label for label, _ in labels} == {"cat", "dog"}
        [lone] = client.search_text("x", k=5, collection="single").results
        assert lone.uri == str(single) and client.image(lone.id, "single") == single.read_bytes()
        with pytest.raises(ApiError) as elsewhere:  # an id is looked up in the collection named
            client.item("default", lone.id)
        assert elsewhere.value.status == 404
        assert client.status("empty")["failed"] == [{"uri": str(broken), "reason": "not an image file"}]
        with pytest.raises(ApiError) as missing:
            client.status("nosuch")
        assert missing.value.status == 404 and "nosuch" in missing.value.detail
    finally:
        client.close()


def test_client_reports_unreachable() -> None:
    client = ApiClient(f"http://127.0.0.1:{refusing_port()}")
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


def test_words() -> None:
    assert [plural(n, "image") for n in (0, 1, 2)] == ["0 images", "1 image", "2 images"]
    assert file_name("/home/me/Pictures/2024/IMG_0001.JPG") == "IMG_0001.JPG"
    assert file_name("https://cdn.example.com/p/red%20shoe.jpg?sig=abc") == "red shoe.jpg"
    assert file_name("C:\\Users\\me\\cat.png") == "cat.png"
    assert display_name("/x/a.jpg", {"title": "  Red shoe "}) == "Red shoe"
    assert display_name("/x/a.jpg", {"title": ""}) == display_name("/x/a.jpg", {}) == "x/a.jpg"
    assert short_path("/data/imagenet/n01440764/0009.jpg") == "imagenet/n01440764/0009.jpg"
    assert short_path("0009.jpg") == "0009.jpg"
    assert short_path("C:\\Users\\me\\Pics\\a.jpg") == "me/Pics/a.jpg"
    assert camera({"camera_make": "Canon", "camera_model": "Canon EOS 10D"}) == "Canon EOS 10D"
    assert camera({"camera_make": "Apple", "camera_model": "iPhone 12"}) == "Apple iPhone 12"
    assert photo_facts({"taken": "2005-01-30T13:40:31Z", "width": 500, "height": 375,
                        "camera_make": "Canon", "camera_model": "Canon EOS 10D",
                        "location": {"lat": 38.7223, "lon": -9.1393}}) == [
        "2005-01-30 13:40", "Canon EOS 10D", "500 × 375 px", "38.722, -9.139"]
