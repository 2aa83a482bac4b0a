"""clipsearch HTTP API (FastAPI): `create_app(settings)` builds it; `clipsearch serve` runs it."""

from search_api.app import create_app

__all__ = ["create_app"]
