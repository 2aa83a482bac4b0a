"""Dependencies the routes ask for; all of them live on the app, made once by `create_app`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from indexer.settings import Settings
from search_api.engines import EngineHolder
from search_api.metrics import Metrics


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_engines(request: Request) -> EngineHolder:
    return request.app.state.engines


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
EnginesDep = Annotated[EngineHolder, Depends(get_engines)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]

