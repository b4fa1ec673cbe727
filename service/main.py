"""The FastAPI app: ``create_app(settings)`` builds one; ``asasnn serve`` runs it under uvicorn."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from asasnn import __version__
from service.api.main import api_router
from service.config import Settings, load_settings
from service.demo import DemoSessions
from service.errors import ApiKeyGate, install_error_handlers
from service.logs import RequestLog
from service.state import ServiceState
from service.ui import install as install_ui
from service.watch import WatchMetrics

_UPLOAD_OVERHEAD = 64 * 1024  # multipart boundaries and form fields


def create_app(settings: Settings | None = None, loader: Any = None) -> FastAPI:
    """The app. ``loader(path, backend=, device=)`` builds a step runner from a bundle directory
    (default :func:`models.runtime.load_runner`; tests inject others)."""
    settings = settings or load_settings()
    state = ServiceState(settings, loader=loader)
    demos = DemoSessions(state)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.start()
        try:
            yield
        finally:
            await demos.close()
            await state.stop()

    app = FastAPI(
        title="ASA-SNN stream",
        version=__version__,
        summary="Spiking neural networks with Advanced Spatial Attention on DVS event streams",
        description="Stream events to `WS /ws/infer` (protocol v1, docs/protocol.md) or classify recordings.",
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc come from service/ui, with their assets served locally
        redoc_url=None,
    )
    app.state.service = state
    app.state.demos = demos
    app.state.watch = WatchMetrics.register(state.metrics)
    app.include_router(api_router)
    install_ui(app)
    install_error_handlers(app)
    app.add_middleware(
        UploadLimit,
        limits={
            "/v1/classify": settings.max_upload_bytes + _UPLOAD_OVERHEAD,
            "/v1/classify/batch": settings.max_batch_files * settings.max_upload_bytes + _UPLOAD_OVERHEAD,
        },
    )
    app.add_middleware(ApiKeyGate, settings=settings)  # before any body is read
    app.add_middleware(RequestLog)  # outermost: every request gets an id and an access-log line
    return app


class UploadLimit:
    """413 with a JSON message as soon as a request body is larger than its path's limit.

    Checks ``Content-Length`` before reading anything and counts the bytes as they arrive (chunked
    uploads), so an oversize upload is never buffered whole.
    """

    def __init__(self, app: ASGIApp, limits: dict[str, int]) -> None:
        self.app, self.limits = app, limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.limits.get(scope.get("path", "").rstrip("/")) if scope["type"] == "http" else None
        if limit is None:
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await _send_413(
                send, f"request body of {int(length)} bytes exceeds the limit of {limit} bytes"
            )
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise HTTPException(
                        413,
                        detail={
                            "code": "upload_too_large",
                            "message": f"request body exceeds the limit of {limit} bytes",
                        },
                    )
            return msg

        await self.app(scope, counted, send)


async def _send_413(send: Send, message: str) -> None:
    body = json.dumps({"detail": {"code": "upload_too_large", "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory service.main:app_from_env`` (settings from the environment)."""
    return create_app(load_settings())
