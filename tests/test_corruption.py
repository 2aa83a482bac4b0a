"""Corruption is detected and reported, never served (issue 18, point 4), through the real CLI and server.

Specification:
- a clean collection checks ok: `clipsearch check` exits 0 with one line, `--json` says `ok: true`;
- 256 KB of random bytes written into the edge store's vector chunk: `search` refuses to serve the
  impossible scores (exit 11, one line naming the collection and `clipsearch check`); `check` exits 11
  with one line saying what is wrong and what to do (restore a snapshot, or re-index these items);
  `check --json` lists each problem with its ids and still exits 11;
- the server answers the same search with a 503 and the sentence, and `GET .../check` reports it;
- `check --repair` drops the corrupt points, the next `index` embeds their files again, and the
  collection checks ok and searches as before the damage.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest

from indexer.errors import ERROR_KINDS, ErrorKind
from indexer.ingest.pipeline import index_sources
from indexer.models.loading import ClipModel
from indexer.stores.check import vector_problem
from search_api import create_app
from tests.clirun import cli_home, run, run_json
from tests.helpers import copy_photos, serve

CORRUPT = ERROR_KINDS[ErrorKind.CORRUPT]


def damage_vectors(settings_home: Path) -> Path:
    """Write 256 KB of random bytes at the start of the collection's (one) vector chunk."""
    chunks = sorted((settings_home / "collections" / "default" / "shard").glob(
        "segments/*/vector_storage-*/vectors/chunk_*.mmap"))
    assert chunks, "no vector chunk found"
    with chunks[0].open("r+b") as chunk:
        chunk.write(os.urandom(256 << 10))
    return chunks[0]


def test_a_damaged_vector_chunk_is_reported_never_served_and_repaired(
    tmp_path: Path, imagenet_dir: Path, tiny_checkpoint: Path, tiny_model: ClipModel
) -> None:
    photos = copy_photos(imagenet_dir, tmp_path / "photos", 16)
    home = tmp_path / "home"
    with cli_home(home, tiny_checkpoint) as settings:
        index_sources(settings, [photos], model=tiny_model, progress=False)
        clean = run("check")
        assert clean.stdout == "collection 'default' is ok: 16 points checked\n" and clean.stderr == ""
        report = run_json("check")
        assert report["ok"] is True and report["points"] == 16 and report["problems"] == []
        before = run_json("search", "a bird", "-k", "5")["results"]
        assert all(-1.0 <= hit["score"] <= 1.0 for hit in before)

        damage_vectors(home)
        search = run("search", "a bird", "-k", "5", "--json", check=False)
        assert search.returncode == CORRUPT.exit_code and search.stdout == ""
        assert search.stderr.startswith("error: collection 'default' is corrupt: a search scored ")
        assert "clipsearch check --collection default" in search.stderr and search.stderr.count("\n") == 1

        checked = run("check", check=False)
        assert checked.returncode == CORRUPT.exit_code and checked.stdout == ""
        assert checked.stderr.startswith("error: collection 'default' is corrupt: ")
        assert "stored vectors are not" in checked.stderr and checked.stderr.count("\n") == 1
        assert "clipsearch restore" in checked.stderr and "--repair" in checked.stderr
        as_json = run("check", "--json", check=False)
        assert as_json.returncode == CORRUPT.exit_code
        found = json.loads(as_json.stdout)
        assert found["ok"] is False and found["points"] == 16
        damaged = [p for p in found["problems"] if p["kind"] == "vectors"]
        assert damaged and sum(p["count"] for p in damaged) == 16  # 256 KB covers every 32-d vector
        assert all(p["severity"] == "corrupt" and p["ids"] and "restore" in p["advice"] for p in damaged)

        # The server: the same search is a 503 with the sentence; the check route reports it.
        app = create_app(settings, model=tiny_model)
        with serve(app) as url, httpx.Client(base_url=url, timeout=60) as client:
            answer = client.post("/v1/search", json={"text": "a bird", "k": 5})
            assert answer.status_code == CORRUPT.http_status
            assert answer.json()["detail"].startswith("collection 'default' is corrupt")
            route = client.get("/v1/collections/default/check")
            assert route.status_code == 200 and route.json()["ok"] is False
            assert route.json()["line"] == found["line"]

        repaired = run("check", "--repair")
        assert "dropped 16 corrupt points" in repaired.stdout
        assert run_json("index", str(photos))["embedded"] == 16
        assert run_json("check")["ok"] is True
        assert run_json("search", "a bird", "-k", "5")["results"] == before


@pytest.mark.parametrize(
    ("vector", "why"),
    [
        ([0.6, 0.8, 0.0], None),
        ([0.6, 0.8, float("nan")], "are not finite (NaN or infinity)"),
        ([float("inf"), 0.0, 0.0], "are not finite (NaN or infinity)"),
        ([3e38, 3e38, 0.0], "are not unit-norm"),
        ([0.5, 0.5, 0.0], "are not unit-norm"),
        ([1.0, 0.0], "have 2 dimensions instead of 3"),
    ],
)
def test_what_a_stored_vector_may_not_be(vector: list[float], why: str | None) -> None:
    import numpy as np

    assert vector_problem(np.asarray(vector, dtype=np.float32), 3) == why
