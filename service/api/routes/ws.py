"""``WS /ws/infer``: one streaming session per connection, protocol v1 (docs/protocol.md).

The receive loop below reads one message at a time and hands it to the session; a sender task
forwards the session's outbox (predictions, warnings, errors) to the socket in order. A refused
message is answered with an ``error`` message and the session goes on; only ``fatal`` errors
(bad start, unknown model, idle timeout, stalled client, engine failure) end it, with a close code
that mirrors an HTTP status (4400, 4401, 4404, 4408, 4429, 4500, 4503). A connection must send its
``start`` within ``start_timeout_s`` and counts against ``max_pending_connections`` until it does,
not against ``max_sessions``; a browser page of another origin is refused before the handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from models.events.types import EVENT_BYTES
from service import messages, snapshot
from service.api.deps import StateDep, key_problem, presented_key
from service.logs import fields
from service.protocol import (
    CLOSE_BAD_START,
    CLOSE_FORBIDDEN,
    CLOSE_IDLE,
    CLOSE_INTERNAL,
    CLOSE_NORMAL,
    CLOSE_RESTART,
    CLOSE_TOO_MANY,
    CLOSE_UNAUTHORIZED,
    CLOSE_UNAVAILABLE,
    CLOSE_UNKNOWN_MODEL,
    ProtocolError,
    decode_packet,
    message_text,
    parse_control,
    parse_start,
)
from service.registry import ModelNotFound
from service.schemas import (
    AdvanceMessage,
    FlushMessage,
    ResetMessage,
    SnapshotMessage,
    StartMessage,
    StopMessage,
)
from service.session import Session
from service.snapshot import SnapshotError
from service.state import ServiceState

router = APIRouter(tags=["stream"])
Message = dict[str, Any]
log = logging.getLogger("asasnn.ws")

_FATAL_CLOSE = {
    "unauthorized": CLOSE_UNAUTHORIZED,
    "start_timeout": CLOSE_IDLE,
    "too_many_pending": CLOSE_TOO_MANY,
    "unknown_model": CLOSE_UNKNOWN_MODEL,
    "idle_timeout": CLOSE_IDLE,
    "too_many_sessions": CLOSE_TOO_MANY,
    "not_ready": CLOSE_UNAVAILABLE,
    "unavailable": CLOSE_UNAVAILABLE,
    "model_unavailable": CLOSE_UNAVAILABLE,
    "internal": CLOSE_INTERNAL,
    "draining": CLOSE_RESTART,
}

_DRAINING = "this server is shutting down; connect again (another replica takes the stream)"


def _client(ws: WebSocket) -> str | None:
    return f"{ws.client.host}:{ws.client.port}" if ws.client else None


async def _refuse(ws: WebSocket, state: ServiceState, code: str, message: str) -> None:
    """End a connection that never got a session: error message, close code, metric, log line."""
    state.metrics.sessions_rejected.labels(code).inc()
    log.info("session refused", extra=fields(reason=code, client=_client(ws)))
    with contextlib.suppress(Exception):
        await ws.send_text(message_text(messages.error(code, message, fatal=True)))
        await ws.close(_FATAL_CLOSE.get(code, CLOSE_BAD_START), code)


@router.websocket("/ws/infer")
async def infer(ws: WebSocket, state: StateDep) -> None:
    s = state.settings
    if not origin_allowed(ws, s.allowed_origins):  # a page of another site: refused before the handshake
        state.metrics.sessions_rejected.labels("forbidden_origin").inc()
        log.info("session refused", extra=fields(reason="forbidden_origin", client=_client(ws),
                                                 origin=ws.headers.get("origin")))
        return await ws.close(CLOSE_FORBIDDEN)
    await ws.accept()
    problem = key_problem(s, presented_key(ws, allow_query=True))
    if problem is not None:
        return await _refuse(ws, state, "unauthorized", problem)
    if state.draining:
        return await _refuse(ws, state, "draining", _DRAINING)
    if not state.ready:
        return await _refuse(
            ws, state, "not_ready", state.load_error or "models are still loading; retry shortly"
        )
    if state.pending >= s.max_pending_connections:
        return await _refuse(
            ws,
            state,
            "too_many_pending",
            f"{state.pending} connections are waiting to start (limit {s.max_pending_connections}); send 'start' "
            "right after connecting",
        )
    state.pending += 1
    try:
        msg = await _receive(ws, s.start_timeout_s)
    finally:
        state.pending -= 1
    if msg is None:
        return await _refuse(ws, state, "start_timeout", f"no start message within {s.start_timeout_s:g} s")
    if msg["type"] == "websocket.disconnect":
        return
    if state.connections >= s.max_sessions:
        return await _refuse(
            ws, state, "too_many_sessions", f"the server is at its limit of {s.max_sessions} sessions"
        )
    state.connections += 1
    try:
        await _serve(ws, state, msg)
    finally:
        state.connections -= 1


def origin_allowed(ws: WebSocket, allowed: list[str]) -> bool:
    """A browser's ``Origin`` must be this server (same host and port) or in ``allowed``
    (``scheme://host[:port]``, or ``*`` for any); a client that sends none is not a browser page."""
    origin = ws.headers.get("origin")
    if origin is None or "*" in allowed or origin.rstrip("/") in {o.rstrip("/") for o in allowed}:
        return True
    host = ws.headers.get("host", "")
    return urlsplit(origin).netloc.lower() == host.lower() and host != ""


async def _serve(ws: WebSocket, state: ServiceState, msg: Message) -> None:
    if msg.get("text") is None:
        return await _refuse(
            ws, state, "not_started", "the first message must be a JSON 'start' message, not binary"
        )
    try:
        start = parse_start(msg["text"])
        if state.draining:  # the drain began while this connection waited for its start message
            raise ProtocolError("draining", _DRAINING, fatal=True)
        session = await _open(state, start)
    except ProtocolError as e:
        return await _refuse(ws, state, e.code, e.message)
    resumed = await _resume(ws, state, session) if start.resume else None
    _emit_ready(state, session, resumed)
    state.add_stream(session)
    client = _client(ws)
    b = session.cfg.binner
    log.info(
        "session opened",
        extra=fields(session=session.id, model=session.model, client=client, sensor=f"{b.sensor.width}x"
                     f"{b.sensor.height}", dt_us=b.dt_us, ds=b.ds),
    )
    t0, reason = time.monotonic(), "internal"
    try:
        reason = await _run(ws, state, session)
    finally:
        state.remove_stream(session)
        await session.close()
        log.info(
            "session ended",
            extra=fields(session=session.id, model=session.model, client=client, reason=reason,
                         duration_s=round(time.monotonic() - t0, 3), steps=session.totals.steps,
                         events=session.events),
        )


async def _open(state: ServiceState, start: StartMessage) -> Session:
    assert state.registry is not None and state.engine is not None
    try:
        entry = state.registry.get(start.model)
    except ModelNotFound as e:
        raise ProtocolError("unknown_model", str(e), fatal=True) from None
    if entry.runner is None:
        raise ProtocolError(
            "model_unavailable", f"model {entry.name!r} did not load: {entry.error}", fatal=True
        )
    cfg = state.session_config(
        entry,
        sensor=start.sensor,
        dt_us=start.dt_us,
        ds=start.ds,
        t_start_us=start.t_start_us,
        readout=start.readout,
        output=start.output,
    )
    session = Session(state.engine, state.worker(entry), cfg)
    await session.open()
    return session


async def _resume(ws: WebSocket, state: ServiceState, session: Session) -> dict[str, Any] | None:
    """``start`` asked to resume: the next message must be a snapshot. Restore it, or say why not
    (an ``error`` that is not fatal: the session then starts from rest)."""
    s = state.settings
    msg = await _receive(ws, s.start_timeout_s)
    try:
        if msg is None or msg.get("bytes") is None:
            raise SnapshotError("snapshot_missing", "'resume' needs the snapshot as the next (binary) message")
        snap = snapshot.decode(msg["bytes"], state.snapshot_key)
        snapshot.check_binding(snap, session.worker.identity, s.snapshot_max_age_s)
        await session.restore(snap)
    except SnapshotError as e:
        state.metrics.snapshots.labels(session.model, e.code).inc()
        session.emit(ProtocolError(e.code, f"{e.message}; the session starts from rest").to_message())
        log.info("snapshot refused", extra=fields(session=session.id, model=session.model, reason=e.code))
        return None
    state.metrics.snapshots.labels(session.model, "resumed").inc()
    return {"step": session.next_index, "messages": session.messages, "events": session.events}


def _emit_ready(state: ServiceState, session: Session, resumed: dict[str, Any] | None) -> None:
    assert state.registry is not None
    entry, cfg = state.registry.get(session.model), session.cfg
    b = cfg.binner
    session.emit(
        messages.ready(
            session.id,
            resumed,
            model=state.summary(entry).model_dump(),
            binning={
                "sensor": {"width": b.sensor.width, "height": b.sensor.height},
                "dt_us": b.dt_us,
                "ds": b.ds,
                "mode": b.mode,
                "max_gap_steps": b.max_gap_bins,
                "t_start_us": cfg.t_start_us,
            },
            readout=cfg.readout.model_dump(),
            output=cfg.output.model_dump(),
            limits={
                "max_packet_bytes": state.settings.max_packet_bytes,
                "max_packet_events": state.settings.max_packet_bytes // EVENT_BYTES,
                "max_events_per_second": state.settings.max_events_per_second,
                "max_queue_steps": cfg.limits.max_queue_steps,
                "backpressure": cfg.limits.backpressure,
                "idle_timeout_s": state.settings.idle_timeout_s,
                "snapshot_bytes": session.snapshot_bytes(),
            },
        )
    )


async def _run(ws: WebSocket, state: ServiceState, session: Session) -> str:
    """Serve the session until it ends; return why it ended (an error code, ``stop``, ``disconnected``)."""
    s, m = state.settings, state.metrics
    sender = asyncio.get_running_loop().create_task(_send_loop(ws, state, session))
    close_code = CLOSE_NORMAL
    reason = "disconnected"
    idle = IdleTimer(s.idle_timeout_s)
    try:
        while not sender.done():
            msg = await idle.receive(ws)
            if msg is None:
                e = ProtocolError(
                    "idle_timeout",
                    f"no message for {s.idle_timeout_s:.0f} s; closing the session",
                    fatal=True,
                )
                session.emit(e.to_message())
                close_code, reason = CLOSE_IDLE, e.code
                break
            arrived = time.perf_counter()
            if msg["type"] == "websocket.disconnect":
                return reason
            try:
                async with session.lock:  # a snapshot falls between two messages
                    if msg.get("bytes") is not None:
                        data: bytes = msg["bytes"]
                        session.messages += 1
                        try:
                            events = decode_packet(data, s.max_packet_bytes)
                        except ProtocolError as e:
                            m.messages_rejected.labels(session.model, e.code).inc()
                            m.events_rejected.labels(session.model, e.code).inc(len(data) // EVENT_BYTES)
                            raise
                        await session.feed(events, arrived)
                    elif await _control(state, session, msg.get("text") or "", arrived):
                        reason = "stop"
                        break
            except ProtocolError as e:
                session.emit(e.to_message())
                if e.fatal:
                    close_code, reason = _FATAL_CLOSE.get(e.code, CLOSE_BAD_START), e.code
                    break
        if sender.done() and session.failed is not None:  # ended by the server (stalled, internal, draining)
            reason = session.failed.code
        session.outbox.put_nowait(({"type": "__close__", "code": close_code}, None))
        with contextlib.suppress(asyncio.TimeoutError, Exception):
            await asyncio.wait_for(asyncio.shield(sender), 10.0)
        return reason
    except WebSocketDisconnect:
        return reason
    finally:
        idle.close()
        if not sender.done():
            sender.cancel()
            with contextlib.suppress(BaseException):
                await sender


async def _receive(ws: WebSocket, seconds: float) -> Message | None:
    """The next message, or None when none came within ``seconds``. ``asyncio.timeout`` adds no task
    and no extra turn of the event loop per message, which ``asyncio.wait_for`` does before 3.12."""
    try:
        async with asyncio.timeout(seconds):
            return await ws.receive()
    except TimeoutError:
        return None


class IdleTimer:
    """The idle timeout of a session's receive loop: one timer for the whole session, pushed back
    lazily, instead of an ``asyncio.timeout`` armed and disarmed around every message (a timer handle
    and two heap operations per packet, at thousands of packets a second). Only the wait for the
    next message counts as idle, not the time the session spends handling one (backpressure)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._task = asyncio.current_task()
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()  # when the current (or last) wait for a message began
        self._waiting = False
        self._fired = False
        self._handle = self._loop.call_at(self._last + seconds, self._check)

    def _check(self) -> None:
        now = self._loop.time()
        if self._waiting and now - self._last >= self.seconds:
            self._fired = True
            assert self._task is not None
            self._task.cancel()
        else:  # a message came since (or one is being handled): look again when it could be idle
            self._handle = self._loop.call_at(max(self._last, now) + self.seconds, self._check)

    async def receive(self, ws: WebSocket) -> Message | None:
        """The next message, or None after ``seconds`` without one."""
        self._waiting = True
        self._last = self._loop.time()  # idle from here: the time spent on the last message is not
        try:
            return await ws.receive()
        except asyncio.CancelledError:
            assert self._task is not None
            if self._fired and self._task.uncancel() == 0:
                return None
            raise
        finally:
            self._waiting = False

    def close(self) -> None:
        self._handle.cancel()


async def _control(state: ServiceState, session: Session, text: str, arrived: float) -> bool:
    """Handle one text message; True when the session is over (``stop``)."""
    try:
        ctl = parse_control(text)
    except ProtocolError as e:
        session.metrics.messages_rejected.labels(session.model, e.code).inc()
        raise
    if isinstance(ctl, SnapshotMessage):
        await session.send_snapshot(state.snapshot_key)
        return False
    if not isinstance(ctl, StopMessage):
        session.messages += 1  # reset, flush, advance change the state; a client replays them
    if isinstance(ctl, ResetMessage):
        await session.reset()
    elif isinstance(ctl, FlushMessage):
        await session.flush(arrived)
    elif isinstance(ctl, AdvanceMessage):
        await session.advance(ctl.t_us, arrived)
    elif isinstance(ctl, StopMessage):
        summary = await session.finish(arrived)
        session.emit(messages.end(session.id, summary))
        return True
    return False


async def _send_loop(ws: WebSocket, state: ServiceState, session: Session) -> None:
    """Forward the outbox in order; close the socket after a fatal error or the close marker."""
    e2e = state.metrics.e2e_latency.labels(session.model)
    while True:
        msg, arrived_at = await session.outbox.get()
        if isinstance(msg, bytes):  # a snapshot
            try:
                await ws.send_bytes(msg)
            except Exception:  # noqa: BLE001 - the client went away
                session.abort()
                return
            continue
        if msg["type"] == "__close__":
            with contextlib.suppress(Exception):
                await ws.close(msg["code"])
            return
        try:
            await ws.send_text(message_text(msg))
        except Exception:  # noqa: BLE001 - the client went away (any transport error)
            session.abort()  # a receive loop blocked on backpressure must not wait for the stall timeout
            return
        if arrived_at is not None:
            e2e.observe(time.perf_counter() - arrived_at)
        session.on_sent()
        if msg["type"] == "error" and msg.get("fatal"):
            with contextlib.suppress(Exception):
                await ws.close(_FATAL_CLOSE.get(msg["code"], CLOSE_BAD_START), msg["code"][:100])
            return
