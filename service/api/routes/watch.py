"""``WS /ws/watch/{session}``: a read-only view of a live session (docs/protocol.md, section 11).

The watcher gets ``watching``, then the session's predictions and its frames (at most ``MAX_FPS`` a
second), then ``end``. It shares nothing with the session but a bounded queue that the session
fills without waiting (service/watch.py): a slow watcher loses messages, the stream never waits for
it. API keys and origins are checked as on ``/ws/infer``; anything a watcher sends ends the watch
(``read_only``, 4405) and never reaches the session.
"""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, WebSocket

from service import messages
from service.api.deps import key_problem, presented_key
from service.api.routes.ws import origin_allowed
from service.protocol import CLOSE_FORBIDDEN, CLOSE_NORMAL, CLOSE_TOO_MANY, CLOSE_UNAUTHORIZED, message_text
from service.state import ServiceState
from service.watch import (
    CLOSE_READ_ONLY,
    CLOSE_UNKNOWN_SESSION,
    MAX_FPS,
    MAX_WATCHERS,
    QUEUE_MESSAGES,
    Binning,
    WatchEnd,
    Watcher,
    WatchMetrics,
    WatchReady,
)

router = APIRouter(tags=["stream"])

_CLOSE_WAIT_S = 2.0  # a watcher that does not read cannot take a close frame either: give up on it


async def _close(ws: WebSocket, code: str | None, message: str, close_code: int) -> None:
    """Error message (when ``code``), then the close; bounded, since a stalled watcher blocks both."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(_CLOSE_WAIT_S):
            if code is not None:
                await ws.send_text(message_text(messages.error(code, message, fatal=True)))
            await ws.close(close_code, (code or "")[:100])


@router.websocket("/ws/watch/{session_id}")
async def watch(ws: WebSocket, session_id: str) -> None:
    state: ServiceState = ws.app.state.service
    metrics: WatchMetrics = ws.app.state.watch
    s = state.settings
    if not origin_allowed(ws, s.allowed_origins):
        return await ws.close(CLOSE_FORBIDDEN)
    await ws.accept()
    problem = key_problem(s, presented_key(ws, allow_query=True))
    if problem is not None:
        return await _close(ws, "unauthorized", problem, CLOSE_UNAUTHORIZED)
    session = next((x for x in state.streams if x.id == session_id), None)
    if session is None or state.registry is None:
        return await _close(
            ws, "unknown_session", f"no live session {session_id!r} (GET /v1/sessions lists them)", CLOSE_UNKNOWN_SESSION
        )
    if len(session.watchers.subs) >= MAX_WATCHERS:
        return await _close(
            ws, "too_many_watchers", f"session {session_id} has {MAX_WATCHERS} watchers already", CLOSE_TOO_MANY
        )
    b = session.cfg.binner
    ready = WatchReady(
        session=session.id,
        model=state.summary(state.registry.get(session.model)),
        binning=Binning(sensor={"width": b.sensor.width, "height": b.sensor.height}, dt_us=b.dt_us, ds=b.ds),
        frame_shape=session.watchers.frames.shape,
        frame_block=session.watchers.frames.block,
        max_fps=MAX_FPS,
        queue=QUEUE_MESSAGES,
        demo=session.id in ws.app.state.demos.running,
        last=session.watchers.last,
    )
    w = Watcher(metrics)
    session.watchers.add(w)
    metrics.watchers.inc()
    loop = asyncio.get_running_loop()
    sender = loop.create_task(_send(ws, w, ready.model_dump_json(), session.id))
    receiver = loop.create_task(ws.receive())
    try:
        done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        if receiver in done and not receiver.cancelled() and receiver.exception() is None:
            msg = receiver.result()
            if msg["type"] == "websocket.receive":  # the watcher spoke: it may not (nothing is passed on)
                sender.cancel()
                await _close(
                    ws,
                    "read_only",
                    f"this socket only watches session {session_id}; it takes no messages (stream into /ws/infer)",
                    CLOSE_READ_ONLY,
                )
        elif sender in done and not sender.cancelled() and sender.result():  # the session ended
            await _close(ws, None, "", CLOSE_NORMAL)
    finally:
        for t in (sender, receiver):
            t.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(sender, receiver, return_exceptions=True)
        session.watchers.remove(w)
        metrics.watchers.dec()


async def _send(ws: WebSocket, w: Watcher, first: str, session_id: str) -> bool:
    """Forward the watcher's queue; True when the session ended (``end`` sent), False when the
    watcher went away."""
    try:
        await ws.send_text(first)
        while (text := await w.next()) is not None:
            await ws.send_text(text)
        await ws.send_text(WatchEnd(session=session_id, reason=w.ended or "closed").model_dump_json())
    except Exception:  # noqa: BLE001 - the watcher went away (any transport error)
        return False
    return True
