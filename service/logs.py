"""One log format for the whole server (uvicorn's lines and the app's), text or JSON, and request ids.

:func:`configure_logging` gives the root logger and uvicorn's loggers one handler on stderr:

* ``text``: ``2026-12-01T07:50:01.123Z INFO asasnn.ws: session opened id=... model=default ...``;
* ``json``: one object per line, ``{"ts", "level", "logger", "message", ...}`` plus the record's
  structured fields (``session``, ``request_id``, ``status``, ...), for log shippers.

Structured fields are passed as ``extra={"fields": {...}}``; the text format appends them as
``key=value``. :class:`RequestLog` is the access log: one line per HTTP request with its request id
(the client's ``X-Request-ID`` when it sends one, else a new one), which is also returned in the
response's ``X-Request-ID`` header; uvicorn's own access log is switched off in its favour.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from starlette.types import ASGIApp, Message, Receive, Scope, Send

LogFormat = Literal["text", "json"]
_LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "asasnn")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

access_log = logging.getLogger("asasnn.access")


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None) or {}
        tail = "".join(f" {k}={v}" for k, v in fields.items())
        line = f"{_timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}{tail}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        obj.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        return json.dumps(obj, default=str)


class _WorkerTag(logging.Filter):
    """Adds ``worker=N`` to every line of a worker process (``asasnn serve --workers``)."""

    def __init__(self, worker: int) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        record.fields = {"worker": self.worker, **(getattr(record, "fields", None) or {})}
        return True


def configure_logging(level: str = "info", fmt: LogFormat = "text", worker: int | None = None) -> None:
    """Route the app's and uvicorn's loggers to one stderr handler of ``fmt`` at ``level``; in a
    worker process (``worker``: its index) every line says which."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    if worker is not None:
        handler.addFilter(_WorkerTag(worker))
    for name in _LOGGERS:
        lg = logging.getLogger(name)
        lg.handlers = [handler] if name == "" else []
        lg.propagate = name != ""
        lg.setLevel(level.upper())


def fields(**kw: Any) -> dict[str, Any]:
    """``extra=`` of a structured log call: ``log.info("...", extra=fields(session=...))``."""
    return {"fields": kw}


class RequestLog:
    """Access log with request ids for HTTP requests (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers", [])).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        status = 500
        t0 = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            client = scope.get("client")
            access_log.info(
                "%s %s %d",
                scope.get("method"),
                scope.get("path"),
                status,
                extra=fields(
                    request_id=rid,
                    status=status,
                    ms=round((time.perf_counter() - t0) * 1e3, 2),
                    client=f"{client[0]}:{client[1]}" if client else None,
                ),
            )
