"""One writer per collection: an advisory file lock that dies with its process.

flock(2) locks are released by the kernel when the holder exits, however it exits, so a run
killed with SIGKILL never leaves a lock that blocks the next one.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class CollectionLocked(RuntimeError):
    pass


@contextmanager
def collection_lock(home: Path, collection: str) -> Iterator[None]:
    lock_dir = home / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    path = lock_dir / f"{collection}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise CollectionLocked(
                f"collection {collection!r} is being written by another process (pid {holder}); "
                f"wait for it to finish"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
