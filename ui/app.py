"""clipsearch's Streamlit UI: search, search by image, classify, and failed files, against the HTTP API.

Run with `clipsearch ui` or `streamlit run ui/app.py`; the API's address comes from
CLIPSEARCH_API_URL (and CLIPSEARCH_API_KEY when the API wants one). The UI talks to the API over
HTTP only, on the collection picked in the sidebar (the server's default collection at first).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import streamlit as st

try:
    import ui  # noqa: F401
except ImportError:  # `streamlit run ui/app.py` from an uninstalled checkout puts only ui/ on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ui.client import ApiClient, ApiError, ApiUnreachable, api_from_env
from ui.curation import curation_page
from ui.format import describe_model, plural
from ui.pages import classify_page, failures_page, image_page, keep_widget_state, search_page
from ui.review import review_page
from ui.views import RESULTS_KEY, close_detail, detail_dialog, get_client, refusal_advice

PAGES = {
    "Search": search_page,
    "Search by image": image_page,
    "Classify": classify_page,
    "Failures": failures_page,
    "Curation": curation_page,
    "Review": review_page,
}
SEARCH_PAGES = ("Search", "Search by image")
ICONS = {"Search": ":material/search:", "Search by image": ":material/image_search:",
         "Classify": ":material/label:", "Failures": ":material/error:", "Review": ":material/fact_check:"}
ICONS["Curation"] = ":material/content_copy:"

# Grid thumbnails get no full-screen button (the detail view shows the original instead), and image
# captions (file names) and paths stay on one line, cut with an ellipsis rather than broken mid-word.
CSS = f"""<style>
[class*="st-key-{RESULTS_KEY}-"] [data-testid="stElementToolbar"] {{ display: none; }}
[data-testid="stImageCaption"] {{ white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }}
.cs-path, .cs-facts {{ font-size: 0.8rem; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }}
.cs-path {{ font-family: monospace; }}
.cs-facts {{ color: rgba(49, 51, 63, 0.6); }}
</style>"""


def load_collections(api: ApiClient) -> list[dict[str, Any]] | None:
    """The API's collections, or None after saying (once, in the main area) why there are none to use."""
    try:
        collections = api.collections()
    except ApiUnreachable as exc:
        st.error(f"The API is unreachable: {exc.detail}. Start it with `clipsearch serve`, or point the UI "
                 "at it with `CLIPSEARCH_API_URL` (`clipsearch ui --api-url URL`).")
        return None
    except ApiError as exc:
        st.error(refusal_advice(api, exc) or f"The API could not list its collections (error {exc.status}): "
                 f"{exc.detail}")
        return None
    if not collections:
        st.info("There are no collections yet. Index a folder with `clipsearch index FOLDER`, then reload "
                "this page.")
        return None
    return collections


def on_collection_change() -> None:
    # Results, similar-image searches and open details belong to the collection they came from.
    close_detail()
    st.session_state.pop("similar_to", None)


def pick_collection(collections: list[dict[str, Any]]) -> dict[str, Any]:
    """The sidebar's collection picker; the server's default collection is preselected."""
    by_name = {str(c.get("name")): c for c in collections}
    names = list(by_name)
    default = next((i for i, c in enumerate(collections) if c.get("default")), 0)
    chosen = st.session_state.get("collection")
    if chosen is not None and chosen not in by_name:  # deleted since it was picked
        st.session_state.pop("collection")
        on_collection_change()
        st.warning(f"Collection `{chosen}` no longer exists; showing `{names[default]}` instead.")

    def label(name: str) -> str:
        count = by_name[name].get("count")
        return f"{name} ({plural(count, 'image')})" if count is not None else f"{name} (unreadable)"

    name = st.selectbox("Collection", names, index=default, format_func=label, key="collection",
                        on_change=on_collection_change)
    collection = by_name[name]
    if collection.get("count") is not None:
        st.caption(describe_model(collection.get("model")))
    return collection


def main() -> None:
    st.set_page_config(page_title="clipsearch", page_icon=":material/image_search:", layout="wide")
    st.html(CSS)
    api = get_client(*api_from_env())
    keep_widget_state()
    with st.sidebar:
        st.title("clipsearch")
        page = st.radio("Page", list(PAGES), key="page", on_change=close_detail, label_visibility="collapsed",
                        format_func=lambda name: f"{ICONS[name]} {name}")
    collections = load_collections(api)
    if collections is None:
        st.sidebar.caption(f"API: `{api.base_url}`")
        return
    with st.sidebar:
        collection = pick_collection(collections)
        st.caption(f"API: `{api.base_url}`")
    name = str(collection["name"])
    if collection.get("count") is None:  # the API lists a collection it can't read, with why
        st.error(f"Collection `{name}` can't be read: {collection.get('error') or 'unknown error'}")
        return
    st.header(page)
    if page in SEARCH_PAGES and collection["count"] == 0:
        st.info(f"Collection `{name}` is empty: add images with "
                f"`clipsearch index FOLDER --collection {name}`.")
        return
    PAGES[page](api, name)
    detail = st.session_state.get("detail")
    if detail:
        detail_dialog(api, name, detail)


main()
