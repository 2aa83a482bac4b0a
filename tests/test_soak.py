"""Soak: `clipsearch serve --watch` with keys under concurrent clients, watcher churn, the write API, a
re-embedding and an activation, then every file, write and delete accounted for (issue 18).

One code path, two lengths: the suite runs it for SOAK_SECONDS (default 20) with SOAK_CLIENTS (default
6) search clients; the long run is by hand, e.g.

    SOAK_SECONDS=600 SOAK_CLIENTS=40 HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q -s tests/test_soak.py

and its figures go to docs/reliability.md ("Soak"). The phases follow events, not the clock: the load
runs until the re-embedding has ended and the new vector has been activated, and at least SOAK_SECONDS.

Specification:
- every search answers 200 with well-formed, best-first results, throughout (no 5xx, no timeout);
- every write acknowledged (200) is there at the end, and every delete acknowledged is gone;
- the folder and the collection agree at the end: exactly the files on disk, each once;
- the re-embedding started under this load ends `ready`, the activation answers 200, and a search on
  each vector with a large k finds every item (none lacks either vector).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.clirun import CLI, REPO, cli_home, served_url, wait_for
from tests.helpers import TINY_CONFIG, copy_photos, eventually

SECONDS = float(os.environ.get("SOAK_SECONDS", "20"))
CLIENTS = int(os.environ.get("SOAK_CLIENTS", "6"))
KEY = "soak-admin-key"
WORDS = ["a bird", "a dog on grass", "red car", "mountain lake", "a cat", "food on a plate", "boat"]
MAX_FILES = 120  # the folder churns between 20 and this; with at most 150 API items, under max_k
MAX_ITEMS = 150


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny architecture with other weights: the model of the vector the soak re-embeds into."""
    import open_clip
    import torch

    open_clip.add_model_config(TINY_CONFIG)
    torch.manual_seed(11)
    path = tmp_path_factory.mktemp("soak-model") / "tiny-soak.pt"
    torch.save(open_clip.create_model(TINY_CONFIG.stem).state_dict(), path)
    return path


