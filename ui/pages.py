"""The UI's pages: text search, search by image, classify, and the collection's failures and vectors.

Every page works on the collection picked in the sidebar and sends it with each request.
"""

from __future__ import annotations

from collections import Counter

import pandas as pd
import streamlit as st

from ui.cards import clear_likes, likes, likes_bar, page_offset, pager, product_card_for
from ui.client import ApiClient, ApiError, ApiUnreachable
from ui.filters import FACET_LIMIT, Catalog, build_filter, choices_for, ranking_choice, read_catalog, sidebar
from ui.format import describe_model, file_name, plural
from ui.views import call, get_client, preview, results_grid, to_thumbnail

MAX_K = 50
IMAGE_TYPES = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"]
SCORE_COLUMN = st.column_config.ProgressColumn(min_value=0, max_value=1, format="%.3f")
# Values of the pages' widgets, set here rather than as `value=`: see keep_widget_state.
WIDGET_DEFAULTS: dict[str, object] = {
    "query": "", "k": 12, "k_image": 12, "labels": "cat, dog, bird, car, food", "rerank": False,
    "search_mode": "hybrid", "per_product": True,
}
SEARCH_REQUEST = "search_request"  # session state: the last body sent to /v1/search by the search page
VLM_DOCS = "docs/vlm.md"


def keep_widget_state() -> None:
    """Streamlit forgets a widget's value when a run does not draw it (another page is shown); storing
    the values again each run keeps the query, k and labels across pages. An uploaded file can't be
    kept this way: Streamlit refuses to set an uploader's value."""
    for key, default in WIDGET_DEFAULTS.items():
        st.session_state[key] = st.session_state.get(key, default)


def clear_similar() -> None:
    st.session_state.pop("similar_to", None)
    clear_likes()  # a new query starts without the last one's examples


def search_page(api: ApiClient, collection: str) -> None:
    text = st.text_input(
        "Describe the images you want", key="query", placeholder="a dog on a beach", on_change=clear_similar
    )
    k = st.slider("Results", 1, MAX_K, key="k")
    rerank = rerank_switch(api)
    catalog = read_catalog(api, collection)
    mode = ranking_choice(catalog)
    per_product = bool(catalog.group_field) and st.toggle(
        "One card per product", key="per_product", help="A product's other images are left out.")
    likes_bar(collection)
    query = search_query(collection, text.strip(), mode)
    if query is None:
        st.info("Type a description and press Enter.")
        return
    target = st.session_state.get("similar_to")
    if target and "positive" not in query:  # more-like examples, when given, replace the image
        st.markdown(f"Images similar to **{target['name']}**")
        st.button("Back to text search", on_click=clear_similar)
    explain = text.strip() if rerank and "text" in query else None  # explanations answer a text query
    search = {**query, "k": k, **search_options(collection, catalog, per_product)}
    search.update({"rerank": True} if rerank else {})
    body = {**search, "offset": page_offset({**search, "collection": collection}, k)}
    st.session_state[SEARCH_REQUEST] = body
    response = call(api.search, body, collection)
    with st.sidebar:
        sidebar(api, collection, catalog, body, response)
    if response is not None:
        card = product_card_for(catalog.texts)
        results_grid(api, collection, response, "search", explain=explain, card=card)
        pager(len(response.results), k)


def search_query(collection: str, text: str, mode: str) -> dict[str, object] | None:
    """What to search by: more like the liked items and less like the disliked (positive/negative),
    else the image shown as similar, else the words; disliked items alone are subtracted from the
    query (query algebra), since `negative` goes with `positive`. None: nothing to search by yet."""
    chosen = likes(collection)
    positive, negative = list(chosen["positive"]), list(chosen["negative"])
    if positive:
        return {"positive": positive, **({"negative": negative} if negative else {})}
    target = st.session_state.get("similar_to")
    if target:
        term: dict[str, object] = {"image_id": target["id"]}
    elif text:
        term = {"text": text}
    else:
        return None
    ranked = {"mode": mode} if "text" in term else {}  # keyword and hybrid rank words
    if not negative:
        return {**term, **ranked}
    if ranked.get("mode") == "keyword":  # words alone can't be less like a picture: add image similarity
        ranked["mode"] = "hybrid"
    return {"query": [term, *({"image_id": i, "weight": -1.0} for i in negative)], **ranked}


