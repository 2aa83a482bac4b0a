"""Walking a folder for images, and the stable identity of each file.

An item's id is a UUID derived from its real path (symlinked folders on the way resolved), so
re-runs, crashes and other machines agree on it, and a photo reached through two paths is one item.
Its fingerprint (size and modification time, as rclip does) decides whether a re-run must embed it
again without reading its bytes.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISLNK, S_ISREG

from indexer.ingest.decode import IMAGE_EXTENSIONS

_ID_NAMESPACE = uuid.UUID("6f1c1f8e-3a55-4b8e-9a57-2f6f0c1d9e42")
# Folders that hold thumbnails, trash or metadata rather than photos.
_JUNK_DIRS = frozenset({"@eaDir", "__MACOSX", "$RECYCLE.BIN", "System Volume Information", "node_modules"})


def item_id(uri: str) -> str:
    return str(uuid.uuid5(_ID_NAMESPACE, uri))


@dataclass(frozen=True)
class SourceItem:
    uri: str  # absolute path or URL; what results show
    path: str  # local file to read
    fingerprint: str

    @property
    def id(self) -> str:
        return item_id(self.uri)


@dataclass(frozen=True)
class WalkProblem:
    uri: str
    reason: str


def _fingerprint(stat: os.stat_result) -> str:
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def source_roots(sources: Iterable[str | Path]) -> list[str]:
    """The folders (or files) whose stored items an index run of `sources` owns: each one's real path,
    and its absolute path where a symlink on the way makes them differ (items that collections made
    before paths were resolved keep under it, and are replaced by their real path at the next run)."""
    roots: dict[str, None] = {}
    for source in sources:
        roots[os.path.realpath(source)] = None
        roots[os.path.abspath(source)] = None
    return list(roots)


def walk_folder(root: Path, problems: list[WalkProblem] | None = None) -> Iterator[SourceItem]:
    """Image files under root, recursively, in a stable order; hidden and junk files skipped.

    Every file is named by its real path: the root's symlinks are resolved, and a symlink to a file
    under the root is the file it points to (one item, however many links). A link to a file outside
    the root keeps the link's path (the run owns what is under its root). Symlinked folders are not
    followed, which rules out loops. Unreadable folders are reported in `problems`, not raised.
    """
    root = Path(os.path.realpath(root))
    if root.is_file():
        yield from _items([root], problems, str(root))
        return
    if not root.is_dir():
        raise FileNotFoundError(f"no such folder: {root}")

    def on_error(error: OSError) -> None:
        if problems is not None:
            reason = f"unreadable folder: {error.strerror}"
            problems.append(WalkProblem(printable_path(error.filename), reason))

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error):
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d) and d not in _JUNK_DIRS)
        candidates = [
            Path(dirpath, name)
            for name in sorted(filenames)
            if not _is_hidden(name) and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
        ]
        yield from _items(candidates, problems, str(root))


def printable_path(path: str | Path) -> str:
    """The path as valid text: bytes that are not UTF-8 (a name from an old Latin-1 disk) shown as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _items(paths: list[Path], problems: list[WalkProblem] | None, root: str) -> Iterator[SourceItem]:
    def problem(path: Path, reason: str) -> None:
        if problems is not None:
            problems.append(WalkProblem(printable_path(path), reason))

    inside = root.rstrip(os.sep) + os.sep
    for path in paths:
        try:
            stat = path.lstat()  # one call for a plain file; a link costs a resolve and a second stat
            if S_ISLNK(stat.st_mode):
                stat = path.stat()
                real = os.path.realpath(path)
                if real == root or real.startswith(inside):
                    path = Path(real)
        except OSError as exc:  # dangling symlink, symlink loop, vanished file
            problem(path, f"cannot stat: {exc.strerror or exc}")
            continue
        if not S_ISREG(stat.st_mode):  # a FIFO named .jpg would block whoever opened it
            problem(path, "not a regular file")
            continue
        if printable_path(path) != str(path):
            # Ids, payloads and JSON output are UTF-8 text: such a name cannot be stored or shown as is.
            problem(path, "file name is not valid UTF-8; rename the file to index it")
            continue
        yield SourceItem(uri=str(path), path=str(path), fingerprint=_fingerprint(stat))
