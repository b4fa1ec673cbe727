"""``GET /v1/sessions``: the live streams (what the live view lists), and demo sessions started and
stopped on request (service/demo.py, docs/ui.md)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, Field

from service.api.deps import AuthDep, StateDep
from service.demo import DemoError, DemoSessions
from service.schemas import ErrorResponse
from service.session import Session

router = APIRouter(prefix="/v1", tags=["live"], dependencies=[AuthDep])

_ERRORS: dict[int | str, dict[str, Any]] = {401: {"description": "missing or wrong API key", "model": ErrorResponse}}


class SessionInfo(BaseModel):
    id: str
    model: str
    demo: bool
    age_s: float
    steps: int  # since the start or the last reset
    events: int
    events_per_s: float  # over the last second or so
    label: str | None  # the latest prediction, None before the first step
    step: int | None
    truth: str | None = None  # demos: the class the synthetic camera is showing
    watchers: int
    sensor: list[int]  # [width, height]


class SessionList(BaseModel):
    sessions: list[SessionInfo]
    demos_running: int
    demos_max: int
    demo_duration_s: float


class DemoRequest(BaseModel):
    model: str | None = Field(None, description="a model name; default: the default model")


def demos(request: Request) -> DemoSessions:
    return request.app.state.demos


def session_info(s: Session, demo_truth: str | None, is_demo: bool) -> SessionInfo:
    w, b = s.watchers, s.cfg.binner
    last = w.last
    return SessionInfo(
        id=s.id,
        model=s.model,
        demo=is_demo,
        age_s=round(time.monotonic() - w.started, 3),
        steps=s.totals.steps,
        events=s.events,
        events_per_s=round(w.events_per_s(s.events), 1),
        label=None if last is None else last["label"],
        step=None if last is None else last["step"],
        truth=demo_truth,
        watchers=len(w.subs),
        sensor=[b.sensor.width, b.sensor.height],
    )


@router.get("/sessions", response_model=SessionList, responses=_ERRORS)
async def list_sessions(request: Request, state: StateDep) -> SessionList:
    """The open streaming sessions (WebSocket streams and demos), oldest first."""
    d = demos(request)
    infos = []
    for s in sorted(state.streams, key=lambda s: s.watchers.started):
        demo = d.running.get(s.id)
        infos.append(session_info(s, demo.truth if demo else None, demo is not None))
    return SessionList(
        sessions=infos, demos_running=len(d.running), demos_max=d.max_running, demo_duration_s=d.duration_s
    )


@router.post(
    "/demo",
    response_model=SessionInfo,
    status_code=status.HTTP_201_CREATED,
    responses={
        **_ERRORS,
        404: {"description": "unknown model", "model": ErrorResponse},
        429: {"description": "as many demos (or sessions) as allowed run already", "model": ErrorResponse},
        503: {"description": "models loading, or the server is draining", "model": ErrorResponse},
    },
)
async def start_demo(request: Request, body: DemoRequest | None = None) -> SessionInfo:
    """Start a demo session: the built-in synthetic camera streams into the server at real-time pace
    for a few minutes; watch it with ``WS /ws/watch/{id}`` or the live view."""
    try:
        demo = await demos(request).start(body.model if body else None)
    except DemoError as e:
        raise HTTPException(e.status, detail={"code": e.code, "message": e.message}) from None
    return session_info(demo.session, None, True)


@router.delete(
    "/demo/{session_id}",
    status_code=status.HTTP_202_ACCEPTED,
    responses={**_ERRORS, 404: {"description": "no such demo session", "model": ErrorResponse}},
)
async def stop_demo(session_id: str, request: Request) -> dict[str, str]:
    """Stop a demo session (it ends within a packet; its watchers get ``end``)."""
    if not demos(request).stop(session_id):
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail={"code": "unknown_session", "message": f"no demo session {session_id!r} is running"},
        )
    return {"session": session_id, "status": "stopping"}
