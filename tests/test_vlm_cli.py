"""`clipsearch search --rerank [--top-n N] [--mode M] [--explain]`, the real command in a subprocess: in
its own process (the library's VLM stage, CLIPSEARCH_VLM_URL) and through the server that holds the
collection (the server's VLM), against the OpenAI-compatible stand-in of tests/vlm_server.py that
recognises each real photo it is shown."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from indexer.models.loading import ClipModel
from indexer.settings import Settings
from tests.clirun import CLI, REPO, cli_home, run, run_json, wait_for
from tests.helpers import index_photos
from tests.vlm_photos import Photos, indexed_photos, scores_by_id
from tests.vlm_server import FakeVlm, Reply, closed_port_url, error

QUERY = "a photo of a dog"


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, imagenet_dir: Path, tiny_checkpoint: Path,
            tiny_model: ClipModel) -> tuple[Path, Photos]:
    root = tmp_path_factory.mktemp("vlm-cli")
    settings, _, _ = index_photos(root, imagenet_dir, tiny_checkpoint, tiny_model, 8)
    return root / "home", indexed_photos(settings)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeVlm]:
    with FakeVlm() as vlm:
        yield vlm


@pytest.fixture
def home(indexed: tuple[Path, Photos], tiny_checkpoint: Path, fake: FakeVlm) -> Iterator[Settings]:
    """The command's environment: the indexed home and the stand-in as its VLM (answers scripted per test)."""
    fake.requests.clear()
    # A deadline no answer of the stand-in comes near, however busy the machine (these tests never hang it).
    vlm = {"VLM_URL": fake.url, "VLM_TOP_N": "4", "VLM_DEADLINE_S": "60"}
    with cli_home(indexed[0], tiny_checkpoint, **vlm) as settings:
        yield settings


def ids(answer: dict[str, Any]) -> list[str]:
    return [row["id"] for row in answer["results"]]


def test_rerank_in_process(home: Settings, indexed: tuple[Path, Photos], fake: FakeVlm) -> None:
    photos = indexed[1]
    clip = ids(run_json("search", QUERY, "-k", "6"))
    fake.responder = scores_by_id(photos, {clip[i]: i for i in range(4)})  # the top 4 reversed
    answer = run_json("search", QUERY, "-k", "6", "--rerank")
    assert ids(answer) == [*reversed(clip[:4]), *clip[4:]]
    assert answer["rerank"]["status"] == "ok" and answer["rerank"]["top_n"] == 4
    assert [row["vlm_score"] for row in answer["results"]] == [3, 2, 1, 0, None, None]
    assert sorted(photos.candidate(r) for r in fake.chats()) == sorted(clip[:4])

    fake.requests.clear()
    answer = run_json("search", QUERY, "-k", "2", "--rerank", "--top-n", "6", "--mode", "pointwise")
    assert ids(answer) == [clip[3], clip[2]]  # from max(k, top-n) hits, cut to k; 4 and 5 scored 0
    assert len(fake.chats()) == 6


def test_explanations_in_text_output(home: Settings, indexed: tuple[Path, Photos], fake: FakeVlm) -> None:
    photos = indexed[1]
    clip = ids(run_json("search", QUERY, "-k", "3"))
    fake.responder = scores_by_id(photos, {clip[2]: 9}, explain=lambda shown: Reply(f"Shows\nitem {shown}."))
    done = run("search", QUERY, "-k", "3", "--rerank", "--explain")
    lines = done.stdout.splitlines()
    uris = [photos_uri(photos, item) for item in (clip[2], clip[0], clip[1])]
    assert [line.split("\t")[-1] for line in lines[0::2]] == uris  # re-ranked
    assert [line.split("\t")[1] for line in lines[0::2]] == [" 9.0", " 0.0", " 0.0"]
    assert lines[1::2] == [f"    Shows item {item}." for item in (clip[2], clip[0], clip[1])]
    assert done.stderr == ""


def photos_uri(photos: Photos, item_id: str) -> str:
    return str(photos.paths[item_id])


def test_a_dead_vlm_gives_clip_order_and_a_warning(home: Settings, tiny_checkpoint: Path,
                                                   indexed: tuple[Path, Photos]) -> None:
    clip = ids(run_json("search", QUERY, "-k", "5"))
    with cli_home(indexed[0], tiny_checkpoint, VLM_URL=closed_port_url()):
        answer = run_json("search", QUERY, "-k", "5", "--rerank", "--explain")
        done = run("search", QUERY, "-k", "5", "--rerank")
    assert ids(answer) == clip and answer["rerank"]["status"] == "failed"
    assert [row["rerank"]["error"] for row in answer["results"]] == ["connect"] * 4 + [None]  # top 4
    assert all(row["explanation"] is None for row in answer["results"])
    assert done.returncode == 0 and "warning: re-rank failed" in done.stderr
    assert "CLIPSEARCH_VLM_URL" in done.stderr


def test_rerank_flags_are_checked(home: Settings) -> None:
    for flags in (["--top-n", "0"], ["--top-n", "101"], ["--mode", "sideways"]):
        done = run("search", QUERY, "--rerank", *flags, check=False)
        assert done.returncode == 2 and "--" in done.stderr, flags


@pytest.fixture
def server(home: Settings, fake: FakeVlm) -> Iterator[str]:
    """`clipsearch serve --port 0` over the home, with the stand-in as its VLM."""
    process = subprocess.Popen([*CLI, "serve", "--port", "0"], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    from indexer.locking import server_address

    folder = home.collection_dir("default")
    try:
        wait_for(lambda: server_address(folder) is not None or process.poll() is not None, 90, "the server")
        assert process.poll() is None, process.communicate()[1]
        yield str(server_address(folder))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def test_through_the_server_its_vlm_reranks(server: str, tiny_checkpoint: Path, indexed: tuple[Path, Photos],
                                            fake: FakeVlm) -> None:
    photos = indexed[1]
    # The command's own VLM is dead: only the server's (the stand-in) can re-rank.
    with cli_home(indexed[0], tiny_checkpoint, VLM_URL=closed_port_url()):
        clip = ids(run_json("search", QUERY, "-k", "5"))
        fake.responder = scores_by_id(photos, {clip[4]: 10, clip[3]: 9},
                                      explain=lambda shown: Reply(f"Because {shown}."))
        answer = run_json("search", QUERY, "-k", "3", "--rerank", "--top-n", "5", "--explain")
        assert ids(answer) == [clip[4], clip[3], clip[0]]
        assert answer["rerank"]["status"] == "ok"
        assert [row["explanation"] for row in answer["results"]] == [f"Because {i}." for i in ids(answer)]
        image = photos_uri(photos, clip[1])
        fake.responder = lambda request: error(500)
        by_image = run_json("search", "--image", image, "-k", "3", "--rerank", "--top-n", "3")
    assert by_image["rerank"]["status"] == "failed"  # the server's VLM failing: still the hits, 200
    assert [row["rerank"]["error"] for row in by_image["results"]] == ["http_5xx"] * 3
    assert all(len(r.images()) == 2 for r in fake.chats()[-3:])  # the example image, then the candidate
