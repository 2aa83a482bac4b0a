"""A small typed client for the clipsearch HTTP API: the UI's only way to reach the service.

Every failure becomes an `ApiError` carrying a message fit to show a person (the API's own
`detail` where it sent one), so the layout code never has to look at httpx exceptions.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

DEFAULT_API_URL = "http://127.0.0.1:8000"


class ApiError(Exception):
    """The API answered with an error, or its answer could not be read."""

    def __init__(self, detail: str, status: int | None = None):
        super().__init__(detail)
        self.detail, self.status = detail, status


class ApiUnreachable(ApiError):
    """Nothing answered at the API's URL (refused, unresolvable, or timed out connecting)."""


@dataclass(frozen=True)
class Hit:
    id: str
    uri: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)
    vlm_score: float | None = None  # the VLM's 0-10, when re-ranked and judged
    rerank: dict[str, Any] | None = None  # {"status", "error", "rank", "reason", "cached"}, when re-ranked


@dataclass(frozen=True)
class Item:
    """An indexed image's record: where it came from and what the indexer (or catalog) stored."""

    id: str
    uri: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Original:
    data: bytes
    media_type: str


@dataclass(frozen=True)
class SearchResponse:
    results: list[Hit]
    took_ms: float | None = None
    rerank: dict[str, Any] | None = None  # {"status": ok|partial|failed, "reason", "ms", ...}, when asked
    facets: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # field -> (value, count)
    mode: str | None = None  # how the hits were ranked: vector, keyword, hybrid or recommend


def _detail(response: httpx.Response) -> str:
    """The API's error message: `detail` from the JSON body, which FastAPI makes a list on 422."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, list):  # pydantic validation errors: keep just the messages
        detail = "; ".join(str(i.get("msg", i)) if isinstance(i, dict) else str(i) for i in detail)
    return str(detail or response.text[:200] or response.reason_phrase)


def api_from_env() -> tuple[str, str | None]:
    """The API's address and key, as `clipsearch ui --api-url` and docker-compose pass them."""
    url = os.environ.get("CLIPSEARCH_API_URL") or DEFAULT_API_URL
    return url, os.environ.get("CLIPSEARCH_API_KEY") or None


