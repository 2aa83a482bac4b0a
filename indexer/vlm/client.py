"""An OpenAI-compatible chat completions client (vLLM, Ollama, llama.cpp, LM Studio, TGI, NIM, hosted
APIs), async on httpx: it runs on the VLM stage's own event loop, where cancelling a request at a
deadline closes its connection instead of leaving a thread blocked on it.

Every request waits for one of `concurrency` slots. Optional fields a server refuses (400/422/5xx
naming `response_format` or `stream_options`) are dropped, remembered and the request sent again.
Failures raise VlmError with a `cause` (connect, timeout, http_429, http_4xx, http_5xx, protocol),
counted in the metrics; its message says which setting to check.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from indexer.errors import Unavailable
from indexer.vlm.metrics import VlmMetrics

# Optional request fields, dropped for servers that refuse them; a refusal names the field.
_OPTIONAL = {"response_format": ("response_format", "json_schema"), "stream_options": ("stream_options",)}
_CONNECT_TIMEOUT_S = 5.0


class VlmError(Unavailable):
    """The VLM could not give an answer; `cause` says what kind of failure it was."""

    def __init__(self, message: str, cause: str = "protocol"):
        super().__init__(message)
        self.cause = cause


@dataclass
class Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


def base_url(url: str) -> str:
    """The API base (".../v1") from what users write: with or without /v1 or /chat/completions."""
    url = url.strip().rstrip("/")
    for suffix in ("/chat/completions", "/completions"):
        url = url.removesuffix(suffix)
    return url + "/v1" if urlsplit(url).path in ("", "/") else url


class VlmClient:
    def __init__(self, url: str, model: str | None, api_key: str | None, timeout_s: float,
                 concurrency: int, metrics: VlmMetrics):
        self.base = base_url(url)
        self.timeout_s = timeout_s
        self.metrics = metrics
        self.refused: set[str] = set()  # optional fields this server has refused
        self._model = model or None
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._concurrency = concurrency
        self._http: httpx.AsyncClient | None = None
        self._slots: asyncio.Semaphore | None = None
        self._model_lock: asyncio.Lock | None = None

    def _client(self) -> httpx.AsyncClient:
        # Made on first use, inside the loop that will use it (asyncio objects belong to one loop).
        if self._http is None:
            self._http = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout_s, connect=min(_CONNECT_TIMEOUT_S, self.timeout_s)),
                limits=httpx.Limits(max_connections=self._concurrency + 2,
                                    max_keepalive_connections=self._concurrency),
                headers=self._headers,
            )
            self._slots = asyncio.Semaphore(self._concurrency)
            self._model_lock = asyncio.Lock()
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    # --- models ------------------------------------------------------------------------------

    async def models(self) -> list[str]:
        """The model ids the endpoint lists (GET /models)."""
        try:
            response = await self._client().get(f"{self.base}/models")
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc
        if response.status_code >= 400:
            raise self._status_error(response.status_code, response.text)
        try:
            return [str(m["id"]) for m in response.json().get("data", [])]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise VlmError(f"the VLM at {self.base} answered /models with something else than a model "
                           "list; check CLIPSEARCH_VLM_URL", "protocol") from exc

    @property
    def model_name(self) -> str | None:
        """The model requests name: the configured one, else the one resolved; None before that."""
        return self._model

    async def model(self) -> str:
        """CLIPSEARCH_VLM_MODEL, or the first model the endpoint lists (asked once)."""
        if self._model is None:
            self._client()
            assert self._model_lock is not None
            async with self._model_lock:
                if self._model is None:
                    listed = await self.models()
                    if not listed:
                        raise VlmError(f"the VLM at {self.base} lists no model; set CLIPSEARCH_VLM_MODEL",
                                       "protocol")
                    self._model = listed[0]
        return self._model

    # --- chat ------------------------------------------------------------------------------

    async def complete(self, messages: list[dict[str, Any]], *, op: str, max_tokens: int,
                       schema: dict[str, Any] | None = None) -> Completion:
        """One chat completion's text; `schema` is asked for as structured output where accepted."""
        body: dict[str, Any] = {
            "model": await self.model(), "messages": messages, "max_tokens": max_tokens, "temperature": 0,
        }
        if schema is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": schema}
        self._client()
        assert self._slots is not None
        async with self._slots:
            response = await self._post(body, op)
        try:
            data = response.json()
            message = data["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            self.metrics.count("errors", "protocol")
            raise VlmError(f"the VLM at {self.base} answered something else than a chat completion "
                           f"({response.text[:120]!r}); check CLIPSEARCH_VLM_URL", "protocol") from exc
        usage = data.get("usage") or {}
        completion = Completion(_text(message.get("content")), int(usage.get("prompt_tokens") or 0),
                                int(usage.get("completion_tokens") or 0))
        self._count_tokens(completion.prompt_tokens, completion.completion_tokens)
        return completion

    async def stream(self, messages: list[dict[str, Any]], *, op: str, max_tokens: int) -> AsyncIterator[str]:
        """The completion's text in pieces as the server generates them (server-sent events)."""
        body: dict[str, Any] = {
            "model": await self.model(), "messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True},
        }
        client = self._client()
        assert self._slots is not None
        async with self._slots:
            for _ in range(len(_OPTIONAL) + 1):
                body = self._without_refused(body)
                self.metrics.count("requests", op)
                started = time.monotonic()
                try:
                    async with client.stream("POST", f"{self.base}/chat/completions", json=body) as response:
                        if response.status_code >= 400:
                            text = (await response.aread()).decode("utf-8", "replace")
                            if self._refuses(response.status_code, text, body):
                                continue
                            raise self._status_error(response.status_code, text)
                        # closed here, not by the garbage collector on a loop that may be gone by then
                        async with contextlib.aclosing(response.aiter_lines()) as lines:
                            async for line in lines:
                                payload = _event_data(line)
                                if payload == "[DONE]":
                                    break
                                for piece in self._stream_chunk(payload):
                                    yield piece
                        return
                except httpx.HTTPError as exc:
                    raise self._transport_error(exc) from exc
                finally:
                    self.metrics.observe("request_seconds", time.monotonic() - started)

    def _stream_chunk(self, payload: str) -> list[str]:
        if not payload:
            return []  # comments, event names, keep-alives
        try:
            chunk = json.loads(payload)
        except ValueError:
            return []  # a malformed event costs that event, not the explanation
        usage = chunk.get("usage") if isinstance(chunk, dict) else None
        if usage:
            self._count_tokens(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
        pieces = []
        for choice in (chunk.get("choices") or []) if isinstance(chunk, dict) else []:
            piece = _text((choice.get("delta") or {}).get("content"))
            if piece:
                pieces.append(piece)
        return pieces

    async def _post(self, body: dict[str, Any], op: str) -> httpx.Response:
        for _ in range(len(_OPTIONAL) + 1):
            body = self._without_refused(body)
            self.metrics.count("requests", op)
            started = time.monotonic()
            try:
                response = await self._client().post(f"{self.base}/chat/completions", json=body)
            except httpx.HTTPError as exc:
                raise self._transport_error(exc) from exc
            finally:
                self.metrics.observe("request_seconds", time.monotonic() - started)
            if response.status_code < 400:
                return response
            if not self._refuses(response.status_code, response.text, body):
                raise self._status_error(response.status_code, response.text)
        raise self._status_error(response.status_code, response.text)

    # --- refusals and errors ------------------------------------------------------------------

    def _without_refused(self, body: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in body.items() if k not in self.refused}

    def _refuses(self, status: int, text: str, body: dict[str, Any]) -> bool:
        """Whether this error refuses one of our optional fields (then remembered and dropped)."""
        if status not in (400, 422, 500, 501):
            return False
        lowered = text.lower()
        for name, words in _OPTIONAL.items():
            if name in body and any(word in lowered for word in words):
                self.refused.add(name)
                return True
        return False

    def _count_tokens(self, prompt: int, completion: int) -> None:
        self.metrics.count("tokens", "prompt", prompt)
        self.metrics.count("tokens", "completion", completion)

    def _transport_error(self, exc: httpx.HTTPError) -> VlmError:
        if isinstance(exc, httpx.TimeoutException):
            cause, message = "timeout", (
                f"the VLM at {self.base} did not answer within {self.timeout_s:g} s; raise "
                "CLIPSEARCH_VLM_TIMEOUT_S or use a faster model")
        else:
            cause, message = "connect", (
                f"the VLM at {self.base} cannot be reached ({type(exc).__name__}: {exc}); "
                "is it running? check CLIPSEARCH_VLM_URL")
        self.metrics.count("errors", cause)
        return VlmError(message, cause)

    def _status_error(self, status: int, text: str) -> VlmError:
        detail = " ".join(text.split())[:200]
        if status == 429:
            cause, advice = "http_429", "it is rate limiting; lower CLIPSEARCH_VLM_CONCURRENCY"
        elif status in (401, 403):
            cause, advice = "http_4xx", "check CLIPSEARCH_VLM_API_KEY"
        elif status == 404:
            cause, advice = "http_4xx", "check CLIPSEARCH_VLM_URL (the base URL, ending in /v1) and " \
                "CLIPSEARCH_VLM_MODEL"
        elif status < 500:
            cause, advice = "http_4xx", "check CLIPSEARCH_VLM_MODEL takes images"
        else:
            cause, advice = "http_5xx", "see the log of the server at CLIPSEARCH_VLM_URL"
        self.metrics.count("errors", cause)
        return VlmError(f"the VLM at {self.base} answered {status} ({detail}); {advice}", cause)


def _text(content: Any) -> str:
    """Message content as text: a string, or (some servers) a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _event_data(line: str) -> str:
    """The data of one server-sent event line; "" for comments, blank lines and other fields."""
    return line.removeprefix("data:").strip() if line.startswith("data:") else ""
