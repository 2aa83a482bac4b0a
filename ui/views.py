"""The parts every page shares: API calls shown as messages, thumbnails, the result grid, the detail view.

Images are fetched here, in the Streamlit process, and handed to the browser as bytes: the browser may
not reach the API. The grid shows small thumbnails only; the original is shown (and offered for
download) by the detail view, so nothing is ever a 320 px picture blown up to full screen.
"""

from __future__ import annotations

import html
import io
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pandas as pd
import streamlit as st
from PIL import Image, ImageOps

from ui.client import ApiClient, ApiError, ApiUnreachable, Hit, Original, SearchResponse
from ui.format import describe_size, display_name, file_name, photo_facts, plural, short_path

T = TypeVar("T")
COLUMNS = 4
THUMB_PX = 320
RESULTS_KEY = "results"  # the grid's container key: the page's CSS hides its full-screen buttons
EXPLAINED = "explanations"  # session state: (collection, query, id) -> text, so reruns don't ask again
MAX_EXPLAINED = 12  # the first hits only: each explanation is seconds of a real VLM's time


def call(func: Callable[..., T], *args: Any, what: str = "") -> T | None:
    """Run one API call; show a failure as an error box (with the API's own detail), never a traceback."""
    prefix = f"{what}: " if what else ""
    try:
        return func(*args)
    except ApiUnreachable as exc:
        st.error(f"{prefix}the API is unreachable: {exc.detail}. Is `clipsearch serve` running?")
    except ApiError as exc:
        client = getattr(func, "__self__", None)
        advice = refusal_advice(client, exc) if isinstance(client, ApiClient) else None
        st.error(prefix + (advice or f"API error{f' {exc.status}' if exc.status else ''}: {exc.detail}"))
    return None


def refusal_advice(api: ApiClient, exc: ApiError) -> str | None:
    """What to do when the API refuses the UI's key (401) or lets it only read (403); None otherwise."""
    if exc.status == 401 and not api.api_key:
        return (f"The API at `{api.base_url}` wants an API key, and the UI has none. Start the UI with "
                "`clipsearch ui --api-key KEY` (or set `CLIPSEARCH_API_KEY` where it runs), using the key "
                "the server was started with.")
    if exc.status == 401:
        return (f"The API at `{api.base_url}` refused the UI's API key. Start the UI again with the key the "
                "server was started with: `clipsearch ui --api-key KEY` (or `CLIPSEARCH_API_KEY`).")
    if exc.status == 403:
        return (f"The UI's API key may only read: {exc.detail}. Give it a key with write access "
                "(`clipsearch ui --api-key KEY`) to change anything.")
    return None


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


def pixel_size(data: bytes) -> tuple[int, int] | None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return ImageOps.exif_transpose(image).size
    except Exception:  # an undecodable original is still offered for download
        return None


@st.cache_resource(show_spinner=False)
def get_client(base_url: str, api_key: str | None) -> ApiClient:
    # One pooled HTTP client per API address, shared by every session and rerun.
    return ApiClient(base_url, api_key)


@st.cache_data(ttl=600, max_entries=2000, show_spinner=False)
def thumbnail(base_url: str, api_key: str | None, collection: str, image_id: str) -> bytes | None:
    """An indexed image's thumbnail, fetched here from the API; API errors propagate (and are not cached)."""
    return to_thumbnail(get_client(base_url, api_key).image(image_id, collection))


def preview(data: bytes | None, caption: str | None, width: int | str = "stretch") -> None:
    if data is None:
        st.caption(f"{caption} (no preview)" if caption else "(no preview)")
    else:
        st.image(data, caption=caption, width=width)


def indexed_preview(api: ApiClient, collection: str, image_id: str, caption: str | None) -> None:
    """An indexed image's thumbnail under `caption` (none: path_line says what it is); an API error is a
    warning in its place."""
    try:
        data = thumbnail(api.base_url, api.api_key, collection, image_id)
    except ApiError as exc:
        data = None
        st.warning(f"no preview: {exc.detail}")
    preview(data, caption)


def path_line(uri: str, facts: list[str] | None = None) -> None:
    """Under a thumbnail: the file's name with its last folders (the whole path on hover), then `facts`
    (date taken, camera, resolution...) on a second line."""
    short = html.escape(short_path(uri))
    line = f'<div class="cs-path" title="{html.escape(uri, quote=True)}">{short}</div>'
    if facts:
        text = html.escape(" · ".join(facts))
        line += f'<div class="cs-facts" title="{text}">{text}</div>'
    st.markdown(line, unsafe_allow_html=True)


def is_product(metadata: dict[str, Any]) -> bool:
    """A catalog item (its card shows title, brand and price) rather than a photo from a folder."""
    return "product_id" in metadata or bool(str(metadata.get("title") or "").strip())


def item_caption(api: ApiClient, collection: str, image_id: str, uri: str, metadata: dict[str, Any]) -> None:
    """An item's thumbnail and what it is: a product by its title; a photo by its path (hover for all of
    it) with its date taken, camera, place and resolution."""
    if is_product(metadata):
        indexed_preview(api, collection, image_id, display_name(uri, metadata))
        return
    indexed_preview(api, collection, image_id, None)
    path_line(uri, photo_facts(metadata))


# --- the result grid -----------------------------------------------------------------------------------


def open_detail(hit: Hit) -> None:
    st.session_state["detail"] = {"id": hit.id, "name": display_name(hit.uri, hit.metadata)}


def close_detail() -> None:
    st.session_state.pop("detail", None)


