"""A fake OpenAI-compatible VLM server on loopback, for tests and scripts/bench_rerank.py.

A real HTTP server (Starlette under uvicorn, in a thread) speaking the chat completions API, plain
and streamed (server-sent events), and GET /v1/models. It records every request (headers, JSON body,
times) and answers what a responder, a function of the recorded request, scripts: a content, a
status, a raw body (garbage), a delay, a hang, an answer held until the test releases it, a stream
in given pieces (its last held back until the test has read the first, if asked). It can refuse
`response_format` as some servers do, and check a Bearer key.

    with FakeVlm(by_color({RED: score(9, "red"), BLUE: score(2, "blue")})) as vlm:
        ... Settings(vlm={"url": vlm.url}) ...
        vlm.requests[0].images()   # the thumbnails it was sent, decoded
        vlm.max_in_flight          # most requests it was working on at once
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.helpers import refusing_port

DATA_URL_PREFIX = "data:image/jpeg;base64,"
RGB = tuple[int, int, int]


@dataclass
class Reply:
    content: str = ""  # the assistant's text
    status: int = 200
    body: str | None = None  # sent as is instead of a chat completion (garbage, error documents)
    delay_s: float = 0.0  # before answering
    hang: bool = False  # answer nothing until the server stops
    release: threading.Event | None = None  # answer only once this is set (or the server stops)
    chunks: list[str] | None = None  # a stream's pieces (default: the content word by word)
    chunk_delay_s: float = 0.0
    # The stream's last piece waits until this is set (or the server stops): a test sets it when the
    # first piece reaches it, which proves the pieces were passed on as written, without a clock.
    hold_last: threading.Event | None = None
    usage: tuple[int, int] = (100, 10)  # prompt, completion tokens


def score(value: Any, reason: str = "", **extra: Any) -> Reply:
    return Reply(json.dumps({"score": value, "reason": reason}), **extra)


def order(numbers: Iterable[int], **extra: Any) -> Reply:
    return Reply(json.dumps({"order": list(numbers)}), **extra)


def error(status: int, message: str = "scripted failure", **extra: Any) -> Reply:
    return Reply(status=status, body=json.dumps({"error": {"message": message, "type": "server_error"}}),
                 **extra)


@dataclass
class Recorded:
    """One request as the server received it."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body.get("messages", [])

    def parts(self) -> list[dict[str, Any]]:
        """Every content part of every message, strings as text parts."""
        out = []
        for message in self.messages:
            content = message.get("content")
            out += [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])
        return out

    def text(self) -> str:
        """All text the model is shown, system prompt included."""
        return "\n".join(p["text"] for p in self.parts() if p.get("type") == "text")

    def image_urls(self) -> list[str]:
        return [p["image_url"]["url"] for p in self.parts() if p.get("type") == "image_url"]

    def images(self) -> list[Image.Image]:
        """The images sent, decoded (each must be a base64 JPEG data URL)."""
        decoded = []
        for url in self.image_urls():
            assert url.startswith(DATA_URL_PREFIX), url[:40]
            image = Image.open(io.BytesIO(base64.b64decode(url.removeprefix(DATA_URL_PREFIX), validate=True)))
            assert image.format == "JPEG"
            image.load()
            decoded.append(image)
        return decoded


Responder = Callable[[Recorded], Reply]


def mean_color(image: Image.Image) -> RGB:
    small = image.convert("RGB").resize((1, 1), Image.Resampling.BOX)
    return small.getpixel((0, 0))  # type: ignore[return-value]


def by_color(table: Mapping[RGB, Reply], default: Reply | None = None) -> Responder:
    """Answers by what the model is shown: the reply of the colour nearest the last image's mean
    (pointwise: the candidate). `default` when no colour is within 40 per channel."""

    def respond(request: Recorded) -> Reply:
        images = request.images()
        if images:
            seen = mean_color(images[-1])
            color = min(table, key=lambda c: sum(abs(a - b) for a, b in zip(c, seen, strict=True)))
            if max(abs(a - b) for a, b in zip(color, seen, strict=True)) <= 40:
                return table[color]
        return default or Reply("no idea")

    return respond


def colors_shown(request: Recorded, palette: Iterable[RGB]) -> list[RGB]:
    """The palette colour of each image of a request, in order (listwise: the candidates)."""
    palette = list(palette)
    return [min(palette, key=lambda c: sum(abs(a - b) for a, b in zip(c, mean_color(im), strict=True)))
            for im in request.images()]


def sequence(*replies: Reply) -> Responder:
    """The replies in turn, then the last one again and again."""
    it = itertools.chain(replies, itertools.repeat(replies[-1]))
    lock = threading.Lock()

    def respond(request: Recorded) -> Reply:
        with lock:
            return next(it)

    return respond


