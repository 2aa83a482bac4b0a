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


def display_name(uri: str, metadata: Mapping[str, Any] | None = None) -> str:
    """What a result is called: the catalog's title when it gave one, else the file's name."""
    title = (metadata or {}).get("title")
    if isinstance(title, str) and title.strip():
        return title.strip()
    return file_name(uri)


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
