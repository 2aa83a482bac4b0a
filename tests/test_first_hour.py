"""The first hour of a new user (issue 12), through the real CLI and a real `clipsearch serve`.

Specification:
- commands that read or extend a collection use the model recorded with it: with the default model
  settings (ViT-B-32 / laion2b, not downloadable here) `index` and `classify` on a collection built
  with another model just work; a missing model fails in seconds with one line, no retry storm;
- `serve` opens its default collection at start: `/readyz` is 200 once the model is warm, and a
  second `index` is refused at once with advice to use `serve --watch`; while it runs, `search` and
  `status` go through it; failed files are shown by `GET /v1/collections/{c}/status`;
- the server serves every collection of its store (`collection` in requests, the default marked);
- `/docs` works offline (Swagger UI from a packaged copy) and HEAD is allowed where GET is.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from indexer.settings import Settings
from tests.clirun import CLI, REPO, run, run_json, wait_for
from tests.helpers import copy_photos, settings_env


@pytest.fixture
def home(tmp_path: Path, tiny_checkpoint: Path, imagenet_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A collection `default` of 12 photos and one broken file, and `other` of 4 photos, built with the
    tiny model; afterwards the environment names no model at all, as for a user who indexed once."""
    for name, value in settings_env(tmp_path / "home", tiny_checkpoint).items():
        monkeypatch.setenv(name, value)
    photos = copy_photos(imagenet_dir, tmp_path / "photos", 12)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    run("index", str(photos))
    run("index", str(copy_photos(imagenet_dir, tmp_path / "other", 4)), "--collection", "other")
    monkeypatch.delenv("CLIPSEARCH_MODEL")
    monkeypatch.delenv("CLIPSEARCH_PRETRAINED")
    return tmp_path


def test_index_and_classify_use_the_recorded_model(home: Path, imagenet_dir: Path) -> None:
    photo = sorted((home / "photos").glob("*.JPEG"))[0]
    labels = run_json("classify", str(photo), "--labels", "fish,bird")
    assert [x["label"] for x in labels[0]["labels"]] and sum(
        x["score"] for x in labels[0]["labels"]
    ) == pytest.approx(1.0, abs=1e-5)
    for extra in sorted(imagenet_dir.glob("*.JPEG"))[12:14]:
        (home / "photos" / extra.name).write_bytes(extra.read_bytes())
    report = run_json("index", str(home / "photos"))
    assert (report["embedded"], report["unchanged"]) == (2, 12)  # the recorded model: no other was loaded


def test_a_missing_model_fails_with_one_line_before_any_download(home: Path) -> None:
    # A new collection with the default model, which is not downloaded here. The pre-check refuses it:
    # no download is tried (no "Retrying"), so it ends well inside the guard against a hang.
    failed = run("index", str(home / "photos"), "--collection", "fresh", check=False, timeout=120)
    assert failed.returncode == 7, failed.stderr
    lines = [line for line in failed.stderr.splitlines() if line.strip() and "Retrying" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--pretrained" in lines[0]
    assert "Retrying" not in failed.stderr


@pytest.fixture
def server(home: Path) -> Iterator[str]:
    """`clipsearch serve --port 0` over the home; its URL once it has left its address."""
    process = subprocess.Popen(
        [*CLI, "serve", "--port", "0"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    settings = Settings()
    address = settings.collection_dir("default") / "server.json"
    try:
        wait_for(lambda: address.exists() or process.poll() is not None, 90, "the server to start")
        assert process.poll() is None, process.communicate()[1]
        from indexer.locking import server_address

        url = server_address(settings.collection_dir("default"))
        assert url is not None
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert not address.exists(), "the server left its address behind"


def test_the_server_holds_its_collection_from_the_start(home: Path, server: str) -> None:
    # The address is left once the collection is open and its model warm: ready, before any query.
    assert httpx.get(f"{server}/readyz", timeout=10).json() == {"status": "ready", "reason": None}
    refused = run("index", str(home / "photos"), check=False)
    assert refused.returncode == 5 and "serve --watch" in refused.stderr
    assert refused.stderr.count("\n") == 1


def test_search_and_status_go_through_the_server(home: Path, server: str) -> None:
    direct = httpx.post(f"{server}/v1/search", json={"text": "a bird", "k": 3}, timeout=30).json()["results"]
    # The CLI's hits are the API's, in the CLI's shape with or without a server: id, uri, score, metadata.
    assert run_json("search", "a bird", "-k", "3")["results"] == [
        {key: hit[key] for key in ("id", "uri", "score", "metadata")} for hit in direct]
    photo = sorted((home / "photos").glob("*.JPEG"))[0]
    by_image = run_json("search", "--image", str(photo), "-k", "1")["results"]
    assert by_image[0]["uri"] == str(photo)
    status = run_json("status")
    assert status["count"] == 12 and [f["uri"] for f in status["failed"]] == [
        str(home / "photos" / "broken.jpg")
    ]
    assert status == httpx.get(f"{server}/v1/collections/default/status", timeout=30).json()
    assert run_json("status", "--collection", "other")["count"] == 4  # not held: opened directly


def test_every_collection_is_served(home: Path, server: str) -> None:
    with httpx.Client(base_url=server, timeout=30) as client:
        listed = {c["name"]: c for c in client.get("/v1/collections").json()["collections"]}
        assert listed["default"]["default"] and not listed["other"]["default"]
        assert (listed["default"]["count"], listed["other"]["count"]) == (12, 4)
        hits = client.post("/v1/search", json={"text": "a bird", "k": 10, "collection": "other"}).json()
        assert len(hits["results"]) == 4
        assert all(Path(h["uri"]).parent == home / "other" for h in hits["results"])
        item = hits["results"][0]["id"]
        assert client.get(f"/v1/images/{item}").status_code == 404  # not in the default collection
        image = client.get(f"/v1/images/{item}", params={"collection": "other"})
        assert image.status_code == 200 and image.content == Path(hits["results"][0]["uri"]).read_bytes()
        head = client.head(f"/v1/images/{item}", params={"collection": "other"})
        assert head.status_code == 200 and head.content == b""
        assert int(head.headers["content-length"]) == len(image.content)
        metadata = client.get(f"/v1/collections/other/items/{item}").json()
        assert metadata["uri"] == hits["results"][0]["uri"] and metadata["metadata"]["width"] > 0
        missing = client.post("/v1/search", json={"text": "a bird", "collection": "nosuch"})
        assert missing.status_code == 404 and "nosuch" in missing.json()["detail"]


def test_docs_work_offline(server: str) -> None:
    page = httpx.get(f"{server}/docs", timeout=30)
    assert page.status_code == 200
    assert re.findall(r'(?:src|href)="(https?://[^"]+)"', page.text) == []  # nothing from a CDN
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f"/docs/assets/{asset}" in page.text
        served = httpx.get(f"{server}/docs/assets/{asset}", timeout=30)
        assert served.status_code == 200 and len(served.content) > 10_000
    assert httpx.get(f"{server}/docs/assets/nosuch.js", timeout=30).status_code == 404
