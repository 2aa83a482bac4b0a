"""Helpers the test modules share; test modules import from here, never from one another.

- paths and settings: the tiny model's config, the shared real photos, settings for a home;
- waiting: `eventually`, which retries a read-and-check until it passes (never wait, then read);
- photos: private copies of real photos;
- a real API server: uvicorn in a thread on a loopback port (`serve`), or over freshly indexed
  photos (`indexed_server`), and raw HTTP for what httpx would normalise away;
- store tests: seeded payloads with every field type and every kind of absence (`random_payloads`),
  which points a store filter keeps (`kept`), and exact search to hold stores to (`brute_force`).

(`tests/clirun.py` runs the CLI; `tests/corpus.py` writes broken and awkward image files.)
"""

from __future__ import annotations

import http.client
import io
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from indexer.models.loading import ClipModel
from indexer.schema import FieldType
from indexer.settings import Settings
from indexer.stores.filters import Filter, matches

TESTS = Path(__file__).parent
TINY_CONFIG = TESTS / "tiny-clip.json"
SHARED_DATA = (TESTS.parent.parent / "shared" / "data").resolve()
IMAGENET = SHARED_DATA / "imagenet-samples"


# --- settings ------------------------------------------------------------------------------------


def settings_env(home: Path, checkpoint: Path) -> dict[str, str]:
    """The CLIPSEARCH_* variables for `home` with the tiny model, for the command and subprocesses."""
    return {
        "CLIPSEARCH_HOME": str(home),
        "CLIPSEARCH_MODEL": str(TINY_CONFIG),
        "CLIPSEARCH_PRETRAINED": str(checkpoint),
        "CLIPSEARCH_DEVICE": "cpu",
        "CLIPSEARCH_WORKERS": "1",
        "CLIPSEARCH_BATCH_SIZE": "16",
    }


def make_settings(home: Path, checkpoint: Path, **overrides: Any) -> Settings:
    """What conftest's `settings` fixture gives, as arguments: module-scoped servers can't use it.

    Overrides name top-level settings (`collection=`), whole sections (`api={"key": ...}`), or one
    section field spelled as its environment variable is (`api_key=` for CLIPSEARCH_API_KEY) or by
    its own name when only one section has it (`max_k=`). Settings ignores unknown names, so an
    unknown one raises here rather than being dropped without a word."""
    values: dict[str, Any] = dict(
        home=home, model=str(TINY_CONFIG), pretrained=str(checkpoint), device="cpu", workers=1,
        batch_size=16, api={"key": None, "cors_origins": []},
    )
    sections = {name: info.annotation.model_fields for name, info in Settings.model_fields.items()
                if hasattr(info.annotation, "model_fields")}
    for name, value in overrides.items():
        if name in Settings.model_fields:
            values[name] = {**values.get(name, {}), **value} if name in sections else value
            continue
        owners = [(section, name.removeprefix(f"{section}_")) for section, fields in sections.items()
                  if name.startswith(f"{section}_") and name.removeprefix(f"{section}_") in fields]
        owners = owners or [(section, name) for section, fields in sections.items() if name in fields]
        if len(owners) != 1:
            raise TypeError(f"make_settings: {name!r} names no setting (or more than one section's)")
        section, field = owners[0]
        values[section] = {**values.get(section, {}), field: value}
    return Settings(**values)


# --- waiting -------------------------------------------------------------------------------------

Checked = TypeVar("Checked")