def search_options(collection: str, catalog: Catalog, per_product: bool) -> dict[str, object]:
    """The filter of the sidebar's choices, one hit per product, and the facets to count."""
    options: dict[str, object] = {}
    chosen = build_filter(choices_for(collection), catalog)
    if chosen:
        options["filter"] = chosen
    if per_product and catalog.group_field:
        options["group_by"] = catalog.group_field
    if catalog.facets:
        options.update(facets=catalog.facets, facet_limit=FACET_LIMIT)
    return options


def rerank_switch(api: ApiClient) -> bool:
    """The "re-rank with the VLM" switch, off and greyed out while the API has no VLM, with a note
    when it is off or down."""
    try:
        state = str(api.health().get("vlm") or "off")
    except ApiError:  # an API that can't say (an older one): as if it had no VLM
        state = "off"
    if state == "off":
        st.session_state["rerank"] = False
    on = st.toggle("Re-rank with the VLM", key="rerank", disabled=state == "off",
                   help="A vision-language model looks at the best hits, re-orders them and says why each "
                   "matches.")
    if state == "off":
        # Markdown, not a caption: the page's first caption is the result count.
        st.markdown(f":gray[:material/info: The VLM is off: start the API with `CLIPSEARCH_VLM_URL` set to "
                    f"an OpenAI-compatible vision model to re-rank and explain hits ({VLM_DOCS}).]")
    elif state == "down" and on:
        st.warning("The VLM is down: results come in CLIP order until it answers again (see the Failures "
                   "page).", icon=":material/cloud_off:")
    return on


def image_page(api: ApiClient, collection: str) -> None:
    upload = st.file_uploader("Query image", type=IMAGE_TYPES, key="query_image")
    k = st.slider("Results", 1, MAX_K, key="k_image")
    if upload is None:
        st.info("Upload an image to find similar ones.")
        return
    preview(to_thumbnail(upload.getvalue()), "your image", width=200)
    response = call(api.search_image, upload.getvalue(), upload.name, k, collection)
    if response is not None:
        results_grid(api, collection, response, "image")


def classify_page(api: ApiClient, collection: str) -> None:
    uploads = st.file_uploader(
        "Images to classify", type=IMAGE_TYPES, accept_multiple_files=True, key="classify_images"
    )
    text = st.text_input("Labels, comma-separated", key="labels")
    labels = list(dict.fromkeys(label.strip() for label in text.split(",") if label.strip()))
    if not uploads:
        st.info("Upload one or more images to label them zero-shot.")
        return
    if not labels:
        st.warning("Give at least one label.")
        return
    summary = st.empty()  # filled in once every file has been answered
    failed = 0
    for number, upload in enumerate(uploads):
        # One request per file: a bad file gets its own error and the others keep their labels.
        with st.container(border=True, key=f"classified-{number}"):
            thumb, answer = st.columns([1, 3])
            with thumb:
                preview(to_thumbnail(upload.getvalue()), upload.name, width=160)
            with answer:
                failed += not classify_one(api, collection, upload.name, upload.getvalue(), labels)
    labelled = f"{plural(len(uploads) - failed, 'image')} labelled"
    summary.caption(labelled + (f", {failed} failed" if failed else ""))


@st.cache_data(ttl=600, max_entries=200, show_spinner=False)
def classified(base_url: str, api_key: str | None, collection: str, name: str, data: bytes,
               labels: tuple[str, ...]) -> list[tuple[str, float]]:
    """One file's labels; kept so that a rerun (another label, another file added) does not send every
    file again. Errors are raised, so they are never kept."""
    return get_client(base_url, api_key).classify(data, list(labels), name, collection)


def classify_one(api: ApiClient, collection: str, name: str, data: bytes, labels: list[str]) -> bool:
    try:
        scores = classified(api.base_url, api.api_key, collection, name, data, tuple(labels))
    except ApiUnreachable as exc:
        st.error(f"{name}: the API is unreachable: {exc.detail}")
        return False
    except ApiError as exc:
        st.error(f"{name}: {exc.detail}")
        return False
    best, score = scores[0]
    st.markdown(f"**{name}**: {best} ({score:.0%})")
    table = pd.DataFrame(scores, columns=["label", "score"])
    st.dataframe(table, hide_index=True, column_config={"score": SCORE_COLUMN})
    return True


