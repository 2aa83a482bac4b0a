"""The gallery, shop and curation pages in a real headless Chromium, the UI started by the real
`clipsearch ui --api-key` against a server that wants the key (the collections of tests/test_ui_gallery.py).
Skipped where Chromium or playwright is missing. Set CLIPSEARCH_UI_SCREENSHOTS=/some/folder to keep the
screenshots (gallery search, shop failures, duplicates, the page without a key)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clirun import REPO
from tests.gallery import KEY, api_url, home  # noqa: F401  (the shared collections' fixtures)
from tests.helpers import CHROMIUM, chromium_browser, eventually, free_port, streamlit_ui, wait_until_healthy

PATHS = '[data-testid="stMain"] .cs-path'

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} absent (apt-get install -y chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install it)")


@pytest.fixture(scope="module")
def ui_url(api_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:  # noqa: F811
    """`clipsearch ui --api-url URL --api-key KEY`, as a user starts it (no key in its environment)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "CLIPSEARCH_API_KEY"}
    log = tmp_path_factory.mktemp("ui") / "ui.log"
    command = [sys.executable, "-m", "clipsearch", "ui", "--api-url", api_url, "--api-key", KEY,
               "--port", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(process, url, log, "clipsearch ui", 90)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)  # passed on to streamlit
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with chromium_browser() as chromium:
        yield chromium


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("CLIPSEARCH_UI_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def open_page(browser, url: str) -> object:
    context = browser.new_context(viewport={"width": 1400, "height": 1100})
    page = context.new_page()
    page.goto(url)
    return page


def test_gallery_search_with_its_filters_through_clipsearch_ui_with_a_key(
        browser, ui_url: str, home: Path, shots: Path) -> None:  # noqa: F811
    page = open_page(browser, ui_url)
    picker = page.get_by_role("combobox", name="Collection")
    sync_api.expect(picker).to_have_value("default (18 images)", timeout=60_000)  # the key was accepted
    box = page.get_by_label("Describe the images you want")
    box.fill("a photo")
    box.press("Enter")
    paths = page.locator(PATHS)
    sync_api.expect(paths).to_have_count(12, timeout=60_000)  # the UI's default k
    sidebar = page.locator('[data-testid="stSidebar"]')
    for label in ("Date taken", "Camera make", "Camera model", "Place", "Folder"):
        sync_api.expect(sidebar.get_by_text(label, exact=True).first).to_be_visible(timeout=30_000)

    def every_name_is_its_files() -> None:  # titles and texts in one reading: the page may re-render
        shown = paths.evaluate_all("els => els.map(e => [e.title, e.innerText])")
        assert len(shown) == 12, shown
        assert all(title.endswith(text.split("/", 1)[1]) and title.startswith(str(home))
                   for title, text in shown), shown

    eventually(every_name_is_its_files, 60, "the grid's names", retry_on=(AssertionError, sync_api.Error))
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(shots / "gallery-search.png"), full_page=True)
    page.context.close()


def test_shop_failures_and_duplicates_pages(browser, ui_url: str, shots: Path) -> None:
    page = open_page(browser, ui_url)
    picker = page.get_by_role("combobox", name="Collection")
    sync_api.expect(picker).to_have_value("default (18 images)", timeout=60_000)
    page.locator('[data-testid="stSidebar"] label').filter(has_text="Curation").click()
    page.locator('[data-testid="stMain"] label').filter(has_text="Find duplicates").first.click()
    sync_api.expect(page.get_by_text("exact", exact=False).first).to_be_visible(timeout=60_000)
    sync_api.expect(page.locator('[data-testid="stMain"] .cs-facts').first).to_contain_text(" px · ",
                                                                                          timeout=60_000)
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(shots / "duplicates.png"), full_page=True)

    page.locator('[data-testid="stSidebar"] label').filter(has_text="Failures").click()
    picker.click()
    page.get_by_role("option", name="shop").click()
    advice = page.get_by_text("fix each row in the catalog")
    sync_api.expect(advice).to_be_visible(timeout=60_000)
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(shots / "shop-failures.png"), full_page=True)
    page.context.close()


def test_a_ui_without_the_key_says_how_to_give_it(browser, api_url: str,  # noqa: F811
                                                  tmp_path: Path, shots: Path) -> None:
    with streamlit_ui(api_url, tmp_path) as url:  # no CLIPSEARCH_API_KEY
        page = open_page(browser, url)
        error = page.locator('[data-testid="stAlertContentError"]')
        sync_api.expect(error).to_contain_text("clipsearch ui --api-key KEY", timeout=60_000)
        sync_api.expect(error).to_contain_text("wants an API key")
        page.screenshot(path=str(shots / "no-key.png"), full_page=True)
        page.context.close()
