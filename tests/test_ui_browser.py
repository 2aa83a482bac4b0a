"""The UI in a real headless Chromium: `streamlit run` (from ui/, with its config) against a live API over
40 real photos and one file that is not an image. Search, open a result's details and download the
original, see the failures page. Skipped where Chromium or playwright is missing.

Chromium comes from the OS (`apt-get install -y chromium`), never from `playwright install`.
Set CLIPSEARCH_UI_SCREENSHOTS=/some/folder to keep the screenshots it takes (search, details, failures).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import (
    CHROMIUM,
    chromium_browser,
    eventually,
    make_settings,
    photo_copies,
    serve,
    streamlit_ui,
)

TESTS = Path(__file__).parent
APP = TESTS.parent / "ui" / "app.py"
PHOTOS = 40
K = 12  # the UI's default number of results
GRID_IMAGES = '[data-testid="stMain"] [class*="st-key-results-"] [data-testid="stImage"] img'
GRID_CAPTIONS = '[class*="st-key-results-"] .cs-path'  # a photo's last folders and name; the path on hover

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} absent (apt-get install -y chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install it)")
NOT_YET = (AssertionError, sync_api.Error)  # what a read of a page that is still re-rendering may raise


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, imagenet_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("ui-browser") / "photos"
    photo_copies(imagenet_dir, folder, PHOTOS)
    return folder


@pytest.fixture(scope="module")
def broken(photos: Path) -> Path:
    path = photos.parent / "bad" / "broken.jpg"
    path.parent.mkdir()
    path.write_bytes(b"this is not an image")
    return path


@pytest.fixture(scope="module")
def api_url(photos: Path, broken: Path, tiny_checkpoint: Path, tiny_model) -> Iterator[str]:
    from indexer.ingest.pipeline import index_sources
    from search_api.app import create_app

    settings = make_settings(photos.parent / "home", tiny_checkpoint)
    report = index_sources(settings, [photos, broken.parent], model=tiny_model, progress=False)
    assert (report.embedded, report.failed) == (PHOTOS, 1)
    with serve(create_app(settings, model=tiny_model)) as url:
        yield url


@pytest.fixture(scope="module")
def ui_url(api_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with streamlit_ui(api_url, tmp_path_factory.mktemp("streamlit")) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with chromium_browser() as chromium:
        yield chromium


@pytest.fixture
def page(browser, ui_url: str) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.goto(ui_url)
    picker = page.get_by_role("combobox", name="Collection")  # the server's default, preselected
    sync_api.expect(picker).to_have_value(f"default ({PHOTOS} images)", timeout=60_000)
    yield page
    context.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("CLIPSEARCH_UI_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# One reading of the result grid, taken in the page in one step: each thumbnail's decoded width (0
# while it loads), each caption's text and how it wraps.
GRID_STATE = """([images, captions]) => ({
    widths: [...document.querySelectorAll(images)].map(e => e.complete ? e.naturalWidth : 0),
    names: [...document.querySelectorAll(captions)].map(e => e.innerText),
    titles: [...document.querySelectorAll(captions)].map(e => e.title),
    wrapping: [...document.querySelectorAll(captions)].map(e => getComputedStyle(e).whiteSpace),
})"""


def settled_grid(page, first: str | None = None) -> dict[str, list]:
    """The grid once it shows K decoded thumbnails with their captions (`first` first, when given, to
    tell a new grid from the one it replaces): the reading that was waited for, never a later one."""
    def shown() -> dict[str, list]:
        grid = page.evaluate(GRID_STATE, [GRID_IMAGES, GRID_CAPTIONS])
        assert grid["widths"] == [320] * K and len(grid["names"]) == K, grid  # thumbnail size
        assert first is None or grid["names"][0] == first, grid
        return grid

    return eventually(shown, 60, "the result grid", retry_on=NOT_YET)


def search(page, text: str) -> dict[str, list]:
    box = page.get_by_label("Describe the images you want")
    box.fill(text)
    box.press("Enter")
    return settled_grid(page)


def test_search_grid(page, photos: Path, shots: Path) -> None:
    grid = search(page, "a photo of a dog")
    # Every thumbnail decoded in the browser (bytes went API -> Streamlit -> page), at thumbnail size.
    assert grid["widths"] == [320] * K
    names = grid["names"]
    assert len(names) == K and all(name == f"{photos.parent.name}/{photos.name}/{Path(name).name}"
                                   for name in names)  # two folders and the name tell files apart
    assert grid["titles"] == [str(photos / Path(name).name) for name in names]  # the whole path on hover
    # One line each: a long name is cut with an ellipsis, never broken mid-word.
    assert grid["wrapping"] == ["nowrap"] * K
    # No full-screen button on a thumbnail (the detail view shows the original instead).
    page.locator(GRID_IMAGES).first.hover()
    toolbars = page.locator('[class*="st-key-results-"] [data-testid="stElementToolbar"]')
    sync_api.expect(toolbars.first).to_be_attached()
    for toolbar in toolbars.all():
        sync_api.expect(toolbar).to_be_hidden()
    sync_api.expect(page.get_by_text(f"{K} results")).to_have_count(1)
    sync_api.expect(page.get_by_role("button", name="Deploy")).to_have_count(0)  # a product (ui config)
    page.screenshot(path=str(shots / "search.png"), full_page=True)


def test_details_show_and_download_the_original(page, photos: Path, shots: Path) -> None:
    name = search(page, "a bird on a branch")["names"][1]
    original = photos / Path(name).name
    page.get_by_role("button", name="Details").nth(1).click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text(name, exact=True).first.wait_for(timeout=30_000)
    image = dialog.locator('[data-testid="stImage"] img')

    def the_original_is_shown() -> None:  # its own pixels, not a 320 px thumbnail: read once loaded
        size = image.evaluate("e => e.complete ? [e.naturalWidth, e.naturalHeight] : null")
        assert size is not None and tuple(size) == Image.open(original).size, size

    eventually(the_original_is_shown, 30, "the original in the dialog", retry_on=NOT_YET)
    page.screenshot(path=str(shots / "details.png"))
    with page.expect_download() as download:
        dialog.get_by_role("button", name="Download original").click()
    assert download.value.suggested_filename == original.name
    assert Path(download.value.path()).read_bytes() == original.read_bytes()
    dialog.get_by_role("button", name="Find similar").click()
    page.get_by_text(f"Images similar to {name}").wait_for(timeout=30_000)
    sync_api.expect(page.get_by_role("dialog")).to_have_count(0)
    settled_grid(page, first=name)  # the photo itself is the most similar


def test_failures_page(page, broken: Path, shots: Path) -> None:
    page.locator('[data-testid="stSidebar"] label').filter(has_text="Failures").click()
    page.get_by_text("Failed files", exact=True).wait_for(timeout=30_000)
    page.wait_for_load_state("networkidle")
    metrics = page.locator('[data-testid="stMetricValue"]')
    sync_api.expect(metrics).to_have_text([f"{PHOTOS} images", "1 file", "1 vector"], timeout=30_000)
    # The tables draw on a canvas; their accessible copy (a hidden <table>) holds the cells.
    failed = page.locator('[data-testid="stDataFrame"]').nth(1).locator("table")
    sync_api.expect(failed.get_by_text("broken.jpg", exact=True)).to_have_count(1)
    sync_api.expect(failed.get_by_text(str(broken), exact=True)).to_have_count(1)
    sync_api.expect(failed.get_by_text("not an image file", exact=True)).to_have_count(1)
    page.screenshot(path=str(shots / "failures.png"), full_page=True)


def test_classify_several_files(page, photos: Path, broken: Path, shots: Path) -> None:
    page.locator('[data-testid="stSidebar"] label').filter(has_text="Classify").click()
    uploader = page.locator('[data-testid="stFileUploader"] input[type="file"]')
    uploader.wait_for(state="attached", timeout=30_000)
    good = sorted(photos.iterdir())[:2]
    uploader.set_input_files([str(good[0]), str(broken), str(good[1])])
    page.get_by_text("2 images labelled, 1 failed").wait_for(timeout=60_000)
    main = page.locator('[data-testid="stMain"]')
    sync_api.expect(main.locator('[data-testid="stAlertContentError"]')).to_have_text(
        ["broken.jpg: not an image file"])
    sync_api.expect(main.locator('[data-testid="stDataFrame"]')).to_have_count(2)
    page.screenshot(path=str(shots / "classify.png"), full_page=True)