def failures_page(api: ApiClient, collection: str) -> None:
    """The files that could not be indexed, and why; the collection's vectors and their state."""
    status = call(api.status, collection)
    if status is None:
        return
    failed = list(status.get("failed") or [])
    vectors = list(status.get("vectors") or [])
    indexed, failures, vector_count = st.columns(3)
    indexed.metric("Indexed", plural(int(status.get("count") or 0), "image"))
    failures.metric("Failed", plural(len(failed), "file"))
    vector_count.metric("Vectors", plural(len(vectors), "vector"))

    st.subheader("Failed files")
    if not failed:
        st.success(f"No failed files: every file found for `{collection}` was indexed.")
    else:
        reasons = Counter(str(entry.get("reason", "")) for entry in failed)
        st.dataframe(pd.DataFrame(reasons.most_common(), columns=["reason", "files"]), hide_index=True,
                     key="failure-reasons")
        rows = [(failure_name(str(e.get("uri", ""))), str(e.get("reason", "")), str(e.get("uri", "")))
                for e in failed]
        st.dataframe(pd.DataFrame(rows, columns=["file", "reason", "path"]), hide_index=True,
                     key="failed-files", width="stretch")
        for advice in failure_advice([str(e.get("uri", "")) for e in failed], collection):
            st.caption(advice)

    st.subheader("Vectors")
    if not vectors:
        st.info("The API reported no vectors for this collection.")
    else:
        rows = [(str(v.get("name") or "(default)"), describe_model(v.get("model")), str(v.get("state", "")),
                 v.get("count"), bool(v.get("active"))) for v in vectors]
        st.dataframe(pd.DataFrame(rows, columns=["name", "model", "state", "count", "active"]),
                     hide_index=True, key="vectors", width="stretch")
    vlm_section(api)


CATALOG_ROW = "#row="  # a catalog row's failure is keyed "<catalog path>#row=<n>" (ingest.catalog_run)


def failure_name(uri: str) -> str:
    """A failed file's name, or a catalog row's: "products.csv, row 12"."""
    catalog, row = uri.rsplit(CATALOG_ROW, 1) if CATALOG_ROW in uri else (uri, None)
    return f"{file_name(catalog)}, row {row}" if row is not None else file_name(uri)


def failure_advice(uris: list[str], collection: str) -> list[str]:
    """What to do about the failures, for each kind of source they came from: a catalog's rows are fixed
    in the catalog, which is then indexed again; files are fixed or removed in their folder."""
    catalogs = sorted({uri.rsplit(CATALOG_ROW, 1)[0] for uri in uris if CATALOG_ROW in uri})
    files = [uri for uri in uris if CATALOG_ROW not in uri]
    target = "" if collection == "default" else f" --collection {collection}"
    advice = [f"Rows of `{file_name(catalog)}`: fix each row in the catalog (the row number counts as your "
              f"editor does, the header included for CSV), then run `clipsearch index {catalog}{target}` "
              "with the same column flags again (unchanged rows are not embedded again)."
              for catalog in catalogs]
    if files:
        advice.append("Files: fix or remove them in their folder; the next indexing of the folder "
                      f"(`clipsearch index FOLDER{target}`, or a `serve --watch` sync) tries them again.")
    return advice


def vlm_section(api: ApiClient) -> None:
    """The VLM stage as the API sees it, asked now."""
    st.subheader("VLM")
    vlm = call(api.vlm_status, True, what="VLM status")
    if vlm is None:
        return
    where = f"`{vlm.get('model') or 'its first model'}` at `{vlm.get('url')}`"
    status = vlm.get("status")
    if status == "off":
        st.info(f"The VLM is off: set `CLIPSEARCH_VLM_URL` on the API server to an OpenAI-compatible vision "
                f"model to re-rank and explain hits ({VLM_DOCS}). Searches work without it.")
    elif status == "up":
        st.success(f"The VLM is up: {where}.")
    elif status == "down":
        st.error(f"The VLM is down: {where}: {vlm.get('error') or 'no answer'}. Searches still work, in CLIP "
                 "order; check that the server runs and `CLIPSEARCH_VLM_URL`.")
    else:
        st.info(f"The VLM ({where}) has not been asked yet.")
