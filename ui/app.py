"""clipsearch's Streamlit UI: text, image and zero-shot classification queries against the HTTP API.

Run with `clipsearch ui` or `streamlit run ui/app.py`; the API's address comes from
CLIPSEARCH_API_URL (and CLIPSEARCH_API_KEY when the API wants one). Images are fetched here, in
the Streamlit process, and handed to the browser as bytes: the browser may not reach the API.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any, TypeVar

import pandas as pd
import streamlit as st
from PIL import Image, ImageOps

try:
    from ui.client import ApiClient, ApiError, ApiUnreachable, Hit, SearchResponse, api_from_env
except ImportError:  # `streamlit run ui/app.py` from a checkout puts only ui/ on sys.path
    from client import ApiClient, ApiError, ApiUnreachable, Hit, SearchResponse, api_from_env  # type: ignore

T = TypeVar("T")
COLUMNS = 4
THUMB_PX = 320
MAX_K = 50
IMAGE_TYPES = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"]


@st.cache_resource(show_spinner=False)
def get_client(base_url: str, api_key: str | None) -> ApiClient:
    # One pooled HTTP client per API address, shared by every session and rerun.
    return ApiClient(base_url, api_key)


def to_thumbnail(data: bytes) -> bytes | None:
    """A small JPEG of any image PIL can read, or None: st.image would raise on bytes it cannot decode."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image = ImageOps.exif_transpose(image).convert("RGB")
            # Small (light on reruns and the websocket) and square, padded, so grid rows line up.
            image = ImageOps.pad(image, (THUMB_PX, THUMB_PX), color="white")
            out = io.BytesIO()
            image.save(out, "JPEG", quality=85)
            return out.getvalue()
    except Exception:  # any decoder failure only costs the preview, never the page
        return None


@st.cache_data(ttl=600, max_entries=2000, show_spinner=False)
def thumbnail(base_url: str, api_key: str | None, image_id: str) -> bytes | None:
    """An indexed image's thumbnail, fetched here from the API; API errors propagate (and are not cached)."""
    return to_thumbnail(get_client(base_url, api_key).image(image_id))


def preview(data: bytes | None, caption: str, width: int | str = "stretch") -> None:
    if data is None:
        st.caption(f"{caption} (no preview)")
    else:
        st.image(data, caption=caption, width=width)


def call(func: Callable[..., T], *args: Any) -> T | None:
    """Run one API call; show a failure as an error box (with the API's own detail), never a traceback."""
    try:
        return func(*args)
    except ApiUnreachable as exc:
        st.error(f"The API is unreachable: {exc.detail}. Is `clipsearch serve` running?")
    except ApiError as exc:
        st.error(f"API error{f' {exc.status}' if exc.status else ''}: {exc.detail}")
    return None


def describe_model(model: Any) -> str:
    if isinstance(model, dict):  # the indexer's ModelIdentity: architecture, weights, dim
        weights = str(model.get("weights") or "random weights")
        weights = weights[:19] + "…" if weights.startswith("sha256:") else weights
        return f"{model.get('architecture', '?')} ({weights}, {model.get('dim', '?')}-d)"
    return str(model or "unknown model")


def sidebar(api: ApiClient) -> None:
    """API address, health and collections."""
    with st.sidebar:
        st.header("clipsearch")
        st.caption(f"API: `{api.base_url}`")
        if call(api.health) is None:
            return
        st.success("API is up")
        collections = call(api.collections)
        if collections == []:
            st.info("No collections yet: run `clipsearch index FOLDER`.")
        for collection in collections or []:
            name = collection.get("name", "?")
            if collection.get("count") is None:  # the API lists a collection it can't read, with why
                st.warning(f"collection `{name}`: {collection.get('error') or 'unreadable'}")
                continue
            st.metric(f"collection `{name}`", f"{collection['count']} images")
            st.caption(describe_model(collection.get("model")))


def results_grid(api: ApiClient, response: SearchResponse, key: str, similar: bool) -> None:
    took = f" in {response.took_ms:.0f} ms" if response.took_ms is not None else ""
    st.caption(f"{len(response.results)} results{took}")
    if not response.results:
        st.info("No results.")
    hits = response.results
    for row in range(0, len(hits), COLUMNS):  # one st.columns per row keeps rows aligned
        for column, hit in zip(st.columns(COLUMNS), hits[row : row + COLUMNS], strict=False):
            with column:
                result_card(api, hit, key, similar)


def result_card(api: ApiClient, hit: Hit, key: str, similar: bool) -> None:
    try:
        data = thumbnail(api.base_url, api.api_key, hit.id)
    except ApiError as exc:
        data = None
        st.warning(f"no preview: {exc.detail}")
    preview(data, hit.uri)
    st.markdown(f"score **{hit.score:.3f}**")
    if similar:
        st.button("similar", key=f"{key}-similar-{hit.id}", on_click=show_similar, args=(hit.id, hit.uri))


def show_similar(image_id: str, uri: str) -> None:
    st.session_state["similar_to"] = {"id": image_id, "uri": uri}


def clear_similar() -> None:
    st.session_state.pop("similar_to", None)


def search_tab(api: ApiClient) -> None:
    text = st.text_input(
        "Describe the images you want", key="query", placeholder="a dog on a beach", on_change=clear_similar
    )
    k = st.slider("Results", 1, MAX_K, 12, key="k")
    target = st.session_state.get("similar_to")
    if target:
        st.markdown(f"Images similar to `{target['uri']}`")
        st.button("back to text search", on_click=clear_similar)
        response = call(api.search_similar, target["id"], k)
    elif text.strip():
        response = call(api.search_text, text.strip(), k)
    else:
        st.info("Type a description and press Enter.")
        return
    if response is not None:
        results_grid(api, response, "search", similar=True)


def image_tab(api: ApiClient) -> None:
    upload = st.file_uploader("Query image", type=IMAGE_TYPES, key="query_image")
    k = st.slider("Results", 1, MAX_K, 12, key="k_image")
    if upload is None:
        st.info("Upload an image to find similar ones.")
        return
    preview(to_thumbnail(upload.getvalue()), "your image", width=200)
    response = call(api.search_image, upload.getvalue(), upload.name, k)
    if response is not None:
        results_grid(api, response, "image", similar=False)


def classify_tab(api: ApiClient) -> None:
    upload = st.file_uploader("Image to classify", type=IMAGE_TYPES, key="classify_image")
    text = st.text_input("Labels, comma-separated", "cat, dog, bird, car, food", key="labels")
    labels = list(dict.fromkeys(label.strip() for label in text.split(",") if label.strip()))
    if upload is None:
        st.info("Upload an image to label it zero-shot.")
        return
    if not labels:
        st.warning("Give at least one label.")
        return
    preview(to_thumbnail(upload.getvalue()), "your image", width=200)
    scores = call(api.classify, upload.getvalue(), labels, upload.name)
    if scores is not None:
        st.dataframe(
            pd.DataFrame(scores, columns=["label", "score"]),
            hide_index=True,
            column_config={"score": st.column_config.ProgressColumn(min_value=0, max_value=1, format="%.3f")},
        )


def main() -> None:
    st.set_page_config(page_title="clipsearch", layout="wide")
    api = get_client(*api_from_env())
    st.title("clipsearch")
    sidebar(api)
    search, by_image, classify = st.tabs(["Search", "Search by image", "Classify"])
    with search:
        search_tab(api)
    with by_image:
        image_tab(api)
    with classify:
        classify_tab(api)


main()
