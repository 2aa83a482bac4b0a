"""Dependencies the routes ask for; all of them live on the app, made once by `create_app`.

`async def` although they never wait: FastAPI runs a plain `def` dependency in its thread pool, a
hop per dependency per request (a search asks for four) for reading an attribute."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from indexer.settings import Settings
from indexer.vlm import Vlm
from search_api.engines import Engines
from search_api.jobs import VectorJobs
from search_api.metrics import Metrics


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_engines(request: Request) -> Engines:
    return request.app.state.engines


async def get_jobs(request: Request) -> VectorJobs:
    return request.app.state.jobs


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def get_vlm(request: Request) -> Vlm:
    return request.app.state.vlm


SettingsDep = Annotated[Settings, Depends(get_settings)]
EnginesDep = Annotated[Engines, Depends(get_engines)]
JobsDep = Annotated[VectorJobs, Depends(get_jobs)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
VlmDep = Annotated[Vlm, Depends(get_vlm)]
