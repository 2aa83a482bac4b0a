"""A real headless-Chromium smoke test of the UI: `streamlit run` against the live API, type a query,
press Enter, wait for the thumbnails to load. Skipped where Chromium or playwright is missing.

Chromium comes from the OS (`apt-get install -y chromium`), never from `playwright install`.
Set CLIPSEARCH_UI_SCREENSHOT=/some/file.png to keep the screenshot it takes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

# The module-scoped live API (a 40-photo collection served by search_api) lives with the AppTest tests.
from .test_ui import APP, PHOTOS, api_url, free_port, photos  # noqa: F401

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} absent (apt-get install -y chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install it)")


@pytest.fixture(scope="module")
def ui_url(api_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:  # noqa: F811
    """`streamlit run ui/app.py` in a subprocess, pointed at the live API."""
    port = free_port()
    env = {**os.environ, "CLIPSEARCH_API_URL": api_url}
    env.pop("CLIPSEARCH_API_KEY", None)
    log = tmp_path_factory.mktemp("streamlit") / "streamlit.log"
    command = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true",
               "--server.port", str(port), "--browser.gatherUsageStats", "false"]
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/_stcore/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"streamlit did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def test_search_in_a_real_browser(ui_url: str, tmp_path: Path) -> None:
    screenshot = Path(os.environ.get("CLIPSEARCH_UI_SCREENSHOT") or tmp_path / "ui.png")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(ui_url)
            page.get_by_text(f"{PHOTOS} images").wait_for(timeout=60_000)  # sidebar collection status
            box = page.get_by_label("Describe the images you want")
            box.fill("a photo of a dog")
            box.press("Enter")
            images = page.locator('[data-testid="stMain"] [data-testid="stImage"] img')
            images.nth(11).wait_for(timeout=60_000)  # the default k is 12
            page.wait_for_load_state("networkidle")
            assert images.count() == 12
            # Every thumbnail decoded in the browser: the bytes really went API -> Streamlit -> page.
            widths = images.evaluate_all("els => els.map(e => e.complete ? e.naturalWidth : 0)")
            assert all(width > 0 for width in widths), widths
            assert page.get_by_text("score", exact=False).count() >= 12
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10_000
