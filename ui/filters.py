"""The search page's filter sidebar and the Qdrant filter JSON it builds (the `filter` of POST /v1/search):
facet checkboxes with counts for keyword fields, range sliders for integer, float and date fields,
yes/no for flags, and "near a place" for geo fields; the fields that fit the collection (a catalog's own
columns first; a gallery's date taken, camera and place; pixel sizes last, and never a shop's); also the
ranking choice (hybrid, vector, keyword) for collections with text fields.

The choices live in session state per collection, not only in the widgets (Streamlit forgets a widget
on a page that does not draw it), so the filter is known before the search runs and the sidebar, drawn
after it, shows the counts of that answer. A field with values ticked has its counts taken under the
other fields' choices, not its own, so that ticking one brand still shows what the others hold.

The API gives no field's lowest and highest value: the sliders' bounds come from a sample of up to
SAMPLE_K items (the whole collection when it is that small). A slider end left at its bound leaves
that side open, so items past the sample's bounds are never cut off by a handle nobody moved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

import streamlit as st

from ui.client import ApiClient, ApiError, SearchResponse
from ui.views import get_client

RANGE_KINDS = ("integer", "float", "datetime")
SAMPLE_K = (1000, 100)  # the sample's size; the smaller one where the server's max_k is smaller
SAMPLE_TEXT = "a photo"  # any query will do: the sample is for the fields' values, not its order
MAX_FACET_VALUES = 40  # a keyword field with more distinct values in the sample is an id, not a facet
MAX_FACETS = 16  # the API's limit per request
FACET_LIMIT = 10  # values listed per facet, most frequent first
STATE = "catalog_filters"  # session state: collection -> Choices
MODES = {"hybrid": "Hybrid (words + image)", "vector": "Image similarity", "keyword": "Keywords"}
FLAG_OPTIONS = ("any", "yes", "no")
# What ties a product's images together in collections whose status names no id field (older ones).
GROUP_FIELD = "product_id"
# The fields a folder index writes (indexer.schema.IMAGE_FIELDS), in the order a gallery's sidebar offers
# them; a catalog's own columns come before them, and pixel sizes last (photos only: a shop's filters are
# its catalog's). File names and hashes are ids, never filters.
PHOTO_FIELDS = ("taken", "camera_make", "camera_model", "location", "folder")
PIXEL_FIELDS = ("width", "height")
NOT_FILTERS = ("file_name", "sha256", "phash")
LABELS = {"taken": "Date taken", "camera_make": "Camera make", "camera_model": "Camera model",
          "location": "Place", "folder": "Folder", "width": "Width (px)", "height": "Height (px)"}
MAX_PLACES = 20  # places offered, most photos first
PLACE_DECIMALS = 1  # places are the sample's positions rounded to 0.1 degree (about 10 km)

Bounds = tuple[Any, Any]  # (lowest, highest): ints, floats or dates


@dataclass(frozen=True)
class Catalog:
    """What a collection's declared fields offer the search page."""

    kinds: dict[str, str] = field(default_factory=dict)  # every declared field -> its type
    facets: list[str] = field(default_factory=list)  # keyword fields worth counting
    bounds: dict[str, Bounds] = field(default_factory=dict)  # range fields with two or more values
    flags: list[str] = field(default_factory=list)  # bool fields
    places: dict[str, list[tuple[float, float, int]]] = field(default_factory=dict)  # geo -> (lat, lon, n)
    order: list[str] = field(default_factory=list)  # the filters in the order the sidebar shows them
    texts: list[str] = field(default_factory=list)  # text fields: words for keyword and hybrid ranking
    sample: int = 0  # how many items the bounds and facets were chosen from
    count: int = 0  # items in the collection
    id_fields: list[str] = field(default_factory=list)  # the status' id fields: a catalog's id column

    @property
    def group_field(self) -> str | None:
        """The field to show one card per product by, where the collection has it."""
        name = self.id_fields[0] if self.id_fields else GROUP_FIELD
        return name if self.kinds.get(name) in ("keyword", "integer") else None