class FakeVlm:
    def __init__(self, responder: Responder | None = None, *, models: Iterable[str] = ("fake-vl",),
                 api_key: str | None = None, refuse: Iterable[str] = (), keep_requests: bool = True):
        self.keep_requests = keep_requests  # False: a long benchmark does not hoard every image sent
        self.responder: Responder = responder or (lambda request: score(5, "middling"))
        self.models = list(models)
        self.api_key = api_key
        self.refuse = set(refuse)  # optional request fields answered with 400, as some servers do
        self.requests: list[Recorded] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._stopping = threading.Event()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # --- life -----------------------------------------------------------------------------------

    def start(self) -> FakeVlm:
        sock = socket.socket()
        # Accepted connections inherit it: without it an answer's headers and body meet Nagle and the
        # client's delayed ACK, and every request takes 40 ms more (as a benchmark would show).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        self._sock = sock
        app = Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"]),
                                Route("/v1/models", self._models, methods=["GET"])])
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 120  # a bound for failing only
        while not self._server.started:
            assert self._thread.is_alive() and time.monotonic() < deadline, "fake VLM did not start"
            time.sleep(0.01)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
        return self

    def stop(self) -> None:
        self._stopping.set()  # ends hangs
        if self._server is not None:
            self._server.should_exit = True
            assert self._thread is not None
            self._thread.join(10)
            self._sock.close()

    def __enter__(self) -> FakeVlm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def chats(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    # --- routes -------------------------------------------------------------------------------

    async def _models(self, request: Request) -> Response:
        self.requests.append(Recorded(request.url.path, dict(request.headers), {}))
        if denied := self._denied(request):
            return denied
        return JSONResponse({"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]})

    async def _chat(self, request: Request) -> Response:
        body = json.loads(await request.body())
        recorded = Recorded(request.url.path, dict(request.headers), body)
        if self.keep_requests:
            self.requests.append(recorded)
        if denied := self._denied(request):
            return denied
        refused = sorted(self.refuse & body.keys())
        if refused:
            return JSONResponse({"error": {"message": f"{refused[0]} is not supported", "type":
                                           "invalid_request_error", "param": refused[0]}}, status_code=400)
        reply = self.responder(recorded)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        streaming = False
        try:
            await asyncio.sleep(reply.delay_s)
            while reply.hang and not self._stopping.is_set():
                await asyncio.sleep(0.02)
            while reply.release is not None and not (reply.release.is_set() or self._stopping.is_set()):
                await asyncio.sleep(0.01)
            if reply.body is not None or reply.status != 200:
                return Response(reply.body or "", status_code=reply.status, media_type="application/json")
            if body.get("stream"):
                streaming = True
                return StreamingResponse(self._events(recorded, reply), media_type="text/event-stream")
            return JSONResponse(_completion(body, reply))
        finally:
            if not streaming:
                self._done(recorded)

    async def _events(self, recorded: Recorded, reply: Reply) -> AsyncIterator[str]:
        try:
            pieces = reply.chunks if reply.chunks is not None else _words(reply.content)
            for place, piece in enumerate(pieces):
                if reply.hold_last is not None and place == len(pieces) - 1:
                    while not (reply.hold_last.is_set() or self._stopping.is_set()):
                        await asyncio.sleep(0.01)
                chunk = _chunk(recorded.body, {"content": piece}, None)
                yield f"data: {json.dumps(chunk)}\n\n"
                await asyncio.sleep(reply.chunk_delay_s)
            final = _chunk(recorded.body, {}, "stop")
            if (recorded.body.get("stream_options") or {}).get("include_usage"):
                final["usage"] = _usage(reply)
            yield f"data: {json.dumps(final)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            self._done(recorded)

    def _done(self, recorded: Recorded) -> None:
        self.in_flight -= 1
        recorded.finished = time.monotonic()

    def _denied(self, request: Request) -> Response | None:
        if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return JSONResponse({"error": {"message": "invalid api key"}}, status_code=401)
        return None


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [word + (" " if i < len(words) - 1 else "") for i, word in enumerate(words)]


def _usage(reply: Reply) -> dict[str, int]:
    prompt, completion = reply.usage
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _completion(body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
        "model": body.get("model"), "usage": _usage(reply),
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": reply.content}}],
    }


def _chunk(body: dict[str, Any], delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": body.get("model"), "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def main(argv: list[str] | None = None) -> None:
    """`python -m tests.vlm_server --delay-ms 200`: serve until killed, answering every chat after the
    delay (a score of 5; listwise: the candidates last first), for scripts/bench_rerank.py; prints the URL."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--delay-ms", type=float, default=200.0)
    args = parser.parse_args(argv)
    delay = args.delay_ms / 1000

    def respond(request: Recorded) -> Reply:
        if "order" in request.body.get("response_format", {}).get("json_schema", {}).get("schema", {}).get(
                "properties", {}):  # listwise: the candidates, last first
            return order(reversed(range(1, len(request.image_urls()) + 1)), delay_s=delay)
        return score(5, "scripted", delay_s=delay)

    fake = FakeVlm(respond, keep_requests=False).start()
    print(fake.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        fake.stop()


if __name__ == "__main__":
    main()


def closed_port_url() -> str:
    """An OpenAI-compatible base URL on a loopback port nothing listens on: a VLM that is down."""
    return f"http://127.0.0.1:{refusing_port()}/v1"
