"""A gallery user's first steps, through the real scripts and CLI: the quickstart's printed lines carry on
offline, a photo reached through a symlinked folder is one item, and `serve` on a taken port says so in
one line."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path

from tests.clirun import REPO, cli_home, run, run_json
from tests.helpers import photo_copies


def clean_env(home: Path) -> dict[str, str]:
    """The user's shell: no CLIPSEARCH_* settings, offline, this checkout's code first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPSEARCH_")}
    return {**env, "HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


def test_the_quickstart_prints_the_lines_that_carry_on_offline(tmp_path: Path, imagenet_dir: Path) -> None:
    home = tmp_path / "user"
    photo_copies(imagenet_dir, tmp_path / "photos", 4)
    photo_copies(imagenet_dir, home / "Pictures", 3)
    env = clean_env(home)
    command = ["bash", "scripts/quickstart.sh", "--no-install", str(tmp_path / "photos"), "a dog"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "tiny random-weight model" in done.stderr  # offline: no weights, the tiny model stands in
    pasted = done.stdout.split("paste:", 1)[1].strip().splitlines()
    assert pasted[0].startswith("source ") and pasted[1].startswith("export ")
    assert {"CLIPSEARCH_HOME", "CLIPSEARCH_COLLECTION", "CLIPSEARCH_MODEL", "CLIPSEARCH_PRETRAINED"} <= set(
        re.findall(r"(CLIPSEARCH_\w+)=", pasted[1]))
    # The README's next lines, in a fresh shell with what the quickstart printed: search its collection,
    # then index ~/Pictures into it, all with the model the quickstart used.
    follow = subprocess.run(["bash", "-c", "\n".join([*pasted, "clipsearch status --json"])], cwd=home,
                            env=env, capture_output=True, text=True, timeout=600)
    assert follow.returncode == 0, follow.stderr
    assert "error" not in follow.stderr.lower()
    status = follow.stdout.strip().splitlines()[-1]
    assert '"count": 7' in status and "quickstart-tiny" in status


def test_a_symlinked_folder_indexes_each_photo_once(tmp_path: Path, tiny_checkpoint: Path,
                                                    imagenet_dir: Path) -> None:
    real = tmp_path / "disk" / "photos"
    photos = photo_copies(imagenet_dir, real, 3)
    (tmp_path / "Pictures").symlink_to(real)
    (real / "again.JPEG").symlink_to(photos[0])
    with cli_home(tmp_path / "home", tiny_checkpoint):
        first = run_json("index", str(tmp_path / "Pictures"))
        second = run_json("index", str(real), str(tmp_path / "Pictures"))
        status = run_json("status")
        hits = run_json("search", "a photo", "-k", "10")["results"]
    assert (first["embedded"], first["failed"]) == (3, 0)
    assert (second["embedded"], second["unchanged"], second["removed"]) == (0, 3, 0)
    assert status["count"] == 3
    assert sorted(hit["uri"] for hit in hits) == sorted(str(p) for p in photos)  # real paths, once each


def test_serve_and_ui_on_a_port_in_use_are_one_line(tmp_path: Path, tiny_checkpoint: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with cli_home(tmp_path / "home", tiny_checkpoint):
            done = run("serve", "--port", str(port), check=False, timeout=120)
            ui = run("ui", "--port", str(port), check=False, timeout=120)
    for answer in (done, ui):
        assert answer.returncode == 5  # conflict or busy (indexer.errors.ERROR_KINDS)
        [line] = answer.stderr.strip().splitlines()
        assert line.startswith("error: ") and f":{port}" in line and "--port" in line
