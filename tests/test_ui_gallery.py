"""The UI as a gallery user, a shop owner and a curator see it, under Streamlit's AppTest against a real API
server on loopback (real indexing with the tiny model; a real catalog run with a bad row):
- photo cards: the file under its last folders (two `0001.JPEG` in two folders told apart), the whole path
  on hover, the date taken, camera and resolution; duplicate groups show what the keeper rule compared;
- filters fit the collection: a gallery's date taken, camera and place first and pixel sizes last; a
  shop's catalog columns, never pixel sizes; "near a place" keeps the photos taken there;
- the Failures page's advice fits the source: a catalog's rows (fix the row, index the catalog again),
  a folder's files;
- a server with an API key: the UI without it, or with a wrong one, says what to do.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.gallery import KEY, api_url, home  # noqa: F401  (the shared collections' fixtures)
from tests.helpers import UI_APP

PATH_LINE = re.compile(
    r'<div class="cs-path" title="([^"]*)">([^<]*)</div>'
    r'(?:<div class="cs-facts" title="[^"]*">([^<]*)</div>)?'
)


def start(url: str, monkeypatch: pytest.MonkeyPatch, key: str | None = KEY, **state: Any) -> Any:
    """The UI under AppTest, pointed at the API with `key` (as `clipsearch ui --api-key` passes it)."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("CLIPSEARCH_API_URL", url)
    if key is None:
        monkeypatch.delenv("CLIPSEARCH_API_KEY", raising=False)
    else:
        monkeypatch.setenv("CLIPSEARCH_API_KEY", key)
    at = AppTest.from_file(str(UI_APP), default_timeout=60)
    for name, value in state.items():
        at.session_state[name] = value
    return at.run()


def path_lines(at: Any) -> list[tuple[str, str, str]]:
    """(full path on hover, path shown, facts) of each photo card, in grid order."""
    return [(html.unescape(m.group(1)), html.unescape(m.group(2)), html.unescape(m.group(3) or ""))
            for block in at.main.markdown if (m := PATH_LINE.search(block.value))]


def walk(node: Any) -> Iterator[Any]:
    yield node
    for child in getattr(node, "children", {}).values():
        yield from walk(child)


def filter_labels(at: Any) -> list[str]:
    """The sidebar's filters, in the order shown: expanders (facets, places) and sliders by their label."""
    labels = []
    for node in walk(at.sidebar):
        if getattr(node, "type", None) == "expander":
            labels.append(node.label)
        elif getattr(node, "type", None) == "slider" and not node.label.startswith("Within"):
            labels.append(node.label)
    return labels


def search(at: Any, text: str, k: int) -> Any:
    at.slider(key="k").set_value(k)
    at.text_input(key="query").input(text).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    return at


# --- photo cards ----------------------------------------------------------------------------------------


