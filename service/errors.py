"""One error shape for every REST answer, and the API key checked before any body is read.

Every error is ``{"detail": {"code": ..., "message": ...}}`` (:class:`service.schemas.ErrorResponse`):
the routes' own errors, FastAPI's request validation (422 ``bad_request``), unknown paths and methods,
and anything unexpected (500 ``internal``, logged with its traceback; the connection stays usable).

:class:`ApiKeyGate` answers 401 to a request under ``/v1/`` without a valid key from its headers
alone, before the app (and so the multipart parser) reads a byte of its body: an unauthenticated
client cannot make the server read a 60 MiB upload.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from service.config import Settings

log = logging.getLogger("asasnn.errors")

_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"detail": {"code": code, "message": message}}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        d = exc.detail
        if isinstance(d, dict) and "code" in d and "message" in d:
            body = {"detail": d}
        else:
            body = error_body(_STATUS_CODES.get(exc.status_code, f"http_{exc.status_code}"), str(d))
        return JSONResponse(body, exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors()[:5]:
            loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            parts.append(f"{loc or 'request'}: {e.get('msg')}")
        return JSONResponse(error_body("bad_request", "; ".join(parts) or "invalid request"), 422)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal", f"internal error ({type(exc).__name__}); it was logged"), 500)


class ApiKeyGate:
    """401 for an HTTP request under ``/v1/`` whose headers carry no valid API key, before the app
    reads its body (see the module docstring). The routes check the key too (their dependency)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.settings.api_keys or not scope.get("path", "").startswith("/v1/"):
            return await self.app(scope, receive, send)
        from service.api.deps import key_problem, presented_key_from_headers

        problem = key_problem(self.settings, presented_key_from_headers(Headers(scope=scope)))
        if problem is None:
            return await self.app(scope, receive, send)
        body = json.dumps(error_body("unauthorized", problem)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
