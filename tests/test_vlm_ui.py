"""The VLM in the Streamlit UI: the "re-rank with the VLM" switch on the search page, explanations under
each thumbnail as they stream, the VLM's status on the failures page, and a clear note when the VLM is
off or down. Driven with Streamlit's AppTest, and once in a real headless Chromium (`streamlit run`),
against real API servers on loopback whose VLM is the OpenAI-compatible stand-in of tests/vlm_server.py.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from streamlit.testing.v1 import AppTest

from indexer.models.loading import ClipModel
from tests.helpers import app_test, eventually, index_photos, make_settings, serve, streamlit_ui
from tests.vlm_photos import Photos, indexed_photos, scores_by_id
from tests.vlm_server import FakeVlm, Reply, closed_port_url

QUERY = "a photo of a dog"
K = 8
CHROMIUM = Path("/usr/bin/chromium")


def explanation(item_id: str) -> str:
    return f"It shows {item_id}, not quite a dog."


WHOLE_EXPLANATION = re.compile(r"It shows (\S+), not quite a dog\.")  # `explanation`, streamed to its end


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, imagenet_dir: Path, tiny_checkpoint: Path,
            tiny_model: ClipModel) -> tuple[Path, Photos]:
    root = tmp_path_factory.mktemp("vlm-ui")
    settings, _, _ = index_photos(root, imagenet_dir, tiny_checkpoint, tiny_model, 12)
    return root / "home", indexed_photos(settings)


@pytest.fixture(scope="module")
def fake(indexed: tuple[Path, Photos]) -> Iterator[FakeVlm]:
    """Scores each photo by its place in the id order (so the VLM's order is not CLIP's), and explains
    it in pieces, a little apart."""
    photos = indexed[1]
    scores = {item_id: place % 10 for place, item_id in enumerate(sorted(photos.ids))}
    explain = lambda item_id: Reply(explanation(item_id), chunk_delay_s=0.05)  # noqa: E731
    with FakeVlm(scores_by_id(photos, scores, explain=explain)) as vlm:
        yield vlm


@pytest.fixture(scope="module")
def api_url(indexed: tuple[Path, Photos], tiny_checkpoint: Path, tiny_model: ClipModel,
            fake: FakeVlm) -> Iterator[str]:
    from search_api.app import create_app

    # Limits no answer of the stand-in comes near, however busy the machine (it never hangs here).
    settings = make_settings(indexed[0], tiny_checkpoint,
                             vlm={"url": fake.url, "top_n": K, "deadline_s": 120, "timeout_s": 120})
    with serve(create_app(settings, model=tiny_model)) as url:
        yield url


@pytest.fixture(scope="module")
def other_home(tmp_path_factory: pytest.TempPathFactory, imagenet_dir: Path, tiny_checkpoint: Path,
               tiny_model: ClipModel) -> Path:
    root = tmp_path_factory.mktemp("vlm-ui-other")
    index_photos(root, imagenet_dir, tiny_checkpoint, tiny_model, 4)
    return root / "home"


def server_with(home: Path, checkpoint: Path, model: ClipModel, **vlm: Any) -> Any:
    from search_api.app import create_app

    return serve(create_app(make_settings(home, checkpoint, vlm=vlm), model=model))


def start(url: str, monkeypatch: pytest.MonkeyPatch, errors: bool = False, **state: Any) -> AppTest:
    at = app_test(url, monkeypatch, **state)
    assert not at.exception and (errors or not at.error), (at.exception, at.error)
    return at


def search(at: AppTest, text: str, k: int) -> AppTest:
    at.slider(key="k").set_value(k)
    at.text_input(key="query").input(text).run()
    assert not at.exception, at.exception
    return at


def result_names(at: AppTest) -> list[str]:
    """The file name of each photo card, in grid order (its path line's hover title is the whole path)."""
    return [Path(html.unescape(m.group(1))).name for block in at.main.markdown
            if (m := re.search(r'<div class="cs-path" title="([^"]*)">', block.value))]


def reranked(url: str, k: int) -> list[dict[str, Any]]:
    body = {"text": QUERY, "k": k, "rerank": True}
    return httpx.post(f"{url}/v1/search", json=body, timeout=60).json()["results"]


# --- AppTest ---------------------------------------------------------------------------------------------


def test_the_switch_reranks_and_explanations_appear_under_each_thumbnail(
        api_url: str, monkeypatch: pytest.MonkeyPatch, fake: FakeVlm) -> None:
    at = start(api_url, monkeypatch)
    switch = at.toggle(key="rerank")
    assert switch.label == "Re-rank with the VLM" and not switch.disabled and not switch.value
    search(at, QUERY, K)
    clip_names = result_names(at)
    assert not any("VLM" in m.value for m in at.main.markdown)  # off: CLIP's order, no VLM score
    assert not [c for c in at.main.caption if c.value.startswith("It shows")]

    at.toggle(key="rerank").set_value(True).run()
    assert not at.exception and not at.error
    expected = reranked(api_url, K)  # what the API answers for the same search (the VLM's answers cached)
    names = result_names(at)
    assert names == [Path(hit["uri"]).name for hit in expected] and names != clip_names
    vlm_scores = [m.value.split("VLM **")[1].split("**")[0] for m in at.main.markdown if "VLM **" in m.value]
    assert vlm_scores == [f"{hit['vlm_score']:g}" for hit in expected]
    explained = [c.value for c in at.main.caption if c.value.startswith("It shows")]
    assert explained == [explanation(hit["id"]) for hit in expected]  # one per card, in the grid's order
    assert len([r for r in fake.chats() if r.body.get("stream")]) >= K

    streamed = len(fake.chats())
    at.run()  # a rerun shows the same explanations without asking again
    assert [c.value for c in at.main.caption if c.value.startswith("It shows")] == explained
    assert len([r for r in fake.chats()[streamed:] if r.body.get("stream")]) == 0


def test_failures_page_shows_the_vlm_up(api_url: str, monkeypatch: pytest.MonkeyPatch, fake: FakeVlm) -> None:
    at = start(api_url, monkeypatch, page="Failures")
    assert [s.value for s in at.subheader][-1] == "VLM"
    [up] = at.success[-1:]
    assert "The VLM is up" in up.value and "fake-vl" in up.value and fake.url in up.value


def test_without_a_vlm_the_switch_is_off_and_says_why(other_home: Path, tiny_checkpoint: Path,
                                                      tiny_model: ClipModel,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    with server_with(other_home, tiny_checkpoint, tiny_model) as url:
        at = start(url, monkeypatch, rerank=True)  # asked for in an earlier session: no VLM now
        switch = at.toggle(key="rerank")
        assert switch.disabled and not switch.value
        assert any("The VLM is off" in m.value and "CLIPSEARCH_VLM_URL" in m.value for m in at.main.markdown)
        search(at, QUERY, 4)
        assert len(result_names(at)) == 4 and not at.warning
        at = start(url, monkeypatch, page="Failures")
        assert any("The VLM is off" in info.value for info in at.info)


def test_a_dead_vlm_is_a_warning_and_clip_order(other_home: Path, tiny_checkpoint: Path,
                                                tiny_model: ClipModel,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    with server_with(other_home, tiny_checkpoint, tiny_model, url=closed_port_url()) as url:
        at = start(url, monkeypatch)
        search(at, QUERY, 4)
        clip_names = result_names(at)
        at.toggle(key="rerank").set_value(True).run()
        assert not at.exception and not at.error
        assert result_names(at) == clip_names  # CLIP order, all there
        warnings = [w.value for w in at.warning]
        assert any("re-rank failed" in w and "CLIP order" in w for w in warnings), warnings
        assert any("The VLM is down" in w for w in warnings), warnings
        assert [c.value for c in at.main.caption if c.value.startswith("no explanation")] != []
        at = start(url, monkeypatch, errors=True, page="Failures")
        [down] = [e.value for e in at.error if "The VLM is down" in e.value]
        assert "CLIPSEARCH_VLM_URL" in down


# --- a real browser ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ui_url(api_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with streamlit_ui(api_url, tmp_path_factory.mktemp("streamlit-vlm")) as url:
        yield url


def test_explanations_appear_in_the_browser(ui_url: str, api_url: str, fake: FakeVlm, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} absent (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(ui_url)
            page.get_by_text("Re-rank with the VLM").click()
            sync_api.expect(page.get_by_role("switch", name="Re-rank with the VLM")).to_be_checked()
            box = page.get_by_label("Describe the images you want")
            box.fill("a dog in the snow")  # a query of its own: nothing cached from the other tests
            box.press("Enter")
            cards = page.locator('[class*="st-key-search-explain-"]')

            def every_card_explains_its_own_hit() -> list[str]:
                # One reading of all the cards (the page re-renders as explanations stream in), checked
                # as read: a wait on each card and a later read could see a card between two renders.
                # Whole explanations only: a card part-way through its stream reads "It shows" too.
                texts = cards.all_inner_texts()
                assert len(texts) == 12, texts  # the page's default k
                whole = [re.search(WHOLE_EXPLANATION, text) for text in texts]
                assert all(whole), texts
                item_ids = [found.group(1) for found in whole if found]
                assert len(set(item_ids)) == 12, item_ids  # each card explains its own hit
                return texts

            eventually(every_card_explains_its_own_hit, 120, "each card's explanation",
                       retry_on=(AssertionError, sync_api.Error))
            grid = page.locator('[class*="st-key-results-search"] [data-testid="stImage"] img')
            sync_api.expect(grid).to_have_count(12)
            page.screenshot(path=str(tmp_path / "explanations.png"), full_page=True)
        finally:
            browser.close()
