"""Liveness and readiness probes (no API key: orchestrators call them)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.api.deps import StateDep
from service.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz(state: StateDep) -> Health:
    """The process is up and its engine loop runs (or has not been started yet)."""
    engine_ok = state.engine is None or state.engine.running
    return Health(status="ok" if engine_ok else "engine_stopped", detail={"engine_running": engine_ok})


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(state: StateDep):
    """Ready to serve: the default model is loaded, the engine loop runs and the server is not draining."""
    reg = state.registry
    detail = {
        "models": {n: (e.loaded, e.error) for n, e in reg.entries.items()} if reg else {},
        "default": reg.default_name if reg else None,
        "sessions": state.connections,
        "max_sessions": state.settings.max_sessions,
    }
    if state.draining:
        detail["reason"] = "draining: shutting down, no new streams"
        return JSONResponse(Health(status="draining", detail=detail).model_dump(), status_code=503)
    ok = state.ready and state.engine is not None and state.engine.running
    if not ok:
        detail["reason"] = state.load_error or ("models loading" if not state.ready else "engine stopped")
        return JSONResponse(Health(status="not_ready", detail=detail).model_dump(), status_code=503)
    return Health(status="ready", detail=detail)
