"""One writer per collection: an advisory file lock that dies with its process.

flock(2) locks are released by the kernel when the holder exits, however it exits, so a run
killed with SIGKILL never leaves a lock that blocks the next one. The lock file stays on disk
(an empty or stale one means nothing); while held, it says who holds it ("PID WHAT") and, on a
second line, what others should do meanwhile.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from indexer.durable import write_atomic
from indexer.errors import CollectionLocked


def lock_path(home: Path, collection: str) -> Path:
    return home / "locks" / f"{collection}.lock"


@contextmanager
def collection_lock(
    home: Path,
    collection: str,
    holder: str = "clipsearch index",
    advice: str = "wait for it to finish, or stop it",
) -> Iterator[None]:
    """Hold the collection's write lock, or raise CollectionLocked at once, naming the holder and
    passing on its advice to whoever else wants to write."""
    path = lock_path(home, collection)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            first, _, their_advice = os.pread(fd, 1024, 0).decode(errors="replace").partition("\n")
            pid, _, what = first.strip().partition(" ")
            raise CollectionLocked(
                f"collection {collection!r} is being written by another process "
                f"(pid {pid or 'unknown'}{': ' + what if what else ''}); {their_advice.strip() or advice}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {holder}\n{advice}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


# --- the address of a server that holds a collection ----------------------------------------------
# An embedded collection open in `clipsearch serve` cannot be opened by another process; the server
# leaves its address in the collection's directory so that the CLI can go through it instead.

SERVER_FILE = "server.json"


def write_server_address(directory: Path, url: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    write_atomic(directory / SERVER_FILE, json.dumps({"url": url, "pid": os.getpid()}).encode())


def remove_server_address(directory: Path) -> None:
    path = directory / SERVER_FILE
    if server_address(directory) is not None and _pid_in(path) == os.getpid():
        path.unlink(missing_ok=True)


def server_address(directory: Path) -> str | None:
    """The URL of the live server holding the collection in `directory`, or None."""
    path = directory / SERVER_FILE
    try:
        data = json.loads(path.read_text())
        url, pid = str(data["url"]), int(data["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return url if process_alive(pid) else None


def _pid_in(path: Path) -> int | None:
    try:
        return int(json.loads(path.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists (ours or someone else's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
