"""Product cards for the search page's grid, the "more / less like this" examples they collect, and the
pages of results (offset + k) under the grid.

A card shows the thumbnail captioned by the title (the file name where there is none), the brand and the
price, the catalog's other text columns, the score, and buttons: details, similar, more like this and
less like this. The liked and disliked items are kept per collection in session state and sent as
`positive` / `negative` to POST /v1/search by the search page.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import streamlit as st

from ui.client import ApiClient, Hit
from ui.format import display_name
from ui.views import find_similar, item_caption, open_detail

LIKES = "likes"  # session state: collection -> {"positive": {id: name}, "negative": {id: name}}
PAGE = "result_page"  # session state: {"signature": the search without its offset, "page": from 0}
PRICE_FIELDS = ("price",)
BRAND_FIELDS = ("brand",)
MAX_TEXT_CHARS = 160  # a text column's words on a card; the details view shows all of it


# --- more / less like this -------------------------------------------------------------------------------


def likes(collection: str) -> dict[str, dict[str, str]]:
    return st.session_state.setdefault(LIKES, {}).setdefault(collection, {"positive": {}, "negative": {}})


def clear_likes(collection: str | None = None) -> None:
    """Forget the examples of one collection, or of all."""
    if collection is None:
        st.session_state.pop(LIKES, None)
    else:
        st.session_state.setdefault(LIKES, {}).pop(collection, None)


def _like(collection: str, side: str, image_id: str, name: str) -> None:
    """Tick an item as an example on `side` (positive or negative), or untick it when it already is."""
    chosen = likes(collection)
    other = chosen["negative" if side == "positive" else "positive"]
    if image_id in chosen[side]:
        chosen[side].pop(image_id)
    else:
        other.pop(image_id, None)
        chosen[side][image_id] = name


def _similar(collection: str, image_id: str, name: str) -> None:
    clear_likes(collection)  # "similar to this one" starts afresh
    find_similar(image_id, name)


def likes_bar(collection: str) -> None:
    """Which items the results are more and less like, with a button to forget them."""
    chosen = likes(collection)
    parts = [f"{words} {', '.join(f'**{n}**' for n in chosen[side].values())}"
             for side, words in (("positive", "More like"), ("negative", "less like")) if chosen[side]]
    if not parts:
        return
    text, clear = st.columns([5, 1], vertical_alignment="center")
    text.markdown(":material/thumbs_up_down: " + " · ".join(parts))
    clear.button("Clear examples", key="likes-clear", on_click=clear_likes, args=(collection,),
                 icon=":material/close:", width="stretch")


# --- the card -----------------------------------------------------------------------------------------------


def _first(metadata: dict[str, Any], names: tuple[str, ...]) -> Any:
    return next((metadata[n] for n in names if metadata.get(n) not in (None, "", [])), None)


def _price(value: Any) -> str:
    return f"{value:,.2f}" if isinstance(value, int | float) and not isinstance(value, bool) else str(value)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_TEXT_CHARS else text[: MAX_TEXT_CHARS - 1] + "…"


def product_card_for(text_fields: list[str]) -> Callable[[ApiClient, str, Hit, str], None]:
    """The card function for a collection whose text columns are `text_fields`."""

    def card(api: ApiClient, collection: str, hit: Hit, key: str) -> None:
        product_card(api, collection, hit, key, text_fields)

    return card


def product_card(api: ApiClient, collection: str, hit: Hit, key: str, text_fields: list[str]) -> None:
    name = display_name(hit.uri, hit.metadata)
    item_caption(api, collection, hit.id, hit.uri, hit.metadata)
    brand, price = _first(hit.metadata, BRAND_FIELDS), _first(hit.metadata, PRICE_FIELDS)
    facts = [f"**{brand}**"] if brand is not None else []
    facts += [f":green[**{_price(price)}**]"] if price is not None else []
    if facts:
        st.markdown(" · ".join(facts))
    for field in text_fields:  # the title is the caption; the other text columns (a description...) here
        value = hit.metadata.get(field)
        if field != "title" and isinstance(value, str) and value.strip():
            st.markdown(f":gray[{_short(value)}]")
    vlm = f" · VLM **{hit.vlm_score:g}**/10" if hit.vlm_score is not None else ""
    st.markdown(f"score **{hit.score:.3f}**{vlm}", help=(hit.rerank or {}).get("reason"))
    details, similar = st.columns(2)
    details.button("Details", key=f"{key}-details-{hit.id}", on_click=open_detail, args=(hit,),
                   width="stretch")
    similar.button("Similar", key=f"{key}-similar-{hit.id}", on_click=_similar,
                   args=(collection, hit.id, name), width="stretch")
    chosen = likes(collection)
    for column, side, label, icon in zip(st.columns(2), ("positive", "negative"), ("More", "Less"),
                                         ("thumb_up", "thumb_down"), strict=True):
        column.button(label, key=f"{key}-{label.lower()}-{hit.id}", on_click=_like,
                      args=(collection, side, hit.id, name), icon=f":material/{icon}:",
                      help=f"{label} like this", width="stretch",
                      type="primary" if hit.id in chosen[side] else "secondary")


# --- pages --------------------------------------------------------------------------------------------------


def page_offset(search: dict[str, Any], k: int) -> int:
    """The offset of the page shown for this search (its body without offset): page 1 for a search
    not seen before, so a new query, filter or ranking starts on the first page."""
    signature = json.dumps(search, sort_keys=True, default=str)
    state = st.session_state.get(PAGE)
    if not state or state.get("signature") != signature:
        st.session_state[PAGE] = state = {"signature": signature, "page": 0}
    return int(state["page"]) * k


def _turn(step: int) -> None:
    state = st.session_state.get(PAGE) or {"page": 0}
    state["page"] = max(0, int(state["page"]) + step)


def pager(shown: int, k: int) -> None:
    """Previous / page number / next under the grid; next while the page came back full."""
    page = int((st.session_state.get(PAGE) or {}).get("page", 0))
    if page == 0 and shown < k:
        return  # everything fits on one page
    previous, where, following = st.columns([1, 2, 1], vertical_alignment="center")
    previous.button("Previous", key="page-previous", on_click=_turn, args=(-1,), disabled=page == 0,
                    icon=":material/chevron_left:", width="stretch")
    first = page * k + 1
    span = f"results {first}–{first + shown - 1}" if shown else "no more results"
    where.markdown(f"<div style='text-align:center'>Page <b>{page + 1}</b> · {span}</div>",
                   unsafe_allow_html=True)
    following.button("Next", key="page-next", on_click=_turn, args=(1,), disabled=shown < k,
                     icon=":material/chevron_right:", width="stretch")
