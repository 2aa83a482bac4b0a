"""The Review page: a grid of the items one label run gave one label (or "unsure"), to accept, change or
reject one by one or as a selection. Decisions go to the API's label review routes
(search_api/curation.py), which store them as `human_label` with its time; labels people gave are
shown, and preferred, everywhere after.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import streamlit as st

from ui.client import ApiClient, ApiError
from ui.format import photo_facts, plural
from ui.views import COLUMNS, call, indexed_preview, path_line

UNSURE = "unsure"
PAGE_SIZE = 24
MESSAGE = "review_message"  # what the last decision did, shown once above the grid


# --- the API's review routes ---------------------------------------------------------------------------
# Through the client's own request helper (its key, timeouts and error details); ApiClient has no
# public methods for these routes yet.


def _runs_path(collection: str, run: str | None = None) -> str:
    path = f"/v1/collections/{quote(collection, safe='')}/labels"
    return path if run is None else f"{path}/{quote(run, safe='')}"


def label_runs(api: ApiClient, collection: str) -> list[dict[str, Any]]:
    return list(api._json("GET", _runs_path(collection)).get("runs", []))


def run_counts(api: ApiClient, collection: str, run: str) -> dict[str, Any]:
    return api._json("GET", _runs_path(collection, run))


def label_items(api: ApiClient, collection: str, run: str, label: str, pending: bool,
                page: int) -> dict[str, Any]:
    params = {"label": label, "pending": str(pending).lower(), "offset": page * PAGE_SIZE,
              "limit": PAGE_SIZE}
    return api._json("GET", _runs_path(collection, run) + "/items", params=params)


def decide(api: ApiClient, collection: str, run: str, ids: list[str], action: str,
           label: str | None = None) -> dict[str, Any]:
    body = {"ids": ids, "action": action, **({"label": label} if label else {})}
    return api._json("POST", _runs_path(collection, run) + "/review", json=body)


# --- decisions (button callbacks: they run before the page is drawn again) --------------------------


def _selected(items: list[dict[str, Any]]) -> list[str]:
    return [item["id"] for item in items if st.session_state.get(f"review-select-{item['id']}")]


def apply(api: ApiClient, collection: str, run: str, ids: list[str], action: str,
          label: str | None = None) -> None:
    if not ids:
        st.session_state[MESSAGE] = ("warning", "Select some images first.")
        return
    if action == "change" and not label:
        st.session_state[MESSAGE] = ("warning", "Pick the new label first.")
        return
    try:
        done = decide(api, collection, run, ids, action, label)
    except ApiError as exc:
        st.session_state[MESSAGE] = ("error", f"Not saved: {exc.detail}")
        return
    for item_id in ids:  # a decided selection is cleared
        st.session_state[f"review-select-{item_id}"] = False
    st.session_state["review-select-all"] = False
    verbs = {"accept": "accepted", "change": f"changed to {label}", "reject": "rejected", "clear": "reset"}
    verb = verbs[action]
    st.session_state[MESSAGE] = ("success", f"{plural(done['updated'], 'image')} {verb}.")


def select_all(items: list[dict[str, Any]]) -> None:
    chosen = bool(st.session_state.get("review-select-all"))
    for item in items:
        st.session_state[f"review-select-{item['id']}"] = chosen


# --- the page -----------------------------------------------------------------------------------------


def review_page(api: ApiClient, collection: str) -> None:
    runs = call(label_runs, api, collection)
    if runs is None:
        return
    if not runs:
        st.info(f"Collection `{collection}` has no label runs yet: label it with "
                f"`clipsearch label --labels \"cat,dog,car\" --collection {collection}`.")
        return
    by_name = {str(r["run"]): r for r in runs}
    run = st.selectbox("Label run", list(by_name), key="review_run")
    counts = call(run_counts, api, collection, run)
    if counts is None:
        return
    zero_shot: dict[str, int] = counts.get("zero_shot", {})
    choices = sorted(zero_shot, key=lambda name: (name == UNSURE, -zero_shot[name], name))
    label = st.selectbox("Label", choices, key="review_label",
                         format_func=lambda name: f"{name} ({zero_shot.get(name, 0)})")
    pending = st.toggle("Only images nobody has reviewed", value=True, key="review_pending")
    st.caption(f"{counts.get('reviewed', 0)} of {plural(int(counts.get('total', 0)), 'image')} reviewed in "
               f"run `{run}`.")
    if label is None:
        st.info("This run labelled no images.")
        return
    page = int(st.number_input("Page", min_value=1, value=1, step=1, key="review_page_number")) - 1
    body = call(label_items, api, collection, run, label, pending, page)
    if body is None:
        return
    items = list(body.get("items", []))
    message = st.session_state.pop(MESSAGE, None)
    if message:
        getattr(st, message[0])(message[1])
    total = int(body.get("total", 0))
    if not items:
        st.info(f"No {'unreviewed ' if pending else ''}images labelled `{label}` on this page "
                f"({plural(total, 'image')} in all).")
        return
    first = page * PAGE_SIZE + 1
    st.caption(f"Images {first}-{first + len(items) - 1} of {total}, most confident first.")
    labels = [str(name) for name in by_name[run].get("labels", [])]
    selection_bar(api, collection, run, items, labels)
    for row in range(0, len(items), COLUMNS):
        for column, item in zip(st.columns(COLUMNS), items[row : row + COLUMNS], strict=False):
            with column, st.container(border=True, key=f"review-card-{item['id']}"):
                card(api, collection, run, item, labels)


def selection_bar(api: ApiClient, collection: str, run: str, items: list[dict[str, Any]],
                  labels: list[str]) -> None:
    with st.container(border=True, key="review-selection"):
        columns = st.columns([2, 2, 2, 3, 2], vertical_alignment="bottom")
        everything, accept, reject, new_label, change = columns
        everything.checkbox("Select all on this page", key="review-select-all", on_change=select_all,
                            args=(items,))
        accept.button("Accept selected", key="review-accept-selected", icon=":material/check:",
                      on_click=lambda: apply(api, collection, run, _selected(items), "accept"))
        reject.button("Reject selected", key="review-reject-selected", icon=":material/close:",
                      on_click=lambda: apply(api, collection, run, _selected(items), "reject"))
        new_label.selectbox("Change selected to", labels, index=None, key="review-change-to",
                            placeholder="pick a label")
        change.button("Change selected", key="review-change-selected", icon=":material/edit:",
                      on_click=lambda: apply(api, collection, run, _selected(items), "change",
                                             st.session_state.get("review-change-to")))


def card(api: ApiClient, collection: str, run: str, item: dict[str, Any], labels: list[str]) -> None:
    item_id = item["id"]
    indexed_preview(api, collection, item_id, None)
    path_line(str(item.get("uri", "")), photo_facts(item))
    guess = ", ".join(f"{top['label']} {top['score']:.2f}" for top in item.get("top", [])[:3])
    st.caption(guess or str(item.get("label")))
    if item.get("human_label"):
        st.markdown(f"**Reviewed: {item['human_label']}**")
    st.checkbox("select", key=f"review-select-{item_id}")
    accept, reject = st.columns(2)
    accept.button("Accept", key=f"review-accept-{item_id}", width="stretch",
                  on_click=apply, args=(api, collection, run, [item_id], "accept"))
    reject.button("Reject", key=f"review-reject-{item_id}", width="stretch",
                  on_click=apply, args=(api, collection, run, [item_id], "reject"))
    with st.popover("Change", width="stretch"):
        st.selectbox("New label", labels, index=None, key=f"review-new-{item_id}", placeholder="pick a label")
        st.button("Save", key=f"review-change-{item_id}", on_click=lambda: apply(
            api, collection, run, [item_id], "change", st.session_state.get(f"review-new-{item_id}")))
