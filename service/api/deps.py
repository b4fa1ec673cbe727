"""Dependencies shared by the routes: the app state, settings, API-key checks, the model lookup."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from starlette.requests import HTTPConnection

from service.config import Settings
from service.registry import ModelEntry, ModelNotFound
from service.state import ServiceState

API_KEY_HEADER = "X-API-Key"
WS_TOKEN_PARAM = "token"


def get_state(conn: HTTPConnection) -> ServiceState:
    return conn.app.state.service


StateDep = Annotated[ServiceState, Depends(get_state)]


def get_settings(state: StateDep) -> Settings:
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def presented_key(conn: HTTPConnection, allow_query: bool = False) -> str | None:
    """The API key a client sent: ``X-API-Key`` header, ``Authorization: Bearer <key>``, or (WebSocket
    only, since browsers cannot set headers there) the ``token`` query parameter."""
    key = presented_key_from_headers(conn.headers)
    if key is None and allow_query:
        return conn.query_params.get(WS_TOKEN_PARAM)
    return key


def presented_key_from_headers(headers: Mapping[str, str]) -> str | None:
    """The API key in ``X-API-Key`` or ``Authorization: Bearer <key>``."""
    key = headers.get(API_KEY_HEADER)
    if key:
        return key
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return None


def key_problem(settings: Settings, key: str | None) -> str | None:
    """None when ``key`` is acceptable, else a message saying what is wrong."""
    if not settings.api_keys:
        return None
    if not key:
        return (
            f"missing API key: send it in the {API_KEY_HEADER} header (or as ?{WS_TOKEN_PARAM}= on /ws/infer)"
        )
    ok = False
    for k in settings.api_keys:  # compare with every key, in constant time
        ok |= hmac.compare_digest(k.encode(), key.encode())
    return None if ok else "invalid API key"


def require_api_key(request: Request, settings: SettingsDep) -> None:
    problem = key_problem(settings, presented_key(request))
    if problem is not None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail={"code": "unauthorized", "message": problem},
            headers={"WWW-Authenticate": "Bearer"},
        )


AuthDep = Depends(require_api_key)


def ready_state(state: StateDep) -> ServiceState:
    if not state.ready:
        msg = state.load_error or "models are still loading"
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail={"code": "not_ready", "message": msg})
    return state


ReadyDep = Annotated[ServiceState, Depends(ready_state)]


def lookup_model(state: ServiceState, name: str | None) -> ModelEntry:
    """A loaded model by name (None: the default); 404 / 503 with the reason otherwise."""
    assert state.registry is not None
    try:
        entry = state.registry.get(name)
    except ModelNotFound as e:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, detail={"code": "unknown_model", "message": str(e)}
        ) from None
    if entry.runner is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail={
                "code": "model_unavailable",
                "message": f"model {entry.name!r} did not load: {entry.error}",
            },
        )
    return entry
