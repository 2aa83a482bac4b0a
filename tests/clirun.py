"""Running the real `clipsearch` command from tests: one-shot, as JSON, or in the background.

`cli_home` gives a module its own data directory and exports the CLIPSEARCH_* variables the
command reads, with the tiny test model; the command then runs exactly as a user would run it.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from indexer.settings import Settings
from tests.helpers import settings_env

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "clipsearch"]


@contextmanager
def cli_home(home: Path, checkpoint: Path, **overrides: str) -> Iterator[Settings]:
    """Settings for `home`, exported as CLIPSEARCH_* (plus overrides, e.g. BATCH_SIZE="8")."""
    env = {**settings_env(home, checkpoint), **{f"CLIPSEARCH_{k}": v for k, v in overrides.items()}}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        yield Settings()


def run(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if check and done.returncode != 0:
        raise AssertionError(f"clipsearch {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done


def run_json(*args: str, timeout: float = 300) -> Any:
    return json.loads(run(*args, "--json", timeout=timeout).stdout)


def start(*args: str) -> subprocess.Popen[str]:
    """The command in the background; stdout and stderr are collected by communicate()."""
    return subprocess.Popen(
        [*CLI, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for(condition: Callable[[], bool], timeout: float, what: str, every: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def served_url(process: subprocess.Popen, settings: Settings, collection: str | None = None,
               timeout: float = 120) -> str:
    """The URL of `clipsearch serve --port 0` (`process`) once it holds `collection`: the address it
    leaves in the collection's directory (indexer.locking.server_address). The server picks its port
    as it binds: a port chosen here and released first could be taken by another process meanwhile."""
    from indexer.locking import server_address

    folder = settings.collection_dir(collection or settings.collection)
    wait_for(lambda: server_address(folder) is not None or process.poll() is not None, timeout,
             "the server to hold its collection", every=0.1)
    assert process.poll() is None, f"the server exited with {process.returncode}"
    return str(server_address(folder))


def lock_holder(settings: Settings, collection: str) -> str:
    """What the collection's lock file says about its (last) holder; '' before any run."""
    path = settings.home / "locks" / f"{collection}.lock"
    return path.read_text() if path.exists() else ""


def port_is_free(port: int) -> bool:
    """Whether a new server could listen on `port` (SO_REUSEADDR, as servers bind)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def children_of(pid: int) -> list[int]:
    """Live child processes of `pid` (from /proc; zombies count as gone)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields[1] == str(pid) and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def is_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"