def find_similar(image_id: str, name: str) -> None:
    """Search by this image: on the Search page, which shows similar results while `similar_to` is set."""
    st.session_state["similar_to"] = {"id": image_id, "name": name}
    st.session_state.pop("detail", None)
    st.session_state["page"] = "Search"


def results_grid(api: ApiClient, collection: str, response: SearchResponse, key: str,
                 explain: str | None = None, card: Callable[[ApiClient, str, Hit, str], None] | None = None
                 ) -> None:
    """The hits as cards (`card` draws one; result_card by default); with `explain` (the query), the
    VLM's explanation of each streams in under its thumbnail once every card is drawn."""
    card = card or result_card
    took = f" in {response.took_ms:.0f} ms" if response.took_ms is not None else ""
    st.caption(f"{plural(len(response.results), 'result')}{took}")
    rerank_note(response.rerank)
    if not response.results:
        st.info("No results.")
        return
    hits = response.results
    slots = []
    with st.container(key=f"{RESULTS_KEY}-{key}"):
        for row in range(0, len(hits), COLUMNS):  # one st.columns per row keeps rows aligned
            for column, hit in zip(st.columns(COLUMNS), hits[row : row + COLUMNS], strict=False):
                with column:
                    card(api, collection, hit, key)
                    if explain and len(slots) < MAX_EXPLAINED:
                        slots.append((hit, st.container(key=f"{key}-explain-{hit.id}").empty()))
    for hit, slot in slots:
        explain_into(slot, api, collection, explain or "", hit.id)


def rerank_note(rerank: dict[str, Any] | None) -> None:
    """How the VLM's re-rank went, when one was asked for and did not fully work."""
    if not rerank or rerank.get("status") == "ok":
        return
    failed = rerank.get("status") == "failed"
    kept = "kept their CLIP order" if failed else "it could not judge kept their place"
    st.warning(f"The VLM re-rank {rerank.get('status')}: {rerank.get('reason')}. The hits {kept}.",
               icon=":material/warning:")


def explain_into(slot: Any, api: ApiClient, collection: str, query: str, image_id: str) -> None:
    """The hit's explanation in `slot`: streamed as the VLM writes it, or as kept from an earlier run."""
    known = st.session_state.setdefault(EXPLAINED, {})
    key = (collection, query, image_id)
    if key in known:
        slot.caption(known[key])
        return
    pieces: list[str] = []

    def stream() -> Iterator[str]:
        for piece in api.explain_stream(query, image_id, collection):
            pieces.append(piece)
            yield piece

    try:
        slot.write_stream(stream())
    except ApiError as exc:
        slot.caption(f"no explanation: {exc.detail}")
        return
    text = " ".join("".join(pieces).split())
    known[key] = text
    slot.caption(text)  # the same words, set small like the other captions


def result_card(api: ApiClient, collection: str, hit: Hit, key: str) -> None:
    name = display_name(hit.uri, hit.metadata)
    item_caption(api, collection, hit.id, hit.uri, hit.metadata)
    vlm = f" · VLM **{hit.vlm_score:g}**/10" if hit.vlm_score is not None else ""
    st.markdown(f"score **{hit.score:.3f}**{vlm}", help=(hit.rerank or {}).get("reason"))
    details, similar = st.columns(2)
    details.button("Details", key=f"{key}-details-{hit.id}", on_click=open_detail, args=(hit,),
                   width="stretch")
    similar.button("Similar", key=f"{key}-similar-{hit.id}", on_click=find_similar, args=(hit.id, name),
                   width="stretch")


# --- the detail view -----------------------------------------------------------------------------------


def detail_dialog(api: ApiClient, collection: str, detail: dict[str, str]) -> None:
    """The open result's detail view, as a dialog over the page: the page's widgets (the query, an
    uploaded image) stay as they were, and closing it shows the same results again."""
    dialog = st.dialog(detail["name"], width="large", on_dismiss=close_detail)
    dialog(detail_view)(api, collection, detail["id"], detail["name"])


def detail_view(api: ApiClient, collection: str, image_id: str, name: str) -> None:
    """One result: the original at full resolution, its metadata, download, and find similar."""
    item = call(api.item, collection, image_id, what="metadata")
    original = call(api.original, image_id, collection, what="original image")
    picture, facts = st.columns([3, 2], gap="medium")
    with facts:
        # on_click changes the page before the app reruns; st.rerun then reruns all of it (not just
        # this dialog), which closes the dialog and shows the similar images.
        if st.button("Find similar", key="detail-similar", on_click=find_similar, args=(image_id, name),
                     icon=":material/image_search:"):
            st.rerun()
        if original is not None:
            download = file_name(item.uri) if item and item.uri else name
            st.download_button("Download original", data=original.data, file_name=download,
                               mime=original.media_type, key="detail-download", on_click="ignore",
                               icon=":material/download:")
        if item is not None:
            rows = [("file", item.uri), ("id", item.id)]
            rows += [(str(field), _text(value)) for field, value in sorted(item.metadata.items())]
            st.dataframe(pd.DataFrame(rows, columns=["field", "value"]), hide_index=True, width="stretch",
                         column_config={"field": st.column_config.TextColumn(width="small")})
    with picture:
        if original is not None:
            show_original(original, name)


def show_original(original: Original, name: str) -> None:
    size = pixel_size(original.data)
    if size is None:  # e.g. a format the browser and PIL can't show; the download still works
        st.caption(f"{name} can't be previewed ({original.media_type}, {describe_size(len(original.data))})")
        return
    facts = f"{size[0]} × {size[1]} px · {original.media_type} · {describe_size(len(original.data))}"
    # The file's own bytes at their natural size ("content"): no thumbnail, no re-encoding here.
    st.image(original.data, caption=facts, width="content")


def _text(value: Any) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)
