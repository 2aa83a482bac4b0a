"""A real HTTP server on loopback that misbehaves on purpose, for the URL fetcher's tests and bench.

Routes (NAME is a file in the folder the server serves):
    /files/NAME          the file, with ETag and Last-Modified; 304 on a matching If-None-Match or
                         If-Modified-Since
    /lastmod/NAME        the file with Last-Modified only;  /plain/NAME: no validators at all
    /flaky/N/NAME        500 for the first N requests of that path, then the file
    /busy/NAME           429 (Retry-After: 0) once, then the file
    /status/CODE         that status, no body
    /slow                waits `slow_s` before answering (longer than a read timeout)
    /trickle             a large Content-Length, then one byte every 0.2 s forever
    /endless             an image-looking body that never ends (no Content-Length)
    /html                an HTML page
    /redirect?to=URL     302 to URL
    /bomb.png            a small PNG whose header claims 50000 x 50000 pixels

Every response waits `latency` seconds first (the bench's 50 ms per image); with `gather` N, requests
are answered in groups of N by arrival, each held until its group's last one has arrived (so N are in
flight at once whatever the machine's speed; a group never completed is let go after 60 s). The
server counts requests and full downloads per path, and the most requests it had in flight at once.
"""

from __future__ import annotations

import hashlib
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from email.utils import formatdate, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header says width x height, with one tiny compressed row: a decompression bomb's
    header without the bomb (a real one would take the test seconds to build)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(
        b"IEND", b""
    )


class FetchServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # socketserver's default of 5 drops concurrent SYNs (retried after 1 s)

    def __init__(self, root: Path, latency: float = 0.0, slow_s: float = 5.0, gather: int = 0) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root, self.latency, self.slow_s, self.gather = root, latency, slow_s, gather
        self.arrived = 0
        self.groups: dict[int, threading.Event] = {}
        self.requests: Counter[str] = Counter()  # path -> requests
        self.downloads: Counter[str] = Counter()  # path -> 200 answers with a body
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def file_url(self, name: str, route: str = "files") -> str:
        return f"{self.url}/{route}/{name}"

    def total_downloads(self) -> int:
        with self.lock:
            return sum(self.downloads.values())


class _Handler(BaseHTTPRequestHandler):
    server: FetchServer

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        server = self.server
        path = urlsplit(self.path).path
        with server.lock:
            server.requests[path] += 1
            count = server.requests[path]
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
            place, server.arrived = server.arrived, server.arrived + 1
            group = None
            if server.gather:
                group = server.groups.setdefault(place // server.gather, threading.Event())
        try:
            if group is not None:
                if place % server.gather == server.gather - 1:
                    group.set()
                group.wait(60)
            if server.latency:
                time.sleep(server.latency)
            self._route(path, count)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a byte cap, a deadline): that is the point of those routes
        finally:
            with server.lock:
                server.in_flight -= 1

    def _route(self, path: str, count: int) -> None:
        parts = path.strip("/").split("/")
        route, rest = parts[0], parts[1:]
        if route in ("files", "lastmod", "plain") and rest:
            self._file(path, "/".join(rest), etag=route == "files", last_modified=route != "plain")
        elif route == "flaky" and len(rest) >= 2:
            if count <= int(rest[0]):
                self._answer(500, b"try again")
            else:
                self._file(path, "/".join(rest[1:]), etag=True, last_modified=True)
        elif route == "busy" and rest:
            if count == 1:
                self._answer(429, b"slow down", {"Retry-After": "0"})
            else:
                self._file(path, "/".join(rest), etag=True, last_modified=True)
        elif route == "status" and rest:
            self._answer(int(rest[0]), b"")
        elif route == "slow":
            time.sleep(self.server.slow_s)
            self._answer(200, b"late", {"Content-Type": "image/jpeg"})
        elif route == "trickle":
            self._headers(200, {"Content-Type": "image/jpeg", "Content-Length": str(10**6)})
            while True:
                self.wfile.write(b"\xff")
                self.wfile.flush()
                time.sleep(0.2)
        elif route == "endless":
            self._headers(200, {"Content-Type": "image/jpeg"})
            self.wfile.write(b"\xff\xd8\xff\xe0")
            block = b"\0" * 65536
            while True:
                self.wfile.write(block)
        elif route == "html":
            page = b"<!doctype html><html><body><h1>Not found, but 200</h1></body></html>"
            self._answer(200, page, {"Content-Type": "text/html"})
        elif route == "redirect":
            target = parse_qs(urlsplit(self.path).query)["to"][0]
            self._answer(302, b"", {"Location": target})
        elif route == "bomb.png":
            self._answer(200, png_claiming(50_000, 50_000), {"Content-Type": "image/png"})
        else:
            self._answer(404, b"no such route")

    def _file(self, path: str, name: str, etag: bool, last_modified: bool) -> None:
        file = self.server.root / name
        if not file.is_file():
            self._answer(404, b"no such file")
            return
        data = file.read_bytes()
        tag = f'"{hashlib.sha256(data).hexdigest()[:16]}"'
        mtime = int(file.stat().st_mtime)
        headers = {"Content-Type": "image/jpeg"}
        if etag:
            headers["ETag"] = tag
        if last_modified:
            headers["Last-Modified"] = formatdate(mtime, usegmt=True)
        if etag and self.headers.get("If-None-Match") == tag:
            self._answer(304, b"", headers)
            return
        since = self.headers.get("If-Modified-Since")
        if last_modified and since and not (etag and self.headers.get("If-None-Match")):
            if mtime <= int(parsedate_to_datetime(since).timestamp()):
                self._answer(304, b"", headers)
                return
        with self.server.lock:
            self.server.downloads[path] += 1
        self._answer(200, data, headers)

    def _headers(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()

    def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self._headers(status, {**(headers or {}), "Content-Length": str(len(body))})
        if body and status != 304:
            self.wfile.write(body)


@contextmanager
def fetch_server(root: Path, latency: float = 0.0, slow_s: float = 5.0, gather: int = 0
                 ) -> Iterator[FetchServer]:
    """The server in a background thread for the duration of the block."""
    server = FetchServer(root, latency, slow_s, gather)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
