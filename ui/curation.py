"""The Curation page: duplicate groups side by side, clusters with their most central images, and the
most isolated images (outliers) first. Reports come from the API's curation routes (search_api/dedupe.py),
computed when asked for (a button) and cached for a few minutes; nothing here changes a file.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import streamlit as st

from ui.client import ApiClient
from ui.format import plural, resolution, short_path, taken_date
from ui.views import call, get_client, indexed_preview, path_line

COLUMNS = 5


@st.cache_data(ttl=300, max_entries=50, show_spinner=False)
def report(base_url: str, api_key: str | None, collection: str, kind: str, params: tuple[Any, ...]) -> Any:
    """One curation report (duplicates, clusters, outliers); API errors propagate and are not cached."""
    client = get_client(base_url, api_key)
    path = f"/v1/collections/{quote(collection, safe='')}/{kind}"
    return client._json("GET", path, params=dict(params), timeout=600)


def _fetch(api: ApiClient, collection: str, kind: str, **params: Any) -> Any:
    return call(report, api.base_url, api.api_key, collection, kind, tuple(sorted(params.items())), what=kind)


def _card(api: ApiClient, collection: str, image_id: str, uri: str, caption: str, facts: list[str]) -> None:
    indexed_preview(api, collection, image_id, None)
    path_line(uri or image_id, facts)
    st.caption(caption)


def _row(api: ApiClient, collection: str, cards: list[tuple[str, str, str, list[str]]]) -> None:
    for start in range(0, len(cards), COLUMNS):
        for column, (image_id, uri, caption, facts) in zip(st.columns(COLUMNS), cards[start:start + COLUMNS],
                                                           strict=False):
            with column:
                _card(api, collection, image_id, uri, caption, facts)


def keeper_facts(group: dict[str, Any]) -> list[list[str]]:
    """Per member: its resolution and date, what the keeper rule (largest, then oldest) compared."""
    members = len(group.get("ids", []))
    sizes = group.get("sizes") or [None] * members
    dates = group.get("dates") or [None] * members
    facts = []
    for size, when in zip(sizes, dates, strict=False):
        facts.append([fact for fact in (resolution({"width": size[0], "height": size[1]}) if size else None,
                                        taken_date(when)) if fact])
    return facts + [[] for _ in range(members - len(facts))]


def duplicates_tab(api: ApiClient, collection: str) -> None:
    left, right = st.columns(2)
    threshold = left.slider("CLIP similarity of near duplicates", 0.80, 1.0, 0.95, 0.01, key="dup_threshold")
    hash_distance = right.slider("Perceptual-hash distance (bits)", 0, 20, 12, key="dup_hash_distance")
    if not st.toggle("Find duplicates", key="dup_run"):
        st.info("Turn on *Find duplicates* to compare every image of the collection (this can take a while).")
        return
    with st.spinner("Finding duplicates..."):
        found = _fetch(api, collection, "duplicates", threshold=threshold, hash_distance=hash_distance)
    if found is None:
        return
    groups = found.get("groups", [])
    extra = sum(len(g["others"]) for g in groups)
    st.caption(f"{plural(len(groups), 'group')}, {plural(extra, 'duplicate')} among "
               f"{plural(found.get('items', 0), 'image')}. Nothing is deleted: the first image of each "
               f"group is the one to keep (the largest, then the oldest).")
    if not groups:
        st.success("No duplicates found.")
    for n, group in enumerate(groups[:100]):
        st.markdown(f"**{n + 1}. {group['kind']}** duplicates: keep `{short_path(group['keep'])}`")
        uris = [group["keep"], *group["others"]]
        captions = ["keep", *(f"similarity {s:.3f}" for s in group["scores"])]
        _row(api, collection, list(zip(group["ids"], uris, captions, keeper_facts(group), strict=True)))
    if len(groups) > 100:
        st.caption(f"The first 100 groups of {len(groups)}: `clipsearch duplicates --json` lists them all.")


def clusters_tab(api: ApiClient, collection: str) -> None:
    left, right = st.columns(2)
    k = left.number_input("Clusters", 1, 200, 12, key="clusters_k")
    central = right.number_input("Central images shown", 1, 20, COLUMNS, key="clusters_central")
    if not st.toggle("Cluster the collection", key="clusters_run"):
        st.info("Turn on *Cluster the collection* to group its images by k-means over their vectors.")
        return
    with st.spinner("Clustering..."):
        found = _fetch(api, collection, "clusters", k=int(k), central=int(central))
    if found is None:
        return
    for cluster in found.get("clusters", []):
        st.markdown(f"**Cluster {cluster['cluster']}** · {plural(cluster['size'], 'image')}")
        cards = [(i["id"], i["uri"], f"centrality {i['score']:.3f}", []) for i in cluster["central"]]
        _row(api, collection, cards)


def outliers_tab(api: ApiClient, collection: str) -> None:
    limit = st.slider("Images", 5, 100, 20, 5, key="outliers_limit")
    if not st.toggle("Find outliers", key="outliers_run"):
        st.info("Turn on *Find outliers* to list the images least like any other, most isolated first.")
        return
    with st.spinner("Scoring isolation..."):
        found = _fetch(api, collection, "outliers", limit=int(limit))
    if found is None:
        return
    _row(api, collection, [(i["id"], i["uri"], f"isolation {i['score']:.3f}", []) for i in found["outliers"]])


def curation_page(api: ApiClient, collection: str) -> None:
    duplicates, clusters, outliers = st.tabs(["Duplicates", "Clusters", "Outliers"])
    with duplicates:
        duplicates_tab(api, collection)
    with clusters:
        clusters_tab(api, collection)
    with outliers:
        outliers_tab(api, collection)
