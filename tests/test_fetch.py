"""Images by URL (indexer.ingest.fetch) against a real loopback server that misbehaves on purpose
(tests/fetch_server.py): retries, timeouts, byte caps, content checks, the revalidated cache,
bounded concurrency, and the refusal of loopback, private and metadata-service addresses."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from indexer.ingest.fetch import Fetcher, FetchRefused, VettedTransport, address_refusal, check_url
from indexer.settings import Settings
from tests.fetch_server import FetchServer, fetch_server
from tests.helpers import require_imagenet


def fetch_settings(home: Path, **fetch: Any) -> Settings:
    """Time limits no loopback answer comes near on a busy machine; the tests of limits set their own,
    each against a route that only that limit can end."""
    values = {"allow_private": True, "retries": 2, "backoff_s": 0.01, "read_timeout_s": 30.0,
              "connect_timeout_s": 30.0, "deadline_s": 60.0, **fetch}
    return Settings(home=home, fetch=values)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "served"
    root.mkdir()
    for photo in sorted(require_imagenet().glob("*.JPEG"))[:24]:
        shutil.copy2(photo, root / photo.name)
    return root


@pytest.fixture
def server(photos: Path) -> Iterator[FetchServer]:
    with fetch_server(photos, slow_s=3.0) as running:
        yield running


def names(root: Path, count: int) -> list[str]:
    return sorted(p.name for p in root.iterdir())[:count]


# --- the misbehaving server ---------------------------------------------------------------------


def test_a_good_image_is_cached_and_a_rerun_downloads_nothing_unchanged(tmp_path, server, photos) -> None:
    settings = fetch_settings(tmp_path / "home")
    urls = [server.file_url(n) for n in names(photos, 5)] + [server.file_url(n, "lastmod") for n in
                                                               names(photos, 5)[:2]]
    with Fetcher(settings) as fetcher:
        first = fetcher.fetch_all(urls)
    assert all(f.ok and f.downloaded for f in first.values()), first
    assert server.total_downloads() == 7
    for url, fetched in first.items():
        name = url.rsplit("/", 1)[1]
        assert fetched.path.read_bytes() == (photos / name).read_bytes()
        assert fetched.path.is_relative_to(settings.home / "cache" / "fetch")
    with Fetcher(settings) as fetcher:  # a new process: the cache is on disk
        second = fetcher.fetch_all(urls)
    assert server.total_downloads() == 7, "ETag / Last-Modified revalidation downloads nothing again"
    assert all(f.ok and not f.downloaded for f in second.values())
    assert {u: f.sha256 for u, f in second.items()} == {u: f.sha256 for u, f in first.items()}

    changed = names(photos, 5)[0]  # new content, new ETag: downloaded again, new hash
    (photos / changed).write_bytes((photos / names(photos, 6)[5]).read_bytes())
    with Fetcher(settings) as fetcher:
        third = fetcher.fetch(server.file_url(changed))
    assert third.downloaded and third.sha256 != first[server.file_url(changed)].sha256


def test_without_validators_a_rerun_downloads_again(tmp_path, server, photos) -> None:
    url = server.file_url(names(photos, 1)[0], "plain")
    with Fetcher(fetch_settings(tmp_path / "home")) as fetcher:
        assert fetcher.fetch(url).downloaded and fetcher.fetch(url).downloaded
    assert server.downloads["/plain/" + names(photos, 1)[0]] == 2


def test_404_fails_at_once_and_500_then_200_succeeds_after_retrying(tmp_path, server, photos) -> None:
    name = names(photos, 1)[0]
    with Fetcher(fetch_settings(tmp_path / "home", retries=3)) as fetcher:
        missing = fetcher.fetch(f"{server.url}/status/404")
        flaky = fetcher.fetch(f"{server.url}/flaky/2/{name}")
        busy = fetcher.fetch(f"{server.url}/busy/{name}")
        broken = fetcher.fetch(f"{server.url}/flaky/9/{name}")
    assert missing.reason == "HTTP 404" and server.requests["/status/404"] == 1, "no retry on a 404"
    assert flaky.ok and server.requests[f"/flaky/2/{name}"] == 3
    assert busy.ok and server.requests[f"/busy/{name}"] == 2, "429 with Retry-After is retried"
    assert broken.reason == "HTTP 500 after 4 tries" and server.requests[f"/flaky/9/{name}"] == 4


def test_slow_trickling_and_endless_answers_are_cut_off(tmp_path, server) -> None:
    # Each limit alone against what only it can end: /slow answers after 3 s (the read timeout ends the
    # wait long before), /trickle sends a byte every 0.2 s forever (the deadline ends it; a read never
    # waits 30 s), /endless never ends (the byte cap ends it).
    reads = fetch_settings(tmp_path / "home", read_timeout_s=0.3, retries=1)
    downloads = fetch_settings(tmp_path / "home", deadline_s=1.0, retries=1)
    sizes = fetch_settings(tmp_path / "home", max_bytes=1_000_000, retries=1)
    with Fetcher(reads) as fetcher:
        slow = fetcher.fetch(f"{server.url}/slow")
    with Fetcher(downloads) as fetcher:
        trickle = fetcher.fetch(f"{server.url}/trickle")
    with Fetcher(sizes) as fetcher:  # an endless answer that were not cut off would hang the test
        endless = fetcher.fetch(f"{server.url}/endless")
    assert slow.reason == "timed out (read) after 2 tries" and server.requests["/slow"] == 2
    assert trickle.reason == "download took longer than 1 s after 2 tries"
    assert endless.reason == "larger than 1000000 bytes (CLIPSEARCH_FETCH_MAX_BYTES)"
    assert server.requests["/endless"] == 1, "a byte cap is final: no retry"


def test_content_is_checked_before_it_is_cached(tmp_path, server) -> None:
    settings = fetch_settings(tmp_path / "home")
    with Fetcher(settings) as fetcher:
        html = fetcher.fetch(f"{server.url}/html")
        bomb = fetcher.fetch(f"{server.url}/bomb.png")
    assert html.reason == "not an image file"
    assert bomb.reason.startswith("image too large: 50000x50000 pixels exceeds the limit of 100000000")
    cache = settings.home / "cache" / "fetch"
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))


def test_a_size_above_the_cap_is_refused_from_its_content_length(tmp_path, server, photos) -> None:
    name = names(photos, 1)[0]
    size = (photos / name).stat().st_size
    with Fetcher(fetch_settings(tmp_path / "home", max_bytes=size - 1)) as fetcher:
        fetched = fetcher.fetch(server.file_url(name))
    cap = size - 1
    assert fetched.reason == f"larger than {cap} bytes (Content-Length {size}; CLIPSEARCH_FETCH_MAX_BYTES)"


def test_concurrency_is_bounded_and_overlaps_latency(tmp_path, photos) -> None:
    with fetch_server(photos, gather=6) as server:  # answered six by six, as each six has arrived
        urls = [server.file_url(n) for n in names(photos, 24)]
        with Fetcher(fetch_settings(tmp_path / "home", concurrency=6)) as fetcher:
            done = fetcher.fetch_all(urls)
    assert all(f.ok for f in done.values())
    assert server.max_in_flight == 6  # six at a time overlapped, never more (no timed bound: noisy)


# --- what may be fetched at all -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "allowed_by_default", "allowed_with_private"),
    [
        ("93.184.216.34", True, True),
        ("2606:2800:220:1:248:1893:25c8:1946", True, True),
        ("127.0.0.1", False, True),
        ("127.8.9.10", False, True),
        ("::1", False, True),
        ("10.1.2.3", False, True),
        ("172.16.0.1", False, True),
        ("192.168.1.1", False, True),
        ("fd00::1", False, True),
        ("100.64.0.1", False, True),  # shared address space (carrier NAT)
        ("169.254.169.254", False, False),  # the cloud metadata service
        ("fe80::1", False, False),
        ("fe80::1%eth0", False, False),
        ("0.0.0.0", False, False),
        ("0.1.2.3", False, False),
        ("::", False, False),
        ("224.0.0.1", False, False),
        ("ff02::1", False, False),
        ("240.0.0.1", False, False),
        ("::ffff:127.0.0.1", False, True),  # IPv4-mapped IPv6 is judged by its IPv4 address
        ("::ffff:169.254.169.254", False, False),
        ("::ffff:93.184.216.34", True, True),
        ("64:ff9b::a9fe:a9fe", False, False),  # NAT64 of 169.254.169.254
        ("2002:a9fe:a9fe::1", False, False),  # 6to4 of 169.254.169.254
        ("2002:7f00:1::1", False, True),  # 6to4 of 127.0.0.1
    ],
)
def test_addresses(address: str, allowed_by_default: bool, allowed_with_private: bool) -> None:
    assert (address_refusal(address) is None) == allowed_by_default
    assert (address_refusal(address, allow_private=True) is None) == allowed_with_private


def test_by_default_loopback_and_the_metadata_service_are_refused_before_connecting(tmp_path, server,
                                                                                    photos) -> None:
    name = names(photos, 1)[0]
    port = server.server_address[1]
    settings = fetch_settings(tmp_path / "home", allow_private=False)
    with Fetcher(settings) as fetcher:
        loopback = fetcher.fetch(server.file_url(name))
        by_name = fetcher.fetch(f"http://localhost:{port}/files/{name}")
        mapped = fetcher.fetch(f"http://[::ffff:127.0.0.1]:{port}/files/{name}")
        metadata = fetcher.fetch("http://169.254.169.254/latest/meta-data/")
        zero = fetcher.fetch(f"http://0.0.0.0:{port}/files/{name}")
        decimal = fetcher.fetch(f"http://2130706433:{port}/files/{name}")  # 127.0.0.1 spelled as a number
    assert loopback.reason == ("refused: host '127.0.0.1' resolves to 127.0.0.1 is a loopback address; "
                               "set CLIPSEARCH_FETCH_ALLOW_PRIVATE=true to fetch from intranet hosts")
    assert "loopback address" in by_name.reason and "loopback address" in mapped.reason
    assert metadata.reason == ("refused: host '169.254.169.254' resolves to 169.254.169.254 is a link-local "
                               "address (such as the cloud metadata service)")
    assert "unspecified address" in zero.reason and "loopback address" in decimal.reason
    assert sum(server.requests.values()) == 0, "nothing reached the server"


def test_allow_private_from_the_environment(tmp_path, server, photos, monkeypatch) -> None:
    monkeypatch.setenv("CLIPSEARCH_FETCH_ALLOW_PRIVATE", "true")
    settings = Settings(home=tmp_path / "home")
    assert settings.fetch.allow_private
    with Fetcher(settings) as fetcher:
        assert fetcher.fetch(server.file_url(names(photos, 1)[0])).ok
        assert "link-local" in fetcher.fetch("http://169.254.169.254/latest/meta-data/").reason


def test_a_redirect_is_checked_like_the_first_url(tmp_path, server, photos) -> None:
    name = names(photos, 1)[0]
    with Fetcher(fetch_settings(tmp_path / "home")) as fetcher:  # loopback allowed, link-local never
        to_metadata = fetcher.fetch(f"{server.url}/redirect?to=http://169.254.169.254/latest/meta-data/")
        to_file = fetcher.fetch(f"{server.url}/redirect?to=file:///etc/passwd")
        followed = fetcher.fetch(f"{server.url}/redirect?to=/files/{name}")
    assert "169.254.169.254 is a link-local address" in to_metadata.reason
    assert to_file.reason == "refused: scheme 'file'; only http and https URLs are fetched"
    assert followed.ok and followed.path.read_bytes() == (photos / name).read_bytes()



@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.jpg", "gopher://x/",
                                 "data:image/png;base64,AAAA", "//example.com/a.jpg", "http:///a.jpg"])
def test_other_schemes_and_hostless_urls_are_refused(url: str) -> None:
    with pytest.raises(FetchRefused):
        check_url(url, allow_private=True)


def test_the_connection_itself_goes_only_to_a_vetted_address(server, photos) -> None:
    """Below the URL check: the transport resolves and judges the address it connects to, so a
    name whose DNS answer changes after the check (rebinding) still cannot reach loopback."""
    import httpx

    port = server.server_address[1]
    name = names(photos, 1)[0]
    with httpx.Client(transport=VettedTransport(allow_private=False, max_connections=2)) as client:
        with pytest.raises(FetchRefused, match="loopback"):
            client.get(f"http://localhost:{port}/files/{name}")
    with httpx.Client(transport=VettedTransport(allow_private=True, max_connections=2)) as client:
        assert client.get(f"http://localhost:{port}/files/{name}").status_code == 200
    assert server.requests[f"/files/{name}"] == 1


def test_environment_proxies_are_not_used(tmp_path, server, photos, monkeypatch) -> None:
    """A proxy would resolve the host itself, past our check."""
    monkeypatch.setenv("HTTP_PROXY", "http://10.255.255.1:3128")
    monkeypatch.setenv("http_proxy", "http://10.255.255.1:3128")
    with Fetcher(fetch_settings(tmp_path / "home")) as fetcher:
        assert fetcher.fetch(server.file_url(names(photos, 1)[0])).ok


def test_an_unresolvable_host_is_a_reason(tmp_path) -> None:
    with Fetcher(fetch_settings(tmp_path / "home", retries=0)) as fetcher:
        fetched = fetcher.fetch("http://no-such-host.invalid/a.jpg")
    assert fetched.reason.startswith("cannot resolve host 'no-such-host.invalid'")
