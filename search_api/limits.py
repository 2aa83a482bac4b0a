"""The request-body size limit, as ASGI middleware, and the polite way to refuse a body.

`BodyLimitMiddleware` refuses a request whose Content-Length is too big before parsing any of it,
and counts bytes as they arrive, so a body that declares no length (chunked) or a wrong one can't
get past it either. It allows some multipart overhead on top of the file; `uploads.read_upload`
then checks the file itself exactly.

Not FastAPI's own `max_body_size`: that sits outside every user middleware (an oversize body got a
413 before the API key was checked) and answers in plain text where a route has not read the body.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from indexer.settings import Settings

# Room in a request body for the multipart framing and the small form fields next to the file.
MULTIPART_OVERHEAD = 64 * 1024
# How much of a refused body is read and dropped before answering (see `drain_body`).
DRAIN_LIMIT = 8 * 1024 * 1024


def body_limit(settings: Settings) -> int:
    return settings.api.max_upload_bytes + MULTIPART_OVERHEAD


def too_large_message(limit: int, setting: str = "CLIPSEARCH_API_MAX_UPLOAD_BYTES") -> str:
    return f"upload too large: the limit is {limit} bytes ({setting})"


def expects_continue(scope: Scope) -> bool:
    """The client waits for "100 Continue" before sending its body (curl does for big uploads)."""
    return Headers(scope=scope).get("expect", "").lower() == "100-continue"


async def drain_body(receive: Receive, budget: int = DRAIN_LIMIT) -> None:
    """Read and drop what is left of a refused request's body, up to `budget` bytes.

    Answering without reading it makes the server close a socket with unread data, on which the
    kernel sends a reset: the client then often fails writing, or loses the answer already sent
    (what lingering close in nginx and Apache is for). Past the budget, the client is on its own.
    """
    while budget > 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int, setting: str = "CLIPSEARCH_API_MAX_UPLOAD_BYTES"):
        # Close: after a body that was not read to its end, the connection can't carry another request.
        super().__init__(413, too_large_message(limit, setting), headers={"Connection": "close"})


class BodyLimitMiddleware:
    """413 with a JSON detail for request bodies over `max_body` bytes, declared or counted; bodies to
    the paths `archives` matches (a snapshot to restore) have their own limit, `max_archive`."""

    def __init__(self, app: ASGIApp, max_body: int, max_upload: int, archives: re.Pattern[str] | None = None,
                 max_archive: int = 0, setting: str = "CLIPSEARCH_API_MAX_UPLOAD_BYTES"):
        self.app, self.max_body, self.max_upload = app, max_body, max_upload
        self.archives, self.max_archive, self.setting = archives, max_archive, setting

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.archives is not None and self.archives.fullmatch(scope["path"]):
            archive_limit = BodyLimitMiddleware(self.app, self.max_archive, self.max_archive,
                                                setting="CLIPSEARCH_API_MAX_RESTORE_BYTES")
            await archive_limit(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            if not expects_continue(scope):  # else the client has not sent the body, and now never will
                await drain_body(receive)
            await self._refuse(scope, receive, send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    if message.get("more_body", False):
                        await drain_body(receive)
                    # Raised inside the route's body parsing, it reaches the app's HTTPException handler.
                    raise BodyTooLarge(self.max_upload, self.setting)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = BodyTooLarge(self.max_upload, self.setting)
        await JSONResponse({"detail": error.detail}, 413, headers=error.headers)(scope, receive, send)


class Utf8PathMiddleware:
    """400 for a path whose percent-encoded bytes are not UTF-8.

    The server decodes such bytes to U+FFFD, so `%ff%fe` and `%ef%bf%bd%ef%bf%bd` would name the same
    item: an id is taken byte-exact or refused, never altered."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
            try:
                unquote_to_bytes(raw).decode("utf-8")
            except UnicodeDecodeError as exc:
                await drain_body(receive)
                detail = f"the path is not UTF-8 (at decoded byte {exc.start}): ids are used byte-exact"
                await JSONResponse({"detail": detail}, 400)(scope, receive, send)
                return
        await self.app(scope, receive, send)