def eventually(check: Callable[[], Checked], timeout: float = 60, what: str = "",
               retry_on: tuple[type[BaseException], ...] = (AssertionError,), every: float = 0.1) -> Checked:
    """Run `check` (a function that reads the state and asserts on what it read, in one step) until it
    passes, and answer what it returned; at the deadline its last failure is raised.

    For anything that settles in its own time (a page that re-renders, a watcher that syncs, a
    counter bumped after the write it counts): waiting for one sign and then reading another can see
    the state between the two; checking the very reading that was waited for cannot. `retry_on` adds
    errors that mean "not yet" (playwright's Error when an element is replaced mid-read)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except retry_on as failure:
            if time.monotonic() > deadline:
                raise AssertionError(f"still failing after {timeout}s{f' ({what})' if what else ''}: "
                                     f"{type(failure).__name__}: {failure}") from failure
        time.sleep(every)


# --- photos --------------------------------------------------------------------------------------


def require_imagenet() -> Path:
    if not IMAGENET.is_dir():
        pytest.skip(f"real test images absent: {IMAGENET} (see ../shared/data/README.md)")
    return IMAGENET


def photo_copies(source: Path, folder: Path, count: int) -> list[Path]:
    """Private copies of the first `count` real photos in `folder`, which a test may change."""
    folder.mkdir(parents=True, exist_ok=True)
    # *.JPEG only: the shared folder also holds a README.md
    return [Path(shutil.copy2(photo, folder / photo.name)) for photo in sorted(source.glob("*.JPEG"))[:count]]


def copy_photos(source: Path, folder: Path, count: int) -> Path:
    """`photo_copies`, answering the folder."""
    photo_copies(source, folder, count)
    return folder


def png_bytes(size: tuple[int, int], color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


# --- a real API server ---------------------------------------------------------------------------


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Run the app with uvicorn in a background thread; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound here and handed over, so no other process can take the port
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # asyncio sets it only on sockets it makes
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120  # a bound for failing only: a loaded machine may take seconds
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "API server did not come up"
        time.sleep(0.02)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@dataclass
class Served:
    url: str
    settings: Settings
    photos: list[Path]
    ids: list[str]  # every indexed item's id


def index_photos(root: Path, source: Path, checkpoint: Path, model: ClipModel, count: int,
                 **overrides: Any) -> tuple[Settings, list[Path], list[str]]:
    """Copy `count` real photos under root, index them with the tiny model; settings, photos, ids."""
    from indexer.ingest.pipeline import index_sources
    from indexer.stores import open_store

    photos = photo_copies(source, root / "photos", count)
    settings = make_settings(root / "home", checkpoint, **overrides)
    report = index_sources(settings, [root / "photos"], model=model, progress=False)
    assert (report.embedded, report.failed) == (count, 0)
    store = open_store(settings, settings.collection)  # read before the server holds the collection
    try:
        ids = [record.id for record in store.scan()]
    finally:
        store.close()
    return settings, photos, ids


@contextmanager
def indexed_server(root: Path, source: Path, checkpoint: Path, model: ClipModel, count: int,
                   **overrides: Any) -> Iterator[Served]:
    """A real uvicorn server (in a thread) over `count` freshly indexed real photos."""
    from search_api import create_app

    settings, photos, ids = index_photos(root, source, checkpoint, model, count, **overrides)
    with serve(create_app(settings, model=model)) as url:
        yield Served(url, settings, photos, ids)


def raw_get(url: str, path: str, headers: dict[str, str | bytes] | None = None) -> tuple[int, bytes]:
    """GET a path exactly as written: httpx would normalise away '..' segments before sending."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def assert_error(response: httpx.Response, status: int, contains: str = "") -> str:
    """An error answer: the status, and the promised JSON {"detail": "<sentence>"}."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail
    assert contains.lower() in detail.lower()
    return detail


# --- store tests: payloads, filters, exact search ---------------------------------------------------


# Declared fields of `random_payloads`, one of each filterable type; "tags" is mostly arrays.
PAYLOAD_FIELDS: dict[str, FieldType] = {
    "brand": "keyword", "tags": "keyword", "stock": "integer", "price": "float", "new": "bool",
    "when": "datetime", "where": "geo",
}
BRANDS = ("acme", "bolt", "core", "dune")
TAGS = ("red", "blue", "green", "gold")
LISBON = (38.7223, -9.1393)
_EPOCH = datetime(2024, 1, 1, tzinfo=timezone.utc)


def _value(rng: np.random.Generator, kind: FieldType, field: str) -> Any:
    if kind == "keyword":
        words = TAGS if field == "tags" else BRANDS
        return words[int(rng.integers(len(words)))]
    if kind == "integer":
        return int(rng.integers(0, 10))
    if kind == "float":
        return round(float(rng.uniform(0, 100)), 2)
    if kind == "bool":
        return bool(rng.integers(2))
    if kind == "datetime":  # the same instant in several zones: stores must compare instants
        moment = _EPOCH + timedelta(minutes=int(rng.integers(0, 525_600)))
        return moment.astimezone(timezone(timedelta(hours=int(rng.integers(-5, 6))))).isoformat()
    if kind == "geo":  # within ~50 km of Lisbon, so radius filters cut through the points
        return {"lat": round(LISBON[0] + float(rng.uniform(-0.5, 0.5)), 5),
                "lon": round(LISBON[1] + float(rng.uniform(-0.5, 0.5)), 5)}
    raise ValueError(f"random_payloads: no values for {kind} fields")


def random_metadata(rng: np.random.Generator,
                    fields: dict[str, FieldType] = PAYLOAD_FIELDS) -> dict[str, Any]:
    """Each field: missing (12%), null (7%), [] (7%), an array of 1-3 values (19%, 'tags' 60%) or
    one value; every way a value can be absent, since filters must treat each as the reference does."""
    metadata: dict[str, Any] = {}
    for field, kind in fields.items():
        draw = float(rng.uniform())
        arrays = 0.86 if field == "tags" else 0.45
        if draw < 0.12:
            continue
        if draw < 0.19:
            metadata[field] = None
        elif draw < 0.26:
            metadata[field] = []
        elif draw < arrays:
            metadata[field] = [_value(rng, kind, field) for _ in range(int(rng.integers(1, 4)))]
        else:
            metadata[field] = _value(rng, kind, field)
    return metadata


def random_payloads(rng: np.random.Generator, n: int,
                    fields: dict[str, FieldType] = PAYLOAD_FIELDS) -> list[dict[str, Any]]:
    """n whole point payloads (uri, path, fingerprint, metadata) with seeded `random_metadata`;
    declare `fields` in the collection's schema."""
    return [{"uri": f"/img/{i}.jpg", "path": f"{i}.jpg", "fingerprint": str(i),
             "metadata": random_metadata(rng, fields)} for i in range(n)]


