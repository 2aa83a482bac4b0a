"""The one error hierarchy of clipsearch: every error a user or client can act on.

Each error carries its kind; `ERROR_KINDS` says, in one table, what the CLI (exit code, one line on
stderr) and the HTTP API (status, `{"detail"}`) make of each kind. Anything else is a bug: the CLI
shows its traceback, the API answers 500 without internals.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class ErrorKind(Enum):
    BAD_INPUT = "bad input"
    NOT_FOUND = "not found"
    CONFLICT = "conflict or busy"
    MODEL_MISMATCH = "model mismatch"
    UNAVAILABLE = "unavailable"
    UNAUTHORISED = "unauthorised"
    FORBIDDEN = "forbidden"
    DISK_FULL = "disk full"
    CORRUPT = "corrupt data"
    NOTHING_INDEXED = "nothing indexed"


@dataclass(frozen=True)
class KindOutcome:
    exit_code: int  # of the CLI
    http_status: int  # of the API


# The one table. Exit code 1 is left to unexpected failures (tracebacks) and click's 2 to usage errors.
ERROR_KINDS: dict[ErrorKind, KindOutcome] = {
    ErrorKind.BAD_INPUT: KindOutcome(exit_code=3, http_status=400),
    ErrorKind.NOT_FOUND: KindOutcome(exit_code=4, http_status=404),
    ErrorKind.CONFLICT: KindOutcome(exit_code=5, http_status=409),
    ErrorKind.MODEL_MISMATCH: KindOutcome(exit_code=6, http_status=409),
    ErrorKind.UNAVAILABLE: KindOutcome(exit_code=7, http_status=503),
    ErrorKind.UNAUTHORISED: KindOutcome(exit_code=8, http_status=401),
    ErrorKind.FORBIDDEN: KindOutcome(exit_code=9, http_status=403),
    ErrorKind.DISK_FULL: KindOutcome(exit_code=10, http_status=507),
    # 503 as UNAVAILABLE (listed first, so a remote 503 stays Unavailable): served again once repaired.
    ErrorKind.CORRUPT: KindOutcome(exit_code=11, http_status=503),
    # an index run that wrote nothing and failed every row or file: cron and CI can tell it from success
    ErrorKind.NOTHING_INDEXED: KindOutcome(exit_code=12, http_status=422),
}


class ClipsearchError(Exception):
    """Base of every error a user can act on; the message says what happened and what to do."""

    kind: ErrorKind = ErrorKind.UNAVAILABLE

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else type(self).__name__

    def __str__(self) -> str:
        return self.message


class BadInput(ClipsearchError):
    kind = ErrorKind.BAD_INPUT


class NotFound(ClipsearchError):
    kind = ErrorKind.NOT_FOUND


class Conflict(ClipsearchError):
    """Busy, locked, or already there: it may work later or elsewhere."""

    kind = ErrorKind.CONFLICT


class Unavailable(ClipsearchError):
    kind = ErrorKind.UNAVAILABLE

    def __init__(self, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        # When known: seconds after which the same request may succeed (the API's Retry-After header).
        self.retry_after_s = retry_after_s


class Unauthorised(ClipsearchError):
    kind = ErrorKind.UNAUTHORISED


class Forbidden(ClipsearchError):
    kind = ErrorKind.FORBIDDEN


class DiskFull(ClipsearchError):
    """Too little free space to write safely: refused before writing (an engine's memory-mapped files
    fail with SIGBUS, not an error, when a page cannot be allocated). The message names the folder,
    what is free and what is needed."""

    kind = ErrorKind.DISK_FULL


class CollectionCorrupt(ClipsearchError):
    """Stored data that cannot be right (a vector not finite or not unit-norm, an impossible score, a
    count that disagrees): reported, never served. The message says what to do."""

    kind = ErrorKind.CORRUPT


class NothingIndexed(ClipsearchError):
    """An index run in which every row (catalog) or file failed: nothing was embedded or kept."""

    kind = ErrorKind.NOTHING_INDEXED


# --- the specific errors the library raises -------------------------------------------------------


class StoreError(Unavailable):
    """A store could not be opened or used; the message says why and what to do."""


class CollectionNotFound(NotFound, StoreError):
    pass


class CollectionBusy(Conflict, StoreError):
    """An embedded collection is open in another process: only one process at a time may open it."""


class CollectionLocked(Conflict):
    """Another process holds the collection's write lock (an index run, `serve --watch`)."""


class ItemNotFound(NotFound):
    """No indexed item with this id (path-like strings included: ids are never paths)."""

    def __init__(self, item_id: str) -> None:
        super().__init__(f"no indexed image with id {item_id!r}")
        self.item_id = item_id


class VectorNotFound(NotFound):
    pass


class InvalidFilter(BadInput):
    pass


class SchemaError(BadInput):
    """A collection schema or a change to it is invalid."""


class ImageDecodeError(BadInput):
    """The file or upload is not an image we can decode; the message says why."""


class ModelLoadError(Unavailable):
    """The model or its weights could not be loaded; the message says how to fix it."""


class UnknownModel(ModelLoadError, BadInput):
    """The model or weights named do not exist (a typo, a missing file): the request's fault."""

    kind = ErrorKind.BAD_INPUT


class ModelMismatchError(ClipsearchError):
    """A collection was opened with a model other than the one it was built with."""

    kind = ErrorKind.MODEL_MISMATCH


def outcome(exc: BaseException) -> KindOutcome | None:
    """What the CLI and the API make of an error; None for one that is not ours (a bug)."""
    return ERROR_KINDS[exc.kind] if isinstance(exc, ClipsearchError) else None


_CLASS_OF_KIND: dict[ErrorKind, type[ClipsearchError]] = {
    ErrorKind.BAD_INPUT: BadInput,
    ErrorKind.NOT_FOUND: NotFound,
    ErrorKind.CONFLICT: Conflict,
    ErrorKind.MODEL_MISMATCH: ModelMismatchError,
    ErrorKind.UNAVAILABLE: Unavailable,
    ErrorKind.UNAUTHORISED: Unauthorised,
    ErrorKind.FORBIDDEN: Forbidden,
    ErrorKind.DISK_FULL: DiskFull,
    ErrorKind.CORRUPT: CollectionCorrupt,
}


def error_for_status(status: int, message: str) -> ClipsearchError:
    """Our error for an HTTP status our API answered (the CLI going through a server); the first kind
    in ERROR_KINDS with that status; for any other, BAD_INPUT for a request refused as it was sent (413:
    too large) and UNAVAILABLE for the rest (429: come back later, 5xx)."""
    refused = 400 <= status < 500 and status != 429
    default = ErrorKind.BAD_INPUT if refused else ErrorKind.UNAVAILABLE
    kind = next((k for k, o in ERROR_KINDS.items() if o.http_status == status), default)
    return _CLASS_OF_KIND[kind](message)
