"""uvicorn with a drain on SIGTERM: ``asasnn serve`` runs the app through :class:`DrainingServer`.

uvicorn's own shutdown closes every open WebSocket with 1012 the moment it starts. A replica that is
being scaled down or rolled can do better for its streams (docs/deploy.md, "Draining"), so the first
SIGTERM starts a drain instead (:meth:`service.state.ServiceState.drain`):

1. new streams are refused (error ``draining``, close code 1012) and ``/readyz`` answers 503
   ``draining``; REST requests are still served;
2. every open stream gets a ``draining`` warning and may go on until it ends by itself (``stop``),
   for at most ``drain_timeout_s``;
3. streams still open then are closed with 1012 ("service restart": the client's cue to reconnect,
   which the router sends to another replica);

and only then uvicorn's shutdown runs (listeners closed, in-flight requests finished within
``timeout_graceful_shutdown`` = ``drain_timeout_s``, the app's lifespan shut down). A second SIGTERM,
or SIGINT (Ctrl-C), skips what is left of the drain.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from types import FrameType

import uvicorn

from service.config import Settings
from service.state import ServiceState

log = logging.getLogger("asasnn.server")


class DrainingServer(uvicorn.Server):
    """A :class:`uvicorn.Server` whose first SIGTERM drains ``state`` before shutting down."""

    def __init__(self, config: uvicorn.Config, state: ServiceState) -> None:
        super().__init__(config)
        self.state = state
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and self.started and self._drain is None and not self.should_exit:
            assert self._loop is not None
            self._captured_signals.append(sig)  # re-raised after the shutdown, as uvicorn does
            self._loop.call_soon_threadsafe(self.begin_drain)
            return
        super().handle_exit(sig, frame)

    def begin_drain(self) -> None:
        """Start the drain (on the event loop); the server exits when it is over."""
        if self._drain is None and self._loop is not None:
            self._drain = self._loop.create_task(self._drain_then_exit(), name="asasnn-drain")

    async def _drain_then_exit(self) -> None:
        try:
            await self.state.drain(self.state.settings.drain_timeout_s)
        except Exception:  # whatever happens, the shutdown must go on
            log.exception("drain failed")
        finally:
            self.should_exit = True


def serve(settings: Settings, worker: int | None = None, sockets: list[socket.socket] | None = None) -> int:
    """Run one server process until it is stopped (``asasnn serve``); ``worker`` and ``sockets``: as
    one of several worker processes on a socket bound by the parent (service/workers.py). Returns
    the exit status: 0, or 3 when the server did not start."""
    from service.logs import configure_logging
    from service.main import create_app

    configure_logging(settings.log_level, settings.log_format, worker)
    app = create_app(settings)
    server = DrainingServer(uvicorn_config(settings, app), app.state.service)
    server.run(sockets=sockets)
    return 0 if server.started else 3


def uvicorn_config(settings: Settings, app: object) -> uvicorn.Config:
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # configure_logging: one format for uvicorn's lines and the app's
        access_log=False,  # service.logs.RequestLog writes the access log, with request ids
        **settings.uvicorn_ws_options,
        timeout_graceful_shutdown=max(1, round(settings.drain_timeout_s)),
    )
