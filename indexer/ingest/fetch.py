"""Images by URL for catalogs: fetched concurrently, within limits, into an on-disk cache.

Safety first, as the URLs come from a file someone else may have written (a supplier's catalog):
- only http and https;
- the host is resolved once per connection and the connection goes to the address that was checked
  (`_VettingBackend`), so DNS cannot answer one address to the check and another to the connect;
  loopback, private and other non-public addresses are refused unless `fetch.allow_private`, and
  link-local (169.254.0.0/16: the cloud metadata service), unspecified, multicast and reserved ones
  always; IPv6 addresses that carry an IPv4 one (mapped, NAT64, 6to4) are judged by that one;
- redirects are followed here, each new URL checked like the first before any connection to it;
- no proxy from the environment (a proxy would resolve the host itself, unchecked);
- a byte cap counted while the body streams, a deadline per attempt (a host trickling bytes), and a
  content check (it must be an image within `max_image_pixels`) before anything enters the cache.

Retries with exponential backoff on 5xx, 429 (honouring a short Retry-After), timeouts and dropped
connections. The cache is keyed by URL and revalidated with ETag / Last-Modified, so a re-run
downloads nothing that did not change. Every failure is a short reason, never an exception.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import ipaddress
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx

from indexer.errors import ImageDecodeError
from indexer.ingest.decode import image_size
from indexer.settings import Settings

SCHEMES = ("http", "https")
_ALLOW_HINT = "set CLIPSEARCH_FETCH_ALLOW_PRIVATE=true to fetch from intranet hosts"
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504}) | frozenset(range(505, 600))
_MAX_RETRY_AFTER_S = 30.0
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class FetchRefused(Exception):
    """A URL or an address we will not connect to; the message says why."""


class _Failed(Exception):
    """A download that failed for good (reason in the message)."""


class _Retryable(Exception):
    """A download that may work if tried again (reason in the message)."""

    def __init__(self, reason: str, wait: float | None = None) -> None:
        super().__init__(reason)
        self.wait = wait


@dataclass(frozen=True)
class Fetched:
    """One URL's outcome: the cached file and its content hash, or the reason it failed."""

    url: str
    path: Path | None = None
    sha256: str | None = None
    reason: str | None = None
    downloaded: bool = False  # False: the cache answered (the server said 304 Not Modified)

    @property
    def ok(self) -> bool:
        return self.path is not None


# --- which addresses ---------------------------------------------------------------------------


def address_refusal(address: str, allow_private: bool = False) -> str | None:
    """Why we refuse to connect to this IP address, or None when it is allowed."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # fe80::1%eth0: the zone is not the address
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            inner = address_refusal(str(embedded), allow_private)
            return f"{inner} (inside {ip})" if inner else None
    if ip.is_link_local:
        return f"{ip} is a link-local address (such as the cloud metadata service)"
    if ip.is_unspecified or ip in _THIS_NETWORK:
        return f"{ip} is an unspecified address"
    if ip.is_multicast:
        return f"{ip} is a multicast address"
    if ip.is_loopback:  # before is_reserved, which also covers ::1
        return None if allow_private else f"{ip} is a loopback address; {_ALLOW_HINT}"
    if ip.is_reserved:  # before is_private, which also covers 240.0.0.0/4
        return f"{ip} is a reserved address"
    if ip.is_private:
        return None if allow_private else f"{ip} is a private address; {_ALLOW_HINT}"
    if not ip.is_global:  # shared (100.64/10), benchmarking, documentation ranges...
        return None if allow_private else f"{ip} is not a public address; {_ALLOW_HINT}"
    return None


def resolve_vetted(host: str, port: int, allow_private: bool) -> list[str]:
    """The addresses of `host` we may connect to, in resolver order; FetchRefused when none."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise _Failed(f"cannot resolve host {host!r}: {exc.strerror or exc}") from None
    allowed, refusals = [], []
    for info in infos:
        address = str(info[4][0])
        reason = address_refusal(address, allow_private)
        if reason is None:
            allowed.append(address)
        else:
            refusals.append(reason)
    if not allowed:
        raise FetchRefused(f"refused: host {host!r} resolves to {refusals[0]}")
    return list(dict.fromkeys(allowed))


