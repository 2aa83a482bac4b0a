"""Writing files so that a crash leaves either the old version or the new one, never half of one, and
never starting a write the disk has no room for."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from indexer.errors import DiskFull

MB = 1 << 20
# How much a collection keeps allocated for loading when the disk is full (Qdrant Edge writes a few small
# files on every load): released when a load finds no space, so reads go on; written again when room is back.
RESERVE_FILE = ".disk-reserve"
RESERVE_BYTES = 4 * MB


def file_sha256(path: str) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` durably: a temp file beside it, fsynced, renamed over it.

    The temp name is fixed, not per process: only the process that owns the store writes here, and a
    file left by a killed writer is overwritten by the next write instead of piling up."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` itself durable; not possible on every platform, hence best effort."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def free_bytes(folder: Path) -> int:
    """Bytes an unprivileged writer may still use on `folder`'s filesystem (root's reserve left out)."""
    stat = os.statvfs(_existing(folder))
    return stat.f_bavail * stat.f_frsize


def require_free_space(folder: Path, needed: int, what: str) -> None:
    """DiskFull unless `needed` bytes are free on `folder`'s filesystem: checked before a write, since an
    engine writing through memory-mapped files on a full disk dies of SIGBUS instead of raising."""
    free = free_bytes(folder)
    if free < needed:
        raise DiskFull(disk_full_message(folder, what, free, needed))


def disk_full_message(folder: Path, what: str, free: int | None, needed: int | None) -> str:
    has = "no space left" if free is None else f"{free / MB:.1f} MB free"
    wants = f"; it needs at least {needed / MB:.0f} MB free" if needed else ""
    return (
        f"disk full: {has} in {folder} for {what}{wants}. Free some space (nothing was written "
        f"that is not safe), or lower CLIPSEARCH_MIN_FREE_DISK_MB, and run again"
    )


def is_disk_full(exc: BaseException) -> bool:
    """Whether an error is the disk's being full: an OSError ENOSPC/EDQUOT, or an engine's message of one."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return "No space left on device" in text or "os error 28" in text or "Disk quota exceeded" in text


@contextlib.contextmanager
def disk_errors(folder: Path, what: str) -> Iterator[None]:
    """A full disk met inside (ENOSPC from a write, an engine's error naming it) becomes DiskFull."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as exc:
        if is_disk_full(exc):
            raise DiskFull(disk_full_message(folder, what, _free_or_none(folder), None)) from exc
        raise


def keep_reserve(folder: Path) -> None:
    """Allocate the load reserve in `folder` (real blocks, not a sparse file) when missing and there is
    room for it beside `RESERVE_BYTES` more; best effort."""
    path = folder / RESERVE_FILE
    if path.exists():
        return
    with contextlib.suppress(OSError):
        if free_bytes(folder) < 2 * RESERVE_BYTES:
            return
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.posix_fallocate(fd, 0, RESERVE_BYTES)
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            return
        os.close(fd)


def release_reserve(folder: Path) -> bool:
    """Give the load reserve back to the filesystem; whether there was one."""
    path = folder / RESERVE_FILE
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def _existing(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _free_or_none(folder: Path) -> int | None:
    try:
        return free_bytes(folder)
    except OSError:
        return None
