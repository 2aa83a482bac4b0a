"""One writer per collection: an advisory file lock that dies with its process.

flock(2) locks are released by the kernel when the holder exits, however it exits, so a run
killed with SIGKILL never leaves a lock that blocks the next one. The lock file stays on disk
(an empty or stale one means nothing); while held, it says who holds it ("PID WHAT") and, on a
second line, what others should do meanwhile.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