def kept(store_filter: Filter | None, ids: Sequence[str], payloads: Sequence[dict[str, Any]],
         vectors: Sequence[frozenset[str]] | None = None) -> np.ndarray:
    """Which points pass a store filter by the reference meaning (`indexer.stores.filters.matches`), as a
    mask for `brute_force`; `vectors`: each point's vector names, for has_vector."""
    have = vectors or [frozenset()] * len(ids)
    return np.array([matches(store_filter, i, p, v) for i, p, v in zip(ids, payloads, have, strict=True)],
                    dtype=bool)


def brute_force(vectors: np.ndarray, query: np.ndarray, k: int, keep_mask: np.ndarray | None = None,
                offset: int = 0) -> list[tuple[int, float]]:
    """Exact search: (row, score) of the best k rows by inner product (cosine on unit vectors) among
    those `keep_mask` keeps, after skipping the `offset` best; ties in row order."""
    scores = np.asarray(vectors, dtype=np.float32) @ np.asarray(query, dtype=np.float32)
    rows = np.arange(len(scores)) if keep_mask is None else np.flatnonzero(keep_mask)
    order = rows[np.argsort(-scores[rows], kind="stable")][offset : offset + k]
    return [(int(row), float(scores[row])) for row in order]


# --- the UI ---------------------------------------------------------------------------------------------

UI_APP = TESTS.parent / "ui" / "app.py"


def app_test(api_url: str, monkeypatch: pytest.MonkeyPatch, **state: Any) -> Any:
    """The UI under Streamlit's AppTest, pointed at the API at `api_url` (no key), run once with
    `state` in its session state; returns the AppTest."""
    from streamlit.testing.v1 import AppTest  # here: importing Streamlit costs every other test module

    monkeypatch.setenv("CLIPSEARCH_API_URL", api_url)
    monkeypatch.delenv("CLIPSEARCH_API_KEY", raising=False)
    at = AppTest.from_file(str(UI_APP), default_timeout=60)
    for key, value in state.items():
        at.session_state[key] = value
    return at.run()


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


@contextmanager
def chromium_browser() -> Iterator[Any]:
    """Debian's headless Chromium under Playwright (no browser download); closed after."""
    from playwright import sync_api

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def wait_until_healthy(process: Any, url: str, log: Path, what: str, timeout: float) -> None:
    """Wait for a Streamlit process's health answer; fail with its log if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/_stcore/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{what} did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


@contextmanager
def streamlit_ui(api_url: str, log_dir: Path) -> Iterator[str]:
    """`streamlit run app.py` in a subprocess, from ui/ as `clipsearch ui` runs it, pointed at the API;
    yields its URL once healthy, and stops it after."""
    import os
    import subprocess
    import sys

    port = free_port()
    env = {**os.environ, "CLIPSEARCH_API_URL": api_url}
    env.pop("CLIPSEARCH_API_KEY", None)
    log = log_dir / "streamlit.log"
    command = [sys.executable, "-m", "streamlit", "run", UI_APP.name, "--server.headless", "true",
               "--server.port", str(port), "--browser.gatherUsageStats", "false"]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=UI_APP.parent, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(process, url, log, "streamlit", 60)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_REFUSING: list[socket.socket] = []  # held open for the session: their ports stay taken and refuse


def refusing_port() -> int:
    """A loopback port bound but never listened on, held until the tests end: a connection to it is
    refused, always (a port bound then released, as free_port's, may be taken by another process)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    _REFUSING.append(sock)
    return sock.getsockname()[1]
