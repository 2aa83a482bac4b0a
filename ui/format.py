"""Words and names the UI shows: plain functions, no Streamlit, so they are easy to test."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any
from urllib.parse import unquote, urlsplit


def plural(count: int, noun: str, plural_noun: str | None = None) -> str:
    """ "1 image", "2 images", "0 images"."""
    return f"{count} {noun if count == 1 else plural_noun or noun + 's'}"


def file_name(uri: str) -> str:
    """The last part of a path or URL ("/photos/a/cat.jpg" -> "cat.jpg"); the uri itself if it has none."""
    if "://" in uri:
        path = unquote(urlsplit(uri).path)
        return PurePosixPath(path).name or uri
    # Windows paths only where they look like one: a POSIX name may hold a backslash.
    name = PureWindowsPath(uri).name if uri[1:3] == ":\\" else PurePosixPath(uri).name
    return name or uri


def short_path(uri: str, folders: int = 2) -> str:
    """The file's name under its last `folders` folders ("/data/imagenet/n01440764/0009.jpg" ->
    "imagenet/n01440764/0009.jpg"): what tells apart files of one name in different folders."""
    if "://" in uri:
        parts = PurePosixPath(unquote(urlsplit(uri).path)).parts
    elif uri[1:3] == ":\\":
        parts = PureWindowsPath(uri).parts[1:]
    else:
        parts = PurePosixPath(uri).parts
    kept = [part for part in parts if part not in ("/", "\\")][-(folders + 1):]
    return "/".join(kept) or uri


def display_name(uri: str, metadata: Mapping[str, Any] | None = None) -> str:
    """What a result is called: the catalog's title when it gave one, else the file's name under its
    last folders (short_path)."""
    title = (metadata or {}).get("title")
    if isinstance(title, str) and title.strip():
        return title.strip()
    return short_path(uri)


def taken_date(value: Any) -> str | None:
    """An RFC 3339 date taken as the camera's clock showed it: "2019-06-01 14:03"."""
    if not isinstance(value, str) or len(value) < 10:
        return None
    return value[:16].replace("T", " ") if len(value) >= 16 else value[:10]


def camera(metadata: Mapping[str, Any]) -> str | None:
    """Make and model in one ("Canon EOS 5D"), the make left out where the model already says it."""
    make, model = (str(metadata.get(k) or "").strip() for k in ("camera_make", "camera_model"))
    if model and make and model.lower().startswith(make.split()[0].lower()):
        return model
    return " ".join(part for part in (make, model) if part) or None


def resolution(metadata: Mapping[str, Any]) -> str | None:
    """"4032 × 3024 px" from the indexed width and height (what the duplicates' keeper rule compares)."""
    width, height = metadata.get("width"), metadata.get("height")
    if isinstance(width, int) and isinstance(height, int):
        return f"{width} × {height} px"
    return None


def photo_facts(metadata: Mapping[str, Any]) -> list[str]:
    """What a photo's card says besides its name: date taken, camera, resolution, place (those known)."""
    place = metadata.get("location")
    where = (f"{place['lat']:.3f}, {place['lon']:.3f}"
             if isinstance(place, Mapping) and isinstance(place.get("lat"), int | float)
             and isinstance(place.get("lon"), int | float) else None)
    facts = [taken_date(metadata.get("taken")), camera(metadata), resolution(metadata), where]
    return [fact for fact in facts if fact]


def describe_model(model: Any) -> str:
    """A model identity (architecture, weights, dim) in one line; whatever else as text."""
    if isinstance(model, Mapping):
        weights = str(model.get("weights") or "random weights")
        weights = weights[:19] + "…" if weights.startswith("sha256:") else weights
        return f"{model.get('architecture', '?')} ({weights}, {model.get('dim', '?')}-d)"
    return str(model or "unknown model")


def describe_size(byte_count: int) -> str:
    if byte_count < 1024:
        return plural(byte_count, "byte")
    if byte_count < 1024 * 1024:
        return f"{byte_count / 1024:.1f} KB"
    return f"{byte_count / (1024 * 1024):.1f} MB"