class ApiClient:
    def __init__(
        self,
        base_url: str = DEFAULT_API_URL,
        api_key: str | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,  # tests may hand in an httpx.MockTransport
    ):
        self.base_url, self.api_key = base_url.rstrip("/"), api_key
        # A short connect timeout makes "API is down" quick to report; reads may wait for a model load.
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"X-API-Key": api_key} if api_key else {},
            timeout=httpx.Timeout(timeout, connect=3.0),
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ApiUnreachable(f"cannot reach the API at {self.base_url} ({exc})") from exc
        except httpx.TimeoutException as exc:
            raise ApiError(f"the API at {self.base_url} did not answer in time") from exc
        except httpx.HTTPError as exc:
            raise ApiUnreachable(f"cannot talk to the API at {self.base_url} ({exc})") from exc
        if response.is_error:
            raise ApiError(_detail(response), response.status_code)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self._request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as exc:
            raise ApiError(f"{path} did not answer JSON", response.status_code) from exc

    @staticmethod
    def _search_response(body: dict[str, Any]) -> SearchResponse:
        try:
            hits = [Hit(str(r["id"]), str(r.get("uri", "")), float(r["score"]), r.get("metadata") or {},
                        r.get("vlm_score"), r.get("rerank")) for r in body["results"]]
            facets = {str(name): [(str(c["value"]), int(c["count"])) for c in counts]
                      for name, counts in (body.get("facets") or {}).items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise ApiError(f"unexpected search answer: {exc!r}") from exc
        return SearchResponse(hits, body.get("took_ms"), body.get("rerank"), facets, body.get("mode"))

    def health(self) -> dict[str, Any]:
        return self._json("GET", "/healthz")

    def collections(self) -> list[dict[str, Any]]:
        """Every collection: name, count, model, error, and `default` for the server's own."""
        return list(self._json("GET", "/v1/collections").get("collections", []))

    def status(self, collection: str) -> dict[str, Any]:
        """count, model, vectors [{name, model, state, count, active...}] and failed [{uri, reason}]."""
        return self._json("GET", f"/v1/collections/{_segment(collection)}/status")

    def item(self, collection: str, item_id: str) -> Item:
        body = self._json("GET", f"/v1/collections/{_segment(collection)}/items/{_segment(item_id)}")
        return Item(str(body.get("id", item_id)), str(body.get("uri") or ""), body.get("metadata") or {})

    def search_text(self, text: str, k: int = 10, collection: str | None = None,
                    rerank: bool = False) -> SearchResponse:
        body = _with_collection({"text": text, "k": k, **({"rerank": True} if rerank else {})}, collection)
        return self._search_response(self._json("POST", "/v1/search", json=body))

    def search_similar(self, image_id: str, k: int = 10, collection: str | None = None,
                       rerank: bool = False) -> SearchResponse:
        body = _with_collection({"image_id": image_id, "k": k, **({"rerank": True} if rerank else {})},
                                collection)
        return self._search_response(self._json("POST", "/v1/search", json=body))

    def search(self, body: dict[str, Any], collection: str | None = None) -> SearchResponse:
        """POST /v1/search with any of its fields: one of text, image_id, query and positive (with
        negative), and k, offset, filter, mode, group_by, facets, rerank..."""
        answer = self._json("POST", "/v1/search", json=_with_collection(body, collection))
        return self._search_response(answer)

    def vlm_status(self, probe: bool = False) -> dict[str, Any]:
        """{"enabled", "url", "model", "status": off|up|down|unknown, "error", "checked_at"}."""
        return self._json("GET", "/v1/vlm", params={"probe": "true"} if probe else None)

    def explain_stream(self, query: str, image_id: str, collection: str | None = None) -> Iterator[str]:
        """Why the image matches the query, in pieces as the VLM writes them; ApiError when the API or
        the VLM fails (possibly after some pieces)."""
        body = _with_collection({"query": query, "image_id": image_id}, collection)
        try:
            with self._http.stream("POST", "/v1/explain/stream", json=body) as response:
                if response.is_error:
                    response.read()
                    raise ApiError(_detail(response), response.status_code)
                event = "message"
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        event = line.removeprefix("event:").strip()
                    elif line.startswith("data:"):
                        data = json.loads(line.removeprefix("data:"))
                        if event == "error":
                            raise ApiError(str(data.get("reason") or data.get("error") or "the VLM failed"))
                        if event == "message":
                            yield str(data.get("text", ""))
                        event = "message"
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ApiUnreachable(f"cannot reach the API at {self.base_url} ({exc})") from exc
        except httpx.HTTPError as exc:
            raise ApiError(f"the explanation stream broke off ({exc})") from exc
        except ValueError as exc:
            raise ApiError(f"unexpected explanation event: {exc}") from exc

    def search_image(
        self, data: bytes, filename: str = "query.jpg", k: int = 10, collection: str | None = None
    ) -> SearchResponse:
        form = _with_collection({"k": str(k)}, collection)
        body = self._json("POST", "/v1/search/image", files={"file": (filename, data)}, data=form)
        return self._search_response(body)

    def classify(
        self, data: bytes, labels: list[str], filename: str = "image.jpg", collection: str | None = None
    ) -> list[tuple[str, float]]:
        """(label, score) pairs, best first."""
        form = _with_collection({"labels": ",".join(labels)}, collection)
        body = self._json("POST", "/v1/classify", files={"file": (filename, data)}, data=form)
        try:
            return [(str(item["label"]), float(item["score"])) for item in body["labels"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ApiError(f"unexpected classify answer: {exc!r}") from exc

    def original(self, image_id: str, collection: str | None = None) -> Original:
        """The indexed file's own bytes, at full resolution, with the media type the API gave."""
        params = {"collection": collection} if collection else None
        response = self._request("GET", f"/v1/images/{_segment(image_id)}", params=params)
        media_type = response.headers.get("content-type", "application/octet-stream").split(";")[0]
        return Original(response.content, media_type)

    def image(self, image_id: str, collection: str | None = None) -> bytes:
        return self.original(image_id, collection).data


def _segment(value: str) -> str:
    """One URL path segment: an id or a name with "/" or "?" must not change the route."""
    return quote(value, safe="")


def _with_collection(body: dict[str, Any], collection: str | None) -> dict[str, Any]:
    # Omitted rather than null: the server's default collection then applies.
    return {**body, "collection": collection} if collection else body