class Tally:
    """What the load did and saw; shared by its threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statuses: Counter[str] = Counter()  # "search 200", "put 200", ...
        self.problems: list[str] = []
        self.live: dict[str, str] = {}  # sku -> photo name, acknowledged PUTs not deleted since
        self.deleted: set[str] = set()
        self.churn: Counter[str] = Counter()  # added, deleted, rewritten files

    def saw(self, what: str, status: int | str, problem: str | None = None) -> None:
        with self.lock:
            self.statuses[f"{what} {status}"] += 1
            if problem:
                self.problems.append(problem)


def search_client(url: str, stop: threading.Event, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=url, timeout=120, headers={"X-API-Key": KEY}) as client:
        while not stop.is_set():
            body: dict[str, Any] = {"text": rng.choice(WORDS), "k": rng.choice([1, 5, 10, 50])}
            try:
                answer = client.post("/v1/search", json=body)
            except httpx.HTTPError as exc:
                tally.saw("search", type(exc).__name__, f"search: {exc!r}")
                continue
            problem = None
            if answer.status_code != 200:
                problem = f"search {answer.status_code}: {answer.text[:200]}"
            else:
                scores = [hit["score"] for hit in answer.json()["results"]]
                if scores != sorted(scores, reverse=True) or len(scores) > body["k"]:
                    problem = f"search results not best-first within k: {scores}"
                elif any(not -1.0 <= s <= 1.0 for s in scores):
                    problem = f"impossible cosine scores: {scores}"
            tally.saw("search", answer.status_code, problem)


def churn_folder(folder: Path, pool: list[Path], stop: threading.Event, tally: Tally) -> None:
    """Add, delete and rewrite photos in the watched folder."""
    rng = random.Random(1)
    n = 0
    while not stop.is_set():
        files = sorted(folder.glob("*.jpg"))
        action = rng.choice(["add", "add", "delete", "rewrite"])
        if action == "add" and len(files) < MAX_FILES or len(files) < 20:
            n += 1
            shutil.copyfile(rng.choice(pool), folder / f"churn-{n:05d}.jpg")
            tally.churn["added"] += 1
        elif action == "delete":
            rng.choice(files).unlink()
            tally.churn["deleted"] += 1
        else:
            shutil.copyfile(rng.choice(pool), rng.choice(files))
            tally.churn["rewritten"] += 1
        time.sleep(0.05)


def write_items(url: str, pool: list[Path], stop: threading.Event, tally: Tally) -> None:
    """PUT items through the write API, and delete some of them."""
    rng = random.Random(2)
    n = 0
    with httpx.Client(base_url=url, timeout=120, headers={"X-API-Key": KEY}) as client:
        while not stop.is_set():
            if tally.live and (rng.random() < 0.3 or len(tally.live) >= MAX_ITEMS):
                sku = rng.choice(sorted(tally.live))
                answer = client.delete(f"/v1/collections/default/items/{sku}")
                tally.saw("delete", answer.status_code, None if answer.status_code == 200 else answer.text)
                if answer.status_code == 200:
                    with tally.lock:
                        del tally.live[sku]
                        tally.deleted.add(sku)
                continue
            n += 1
            sku, photo = f"sku-{n:05d}", rng.choice(pool)
            with photo.open("rb") as image:
                answer = client.put(
                    f"/v1/collections/default/items/{sku}",
                    files={"file": (photo.name, image, "image/jpeg")},
                    data={"metadata": json.dumps({"brand": "soak", "n": n})},
                )
            tally.saw("put", answer.status_code, None if answer.status_code == 200 else answer.text)
            if answer.status_code == 200:
                with tally.lock:
                    tally.live[sku] = photo.name
            time.sleep(0.05)


def test_soak(tmp_path: Path, imagenet_dir: Path, tiny_checkpoint: Path, other_checkpoint: Path) -> None:
    folder = tmp_path / "photos"
    copy_photos(imagenet_dir, tmp_path / "seed", 40)
    folder.mkdir()
    for photo in sorted((tmp_path / "seed").iterdir()):
        shutil.copyfile(photo, folder / f"{photo.stem}.jpg")
    pool = sorted(imagenet_dir.glob("*.JPEG"))[100:400]
    with cli_home(tmp_path / "home", tiny_checkpoint, BATCH_SIZE="8", API_KEY=KEY) as settings:
        server = subprocess.Popen(
            [*CLI, "serve", "--port", "0", "--watch", str(folder), "--interval", "3600"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=(tmp_path / "server.log").open("w"), text=True,
        )
    url = served_url(server, settings, timeout=300)
    tally, stop = Tally(), threading.Event()
    admin = httpx.Client(base_url=url, timeout=120, headers={"X-API-Key": KEY})

    def count() -> int:
        try:
            answer = admin.get("/v1/collections/default/status")
        except httpx.TransportError:
            return -1
        return answer.json()["count"] if answer.status_code == 200 else -1

    threads: list[threading.Thread] = []
    started = time.monotonic()
    try:
        wait_for(lambda: count() == 40, 300, "the start sync", every=0.5)
        threads = [
            threading.Thread(target=search_client, args=(url, stop, tally, seed)) for seed in range(CLIENTS)
        ]
        threads += [
            threading.Thread(target=churn_folder, args=(folder, pool, stop, tally)),
            threading.Thread(target=write_items, args=(url, pool, stop, tally)),
        ]
        for thread in threads:
            thread.start()

        time.sleep(min(SECONDS / 3, 60))  # some load first, then the model upgrade under it
        reembed = admin.post("/v1/collections/default/vectors", json={
            "model": str(TINY_CONFIG), "pretrained": str(other_checkpoint), "name": "v2"})
        assert reembed.status_code == 202, reembed.text

        def job() -> dict[str, Any]:
            vectors = admin.get("/v1/collections/default/vectors").json()["vectors"]
            return next(v for v in vectors if v["name"] == "v2").get("job") or {}

        wait_for(lambda: job().get("state") not in ("starting", "running"), 3600, "the re-embedding", every=1)
        assert job()["state"] == "ready", job()
        activated = admin.post("/v1/collections/default/vectors/v2/activate")
        assert activated.status_code == 200, activated.text
        while time.monotonic() - started < SECONDS:
            time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=300)
    loaded_s = time.monotonic() - started

    try:
        files = {str(p) for p in folder.glob("*.jpg")}
        live = dict(tally.live)

        def every_file_and_write_is_searchable() -> None:  # read and checked in one step: the watcher
            for vector in ("v2", "default"):  # may still be catching up with the last changes
                answer = admin.post("/v1/search", json={"text": "x", "k": 1000, "vector": vector})
                assert answer.status_code == 200, answer.text
                hits = answer.json()["results"]
                from_folder = [h["uri"] for h in hits if "item_id" not in h["metadata"]]
                from_api = [h["metadata"]["item_id"] for h in hits if "item_id" in h["metadata"]]
                assert sorted(from_folder) == sorted(files), f"vector {vector}: folder and index differ"
                assert sorted(from_api) == sorted(live), f"vector {vector}: acknowledged writes differ"

        eventually(every_file_and_write_is_searchable, 300, "the watcher to catch up", every=0.5)
        for sku in sorted(live)[:50]:
            item = admin.get(f"/v1/collections/default/items/{sku}")
            assert item.status_code == 200 and item.json()["metadata"]["item_id"] == sku
        for sku in sorted(tally.deleted - set(live))[:50]:
            assert admin.get(f"/v1/collections/default/items/{sku}").status_code == 404
        vectors = {v["name"]: v for v in admin.get("/v1/collections/default/vectors").json()["vectors"]}
        assert vectors["v2"]["active"] and vectors["v2"]["state"] == "ready"
    finally:
        admin.close()
        server.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop, exit status 0
        server.wait(timeout=120)
    assert server.returncode == 0, (tmp_path / "server.log").read_text()[-3000:]

    searches = sum(n for what, n in tally.statuses.items() if what.startswith("search"))
    print(
        f"\nsoak: {loaded_s:.0f} s, {CLIENTS} search clients, {searches} searches, "
        f"{tally.statuses['put 200']} puts, {tally.statuses['delete 200']} deletes, "
        f"files {dict(tally.churn)}, final {len(files)} files + {len(live)} items, "
        f"statuses {dict(tally.statuses)}, problems {len(tally.problems)}"
    )
    assert tally.problems == [], tally.problems[:10]
    assert set(tally.statuses) <= {"search 200", "put 200", "delete 200"}, tally.statuses
    assert tally.statuses["search 200"] > 0 and tally.statuses["put 200"] > 0
