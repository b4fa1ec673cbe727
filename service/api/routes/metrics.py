"""Prometheus exposition of this app's registry (docs/metrics.md)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from service.api.deps import StateDep
from service.telemetry import CONTENT_TYPE_LATEST

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
async def metrics(state: StateDep) -> Response:
    if state.engine is not None:
        for name, w in state.engine.workers.items():
            state.metrics.queue_depth.labels(name).set(w.scheduler.depth)
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
