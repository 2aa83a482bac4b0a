"""A small typed client for the clipsearch HTTP API: the UI's only way to reach the service.

Every failure becomes an `ApiError` carrying a message fit to show a person (the API's own
`detail` where it sent one), so the layout code never has to look at httpx exceptions.
"""

from __future__ import annotations

import os
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


@dataclass(frozen=True)
class SearchResponse:
    results: list[Hit]
    took_ms: float | None = None


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
            hits = [Hit(str(r["id"]), str(r.get("uri", "")), float(r["score"]), r.get("metadata") or {})
                    for r in body["results"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ApiError(f"unexpected search answer: {exc!r}") from exc
        return SearchResponse(hits, body.get("took_ms"))

    def health(self) -> dict[str, Any]:
        return self._json("GET", "/healthz")

    def collections(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "/v1/collections").get("collections", []))

    def search_text(self, text: str, k: int = 10) -> SearchResponse:
        return self._search_response(self._json("POST", "/v1/search", json={"text": text, "k": k}))

    def search_similar(self, image_id: str, k: int = 10) -> SearchResponse:
        return self._search_response(self._json("POST", "/v1/search", json={"image_id": image_id, "k": k}))

    def search_image(self, data: bytes, filename: str = "query.jpg", k: int = 10) -> SearchResponse:
        body = self._json("POST", "/v1/search/image", files={"file": (filename, data)}, data={"k": str(k)})
        return self._search_response(body)

    def classify(
        self, data: bytes, labels: list[str], filename: str = "image.jpg"
    ) -> list[tuple[str, float]]:
        """(label, score) pairs, best first."""
        body = self._json(
            "POST", "/v1/classify", files={"file": (filename, data)}, data={"labels": ",".join(labels)}
        )
        try:
            return [(str(item["label"]), float(item["score"])) for item in body["labels"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ApiError(f"unexpected classify answer: {exc!r}") from exc

    def image(self, image_id: str) -> bytes:
        return self._request("GET", f"/v1/images/{quote(image_id, safe='')}").content