def check_url(url: str, allow_private: bool) -> None:
    """Refuse a URL before any connection: its scheme, and what its host resolves to."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in SCHEMES:
        scheme = parts.scheme or "(none)"
        raise FetchRefused(f"refused: scheme {scheme!r}; only http and https URLs are fetched")
    if not parts.hostname:
        raise FetchRefused("refused: the URL has no host")
    try:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        raise FetchRefused("refused: the URL's port is not a number in range") from None
    resolve_vetted(parts.hostname, port, allow_private)


class _VettingBackend(httpcore.SyncBackend):
    """Connects only to an address it has just checked: the host is resolved here, each address
    judged, and the socket opened to an allowed one (TLS still verifies and names the host)."""

    def __init__(self, allow_private: bool) -> None:
        self.allow_private = allow_private

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        last: Exception | None = None
        for address in resolve_vetted(host, port, self.allow_private):
            try:
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:  # try the host's next address, as browsers do
                last = exc
        assert last is not None
        raise last


class VettedTransport(httpx.HTTPTransport):
    """httpx's transport with its connection pool on `_VettingBackend`. (httpx does not take a
    network backend, so the pool it built is replaced with one made the same way.)"""

    def __init__(self, allow_private: bool, max_connections: int) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=5.0,
            network_backend=_VettingBackend(allow_private),
        )


# --- the cache -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    path: Path
    sha256: str
    etag: str | None
    last_modified: str | None


class FetchCache:
    """Bodies keyed by the sha256 of their URL (`<key>.img`) with what revalidates them (`<key>.json`)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _key(self, url: str) -> str:
        return hashlib.sha256(url.encode("utf-8")).hexdigest()

    def body_path(self, url: str) -> Path:
        key = self._key(url)
        return self.root / key[:2] / f"{key}.img"

    def get(self, url: str) -> _Entry | None:
        body = self.body_path(url)
        try:
            meta = json.loads(body.with_suffix(".json").read_text())
            if meta.get("url") != url or not body.is_file():
                return None
            return _Entry(body, meta["sha256"], meta.get("etag"), meta.get("last_modified"))
        except (OSError, ValueError, KeyError):
            return None

    def put(self, url: str, data: bytes, etag: str | None, last_modified: str | None) -> _Entry:
        body = self.body_path(url)
        body.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(data).hexdigest()
        meta = {"url": url, "sha256": digest, "etag": etag, "last_modified": last_modified, "size": len(data)}
        _write_atomic(body, data)  # body first: metadata never points at a half-written body
        _write_atomic(body.with_suffix(".json"), json.dumps(meta).encode())
        return _Entry(body, digest, etag, last_modified)


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".partial-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --- fetching --------------------------------------------------------------------------------


def cache_dir(settings: Settings) -> Path:
    """Where downloaded images are kept: `fetch.cache_dir`, else `cache/fetch` under the home."""
    return settings.fetch.cache_dir or settings.home / "cache" / "fetch"