def test_photo_cards_tell_apart_files_of_one_name_and_show_date_camera_and_size(
        api_url: str, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    at = search(start(api_url, monkeypatch), "a photo", 20)
    lines = path_lines(at)
    assert len(lines) == 18
    shown = {full: (short, facts) for full, short, facts in lines}
    gallery = home / "Pictures"
    # Two 0001.JPEG in two folders: each card names its folder; the whole path is the hover title.
    assert shown[str(gallery / "2023" / "0001.JPEG")][0] == "Pictures/2023/0001.JPEG"
    assert shown[str(gallery / "2024" / "0001.JPEG")][0] == "Pictures/2024/0001.JPEG"
    # The EXIF the indexer read: date taken, camera, place; and the resolution as indexed.
    facts = shown[str(gallery / "trips" / "lisbon-2.jpg")][1]
    assert facts == "2019-06-01 12:30 · Canon EOS 5D · 48 × 64 px · 38.732, -9.139"
    assert shown[str(gallery / "trips" / "sydney-1.jpg")][1].startswith("2021-12-24 09:00 · Fujifilm X-T3")


def test_duplicate_cards_show_what_the_keeper_rule_compared(api_url: str, home: Path,  # noqa: F811
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    at = start(api_url, monkeypatch)
    at.radio(key="page").set_value("Curation").run()
    at.toggle(key="dup_run").set_value(True).run()
    assert not at.exception and not at.error
    lines = path_lines(at)
    keep = str(home / "Pictures" / "2023" / "0000.JPEG")
    copy = str(home / "Pictures" / "2024" / "copy-of-0000.JPEG")
    assert [full for full, _, _ in lines[:2]] == [keep, copy]  # the keeper first (older: sorted by path)
    assert lines[0][1] == "Pictures/2023/0000.JPEG"
    assert re.fullmatch(r"\d+ × \d+ px · \d{4}-\d{2}-\d{2} \d{2}:\d{2}", lines[0][2])  # size and date


# --- filters ---------------------------------------------------------------------------------------------


def test_a_gallerys_filters_are_date_taken_camera_and_place_with_pixel_sizes_last(
        api_url: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    at = search(start(api_url, monkeypatch), "a photo", 20)
    labels = filter_labels(at)
    assert labels[:3] == ["Date taken", "Camera make", "Camera model"]
    assert "Place" in labels and labels[-2:] == ["Width (px)", "Height (px)"]
    assert labels.index("Place") < labels.index("Width (px)")
    # Near Lisbon, within 25 km: the three photos taken there, and no other.
    [near] = [box for box in at.sidebar.selectbox if box.label == "Near"]
    lisbon = next(option for option in near.options if option.startswith("38.7°N 9.1°W"))
    assert lisbon.endswith("(3)")
    near.set_value((38.7, -9.1)).run()
    assert not at.exception and not at.error
    assert sorted(Path(full).name for full, _, _ in path_lines(at)) == [
        "lisbon-1.jpg", "lisbon-2.jpg", "lisbon-3.jpg"]


def test_a_shops_filters_are_its_catalog_fields_without_pixel_sizes(
        api_url: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    at = start(api_url, monkeypatch)
    at.selectbox(key="collection").set_value("shop").run()
    search(at, "a thing", 10)
    labels = filter_labels(at)
    assert labels[:2] == ["Brand", "Price"]
    assert not {"Width (px)", "Height (px)", "Date taken"} & set(labels)


# --- failures --------------------------------------------------------------------------------------------


def test_failures_advice_fits_catalog_rows_and_files(api_url: str, home: Path,  # noqa: F811
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    at = start(api_url, monkeypatch)
    at.radio(key="page").set_value("Failures").run()
    at.selectbox(key="collection").set_value("shop").run()
    assert not at.exception and not at.error
    catalog = home / "shop" / "products.csv"
    [frame] = [f.value for f in at.dataframe if list(f.value.columns) == ["file", "reason", "path"]]
    assert frame["file"].tolist() == ["products.csv, row 10"]
    advice = [caption.value for caption in at.main.caption]
    assert any("fix each row in the catalog" in a and f"clipsearch index {catalog} --collection shop" in a
               for a in advice)
    assert not any("folder" in a for a in advice)

    at.selectbox(key="collection").set_value("default").run()
    advice = [caption.value for caption in at.main.caption]
    assert any("Files: fix or remove them in their folder" in a and "clipsearch index FOLDER`" in a
               for a in advice)
    assert not any("catalog" in a for a in advice)


# --- API keys --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "says"), [(None, "wants an API key, and the UI has none"),
                                           ("wrong-key", "refused the UI's API key")])
def test_a_ui_without_the_right_key_says_what_to_do(api_url: str, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                                                    key: str | None, says: str) -> None:
    at = start(api_url, monkeypatch, key=key)
    assert not at.exception
    [error] = at.error
    assert says in error.value and "clipsearch ui --api-key KEY" in error.value
    assert "error 401" not in error.value