@dataclass
class Choices:
    """What the user picked for one collection."""

    values: dict[str, list[str]] = field(default_factory=dict)  # keyword field -> values ticked
    ranges: dict[str, Bounds] = field(default_factory=dict)  # range field -> slider values, when moved
    flags: dict[str, bool] = field(default_factory=dict)
    near: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # geo field -> lat, lon, km

    def __bool__(self) -> bool:
        return bool(self.values or self.ranges or self.flags or self.near)


# --- the filter JSON (no Streamlit) ---------------------------------------------------------------------


def _day_start(day: date) -> str:
    return datetime.combine(day, time(), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def range_condition(name: str, kind: str, chosen: Bounds, bounds: Bounds) -> dict[str, Any] | None:
    """The range condition of a slider: each end away from its bound closes that side (a date end takes
    its whole day); None when neither end moved."""
    low, high = chosen
    limits: dict[str, Any] = {}
    if kind == "datetime":
        if low > bounds[0]:
            limits["gte"] = _day_start(low)
        if high < bounds[1]:
            limits["lt"] = _day_start(high + timedelta(days=1))
    else:
        if low > bounds[0]:
            limits["gte"] = low
        if high < bounds[1]:
            limits["lte"] = high
    return {"key": name, "range": limits} if limits else None


def build_filter(choices: Choices, catalog: Catalog, skip: str | None = None) -> dict[str, Any] | None:
    """The choices as a filter in Qdrant's JSON shape (every condition must hold), leaving out field
    `skip`; None when nothing is chosen."""
    must: list[dict[str, Any]] = []
    for name, values in sorted(choices.values.items()):
        if name != skip and values:
            must.append({"key": name, "match": {"any": list(values)}})
    for name, chosen in sorted(choices.ranges.items()):
        if name != skip and name in catalog.bounds:
            condition = range_condition(name, catalog.kinds[name], chosen, catalog.bounds[name])
            must += [condition] if condition else []
    for name, wanted in sorted(choices.flags.items()):
        if name != skip:
            must.append({"key": name, "match": {"value": wanted}})
    for name, (lat, lon, km) in sorted(choices.near.items()):
        if name != skip:
            center = {"lat": lat, "lon": lon}
            must.append({"key": name, "geo_radius": {"center": center, "radius": km * 1000}})
    return {"must": must} if must else None


def _as_values(value: Any) -> list[Any]:
    return [v for v in (value if isinstance(value, list) else [value]) if v is not None]


def _as_date(value: Any) -> date | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(timezone.utc).date()
    except ValueError:
        return None


def _float_bounds(low: float, high: float) -> Bounds:
    """Round numbers around the values, on the slider's step, so its labels read well."""
    step = slider_step(low, high)
    return round(math.floor(low / step) * step, 6), round(math.ceil(high / step) * step, 6)


def slider_step(low: float, high: float) -> float:
    """About a hundredth of the span, as a power of ten (0.01, 0.1, 1, 10...)."""
    span = high - low
    return 10.0 ** math.floor(math.log10(span / 100)) if span > 0 else 1.0


def profile(kinds: dict[str, str], metadata: list[dict[str, Any]], count: int,
            searchable: list[str] | None = None, id_fields: list[str] | None = None) -> Catalog:
    """What the declared fields offer, judged from a sample of items' metadata; `searchable` and
    `id_fields` as the collection's status lists them (a catalog's text columns and id column)."""
    ids = set(id_fields or []) | {GROUP_FIELD}
    seen: dict[str, list[Any]] = {name: [] for name in kinds}
    for item in metadata:
        for name, value in item.items():
            if name in seen:
                seen[name] += _as_values(value)
    facets, bounds = [], {}
    for name, kind in kinds.items():
        values = seen[name]
        distinct = len({str(v) for v in values})
        if kind == "keyword":  # a facet's values repeat; an id's (a SKU, a file name) hardly ever do
            if 0 < distinct <= MAX_FACET_VALUES and 2 * distinct <= len(values) and name not in ids:
                facets.append(name)
        elif kind == "datetime":
            days = [d for d in map(_as_date, values) if d is not None]
            if days and min(days) < max(days):
                bounds[name] = (min(days), max(days))
        elif kind in ("integer", "float"):
            numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
            if numbers and min(numbers) < max(numbers):
                low, high = min(numbers), max(numbers)
                bounds[name] = (int(low), int(high)) if kind == "integer" else _float_bounds(low, high)
    places = {name: _places(seen[name]) for name, kind in kinds.items() if kind == "geo"}
    places = {name: found for name, found in places.items() if found}
    flags = [name for name, kind in kinds.items() if kind == "bool"]
    order = filter_order(kinds, {*facets[:MAX_FACETS], *bounds, *flags, *places}, ids)
    return Catalog(
        kinds=dict(kinds), facets=[n for n in order if n in facets[:MAX_FACETS]],
        bounds={n: bounds[n] for n in order if n in bounds}, flags=[n for n in order if n in flags],
        texts=[name for name, kind in kinds.items() if kind == "text" or name in (searchable or [])
               and name not in ids],
        sample=len(metadata), count=count, id_fields=list(id_fields or []),
        places={n: places[n] for n in order if n in places}, order=order,
    )


def filter_order(kinds: dict[str, str], offered: set[str], ids: set[str] | None = None) -> list[str]:
    """The filters that fit the collection, in sidebar order: a catalog's own fields (price, brand...)
    first, as declared; then a folder's photo fields (date taken, camera, place, folder); pixel width and
    height last, and only for photos (a shop's images' sizes are not what its customers filter by).
    `ids`: the collection's id fields (a catalog's id column), which mark a catalog and are no filter."""
    ids = ids or {GROUP_FIELD}
    catalog = any(name in kinds for name in ids)
    own = [n for n in kinds if n not in (*PHOTO_FIELDS, *PIXEL_FIELDS, *NOT_FILTERS, *ids)]
    pixels = [] if catalog else list(PIXEL_FIELDS)
    return [n for n in (*own, *PHOTO_FIELDS, *pixels) if n in offered and n in kinds]


def _places(values: list[Any]) -> list[tuple[float, float, int]]:
    """The sample's geo points rounded to places (PLACE_DECIMALS), most photos first."""
    counts: dict[tuple[float, float], int] = {}
    for value in values:
        if isinstance(value, dict) and isinstance(value.get("lat"), int | float) \
                and isinstance(value.get("lon"), int | float):
            place = (round(float(value["lat"]), PLACE_DECIMALS), round(float(value["lon"]), PLACE_DECIMALS))
            counts[place] = counts.get(place, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_PLACES]
    return [(lat, lon, n) for (lat, lon), n in ranked]


def place_name(lat: float, lon: float) -> str:
    """ "38.7°N 9.1°W"."""
    return f"{abs(lat):.{PLACE_DECIMALS}f}°{'N' if lat >= 0 else 'S'} {abs(lon):.{PLACE_DECIMALS}f}°" \
           f"{'E' if lon >= 0 else 'W'}"


# --- reading the collection ------------------------------------------------------------------------------


@st.cache_data(ttl=120, max_entries=50, show_spinner=False)
def _sample(base_url: str, api_key: str | None, collection: str, count: int) -> list[dict[str, Any]]:
    """The metadata of up to SAMPLE_K items (all of a small collection); kept per collection size, so a
    re-index shows its new values. API errors propagate (and are not kept)."""
    api = get_client(base_url, api_key)
    for k in SAMPLE_K:
        body = {"text": SAMPLE_TEXT, "mode": "vector", "k": max(1, min(k, count))}
        try:
            return [hit.metadata for hit in api.search(body, collection).results]
        except ApiError as exc:
            if exc.status != 422:  # 422: k above the server's max_k; try the smaller sample
                raise
    return []


def read_catalog(api: ApiClient, collection: str) -> Catalog:
    """The collection's declared fields (GET .../status) and what a sample of its items holds; an
    empty Catalog (no sidebar) when either can't be read."""
    try:
        status = api.status(collection)
        kinds = {str(k): str(v) for k, v in (status.get("fields") or {}).items()}
        count = int(status.get("count") or 0)
        filterable = any(kind in (*RANGE_KINDS, "keyword", "geo") for kind in kinds.values())
        sample = _sample(api.base_url, api.api_key, collection, count) if filterable and count else []
    except ApiError:
        return Catalog()
    searchable, id_fields = list(status.get("searchable") or []), list(status.get("id_fields") or [])
    return profile(kinds, sample, count, searchable, id_fields)


def choices_for(collection: str) -> Choices:
    return st.session_state.setdefault(STATE, {}).setdefault(collection, Choices())


def clear_choices(collection: str) -> None:
    st.session_state.setdefault(STATE, {}).pop(collection, None)


# --- widgets ---------------------------------------------------------------------------------------------


def facet_key(collection: str, name: str, value: str) -> str:
    return f"facet|{collection}|{name}|{value}"


def range_key(collection: str, name: str) -> str:
    return f"range|{collection}|{name}"


def flag_key(collection: str, name: str) -> str:
    return f"flag|{collection}|{name}"


def _tick(collection: str, name: str, value: str, key: str) -> None:
    values = choices_for(collection).values.setdefault(name, [])
    if st.session_state[key] and value not in values:
        values.append(value)
    elif not st.session_state[key] and value in values:
        values.remove(value)
    if not values:
        choices_for(collection).values.pop(name)


def _slide(collection: str, name: str, key: str, bounds: Bounds) -> None:
    chosen = tuple(st.session_state[key])
    ranges = choices_for(collection).ranges
    if chosen == tuple(bounds):
        ranges.pop(name, None)
    else:
        ranges[name] = chosen


def _flag(collection: str, name: str, key: str) -> None:
    flags, picked = choices_for(collection).flags, st.session_state[key]
    if picked in (None, "any"):
        flags.pop(name, None)
    else:
        flags[name] = picked == "yes"


def _label(name: str) -> str:
    return LABELS.get(name) or name.replace("_", " ").capitalize()


def place_key(collection: str, name: str) -> str:
    return f"place|{collection}|{name}"


def _near(collection: str, name: str, key: str) -> None:
    picked, km = st.session_state[key], st.session_state[f"{key}|km"]
    near = choices_for(collection).near
    if picked is None:
        near.pop(name, None)
    else:
        near[name] = (picked[0], picked[1], float(km))


def ranking_choice(catalog: Catalog) -> str:
    """The ranking of a text query: hybrid, vector or keyword where the collection has text fields to
    rank words by (hybrid by default, as the API's own default), vector otherwise."""
    if not catalog.texts:
        return "vector"
    if st.session_state.get("search_mode") not in MODES:
        st.session_state["search_mode"] = "hybrid"
    words = ", ".join(catalog.texts)
    return str(st.radio("Ranking", list(MODES), key="search_mode", format_func=MODES.__getitem__,
                        horizontal=True, help=f"Keywords rank by the words of {words}; hybrid fuses them "
                        "with image similarity (an exact SKU or model number comes first)."))


def facet_counts(api: ApiClient, collection: str, catalog: Catalog, body: dict[str, Any],
                 response: SearchResponse) -> dict[str, list[tuple[str, int]]]:
    """Each facet's counts: the answer's, except for a field with values ticked, counted again (one
    k=1 request) under the other fields' choices only."""
    counts = dict(response.facets)
    choices = choices_for(collection)
    for name in catalog.facets:
        if choices.values.get(name):
            again = {key: value for key, value in body.items() if key not in ("rerank", "explain", "filter")}
            others = build_filter(choices, catalog, skip=name)
            again.update(k=1, offset=0, facets=[name], **({"filter": others} if others else {}))
            try:
                counts[name] = api.search(again, collection).facets.get(name, [])
            except ApiError:
                pass  # the answer's own counts are still right for the ticked values
    return counts


def sidebar(api: ApiClient, collection: str, catalog: Catalog, body: dict[str, Any],
            response: SearchResponse | None) -> None:
    """The filter widgets, with the counts of `response` (the search made with `body`)."""
    if not catalog.order:
        return
    choices = choices_for(collection)
    st.subheader("Filters")
    if choices:
        st.button("Clear filters", key="filters-clear", on_click=clear_choices, args=(collection,),
                  icon=":material/filter_alt_off:")
    counts = facet_counts(api, collection, catalog, body, response) if response else {}
    for name in catalog.order:  # the collection's own fields first (filter_order)
        if name in catalog.facets:
            _facet_widget(collection, name, choices, counts.get(name, []))
        elif name in catalog.bounds:
            _range_widget(collection, name, catalog, choices)
        elif name in catalog.flags:
            key = flag_key(collection, name)
            wanted = choices.flags.get(name)
            st.session_state[key] = "any" if wanted is None else "yes" if wanted else "no"
            st.radio(_label(name), FLAG_OPTIONS, key=key, horizontal=True, on_change=_flag,
                     args=(collection, name, key))
        elif name in catalog.places:
            _place_widget(collection, name, catalog, choices)
    if catalog.sample < catalog.count:
        st.caption(f"Slider ranges and facet fields from a sample of {catalog.sample} of {catalog.count} "
                   "items; a slider left at its end leaves that side open.")


def _facet_widget(collection: str, name: str, choices: Choices, listed: list[tuple[str, int]]) -> None:
    chosen = choices.values.get(name, [])
    shown = listed + [(value, 0) for value in chosen if value not in dict(listed)]
    with st.expander(_label(name), expanded=True):
        for value, count in shown:
            key = facet_key(collection, name, value)
            st.session_state[key] = value in chosen
            st.checkbox(f"{value} ({count})", key=key, on_change=_tick, args=(collection, name, value, key))


def _range_widget(collection: str, name: str, catalog: Catalog, choices: Choices) -> None:
    bounds = catalog.bounds[name]
    key = range_key(collection, name)
    low, high = choices.ranges.get(name, bounds)
    st.session_state[key] = (max(low, bounds[0]), min(high, bounds[1]))  # bounds move with the sample
    kind = catalog.kinds[name]
    step = slider_step(*bounds) if kind == "float" else None
    st.slider(_label(name), min_value=bounds[0], max_value=bounds[1], key=key, step=step,
              format="%.2f" if kind == "float" and step and step < 1 else None,
              on_change=_slide, args=(collection, name, key, bounds))


def _place_widget(collection: str, name: str, catalog: Catalog, choices: Choices) -> None:
    """A geo field: near one of the places the photos were taken (the sample's, most photos first),
    within a distance."""
    key = place_key(collection, name)
    options = [(lat, lon) for lat, lon, _ in catalog.places[name]]
    photos = {(lat, lon): n for lat, lon, n in catalog.places[name]}
    chosen = choices.near.get(name)
    st.session_state[key] = (chosen[0], chosen[1]) if chosen and (chosen[0], chosen[1]) in photos else None
    st.session_state[f"{key}|km"] = int(chosen[2]) if chosen else 25
    with st.expander(_label(name), expanded=True):
        st.selectbox("Near", options, key=key, index=None, placeholder="anywhere",
                     format_func=lambda p: f"{place_name(*p)} ({photos[p]})", on_change=_near,
                     args=(collection, name, key))
        st.slider("Within (km)", 1, 500, key=f"{key}|km", on_change=_near, args=(collection, name, key))