class Fetcher:
    """Fetches URLs into the cache with the limits of `settings.fetch`; safe to share between threads."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cache = FetchCache(cache_dir(settings))
        self.client = httpx.Client(
            transport=VettedTransport(settings.fetch.allow_private, settings.fetch.concurrency),
            timeout=httpx.Timeout(
                settings.fetch.read_timeout_s, connect=settings.fetch.connect_timeout_s, pool=None
            ),
            follow_redirects=False,
            trust_env=False,
            headers={"User-Agent": "clipsearch-catalog/1 (+https://github.com/clipsearch)"},
        )

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    def fetch_all(self, urls: Sequence[str]) -> dict[str, Fetched]:
        """Every distinct URL, `fetch.concurrency` at a time; url -> Fetched."""
        distinct = list(dict.fromkeys(urls))
        if not distinct:
            return {}
        workers = self.settings.fetch.concurrency
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fetch") as pool:
            return dict(zip(distinct, pool.map(self.fetch, distinct), strict=True))

    def fetch(self, url: str) -> Fetched:
        """One URL, with retries: the cached file, or why not."""
        cached = self.cache.get(url)
        attempts = self.settings.fetch.retries + 1
        for attempt in range(attempts):
            try:
                return self._attempt(url, cached)
            except (FetchRefused, _Failed) as exc:
                return Fetched(url, reason=str(exc))
            except _Retryable as exc:
                if attempt + 1 == attempts:
                    tries = f" after {attempts} tries" if attempts > 1 else ""
                    return Fetched(url, reason=f"{exc}{tries}")
                time.sleep(exc.wait if exc.wait is not None else self.settings.fetch.backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    def _attempt(self, url: str, cached: _Entry | None) -> Fetched:
        deadline = time.monotonic() + self.settings.fetch.deadline_s
        current = url
        for _ in range(self.settings.fetch.max_redirects + 1):
            check_url(current, self.settings.fetch.allow_private)
            headers = {}
            if cached is not None and current == url:
                if cached.etag:
                    headers["If-None-Match"] = cached.etag
                if cached.last_modified:
                    headers["If-Modified-Since"] = cached.last_modified
            try:
                with self.client.stream("GET", current, headers=headers) as response:
                    location = response.headers.get("location")
                    if response.status_code in _REDIRECTS and location:  # checked before it is followed
                        current = urljoin(current, location)
                        continue
                    if response.status_code == 304 and cached is not None:
                        return Fetched(url, cached.path, cached.sha256, downloaded=False)
                    self._check_status(response)
                    data = self._read_capped(response, deadline)
                    self._check_image(data)
                    entry = self.cache.put(
                        url, data, response.headers.get("etag"), response.headers.get("last-modified")
                    )
                    return Fetched(url, entry.path, entry.sha256, downloaded=True)
            except httpx.TimeoutException as exc:
                raise _Retryable(f"timed out ({_timeout_kind(exc)})") from None
            except httpx.TransportError as exc:  # refused, reset, closed mid-body...
                raise _Retryable(f"connection failed: {exc or type(exc).__name__}") from None
        raise _Failed(f"more than {self.settings.fetch.max_redirects} redirects")

    def _check_status(self, response: httpx.Response) -> None:
        status = response.status_code
        if status in _RETRY_STATUSES:
            raise _Retryable(f"HTTP {status}", _retry_after(response.headers.get("retry-after")))
        if status != 200:
            raise _Failed(f"HTTP {status}")

    def _read_capped(self, response: httpx.Response, deadline: float) -> bytes:
        cap = self.settings.fetch.max_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise _Failed(f"larger than {cap} bytes (Content-Length {declared}; CLIPSEARCH_FETCH_MAX_BYTES)")
        chunks, size = [], 0
        for chunk in response.iter_bytes():  # as they arrive: a trickle must reach the deadline check
            size += len(chunk)
            if size > cap:
                raise _Failed(f"larger than {cap} bytes (CLIPSEARCH_FETCH_MAX_BYTES)")
            if time.monotonic() > deadline:
                raise _Retryable(f"download took longer than {self.settings.fetch.deadline_s:g} s")
            chunks.append(chunk)
        return b"".join(chunks)

    def _check_image(self, data: bytes) -> None:
        """An image within the pixel limit, from its header (the decode worker decodes it fully)."""
        try:
            width, height = image_size(data)
        except ImageDecodeError as exc:
            raise _Failed(str(exc)) from None
        limit = self.settings.max_image_pixels
        if width * height > limit:
            raise _Failed(
                f"image too large: {width}x{height} pixels exceeds the limit of {limit} "
                "(CLIPSEARCH_MAX_IMAGE_PIXELS)"
            )


def _timeout_kind(exc: httpx.TimeoutException) -> str:
    if isinstance(exc, httpx.ConnectTimeout):
        return "connect"
    if isinstance(exc, httpx.ReadTimeout):
        return "read"
    return "write" if isinstance(exc, httpx.WriteTimeout) else "pool"


def _retry_after(value: str | None) -> float | None:
    """A Retry-After header in seconds (a number or an HTTP date), capped; None when absent or odd."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), _MAX_RETRY_AFTER_S)
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, min(when.timestamp() - time.time(), _MAX_RETRY_AFTER_S))
    return None

