"""A small Python client for the service: streaming over ``/ws/infer`` and REST classification.

Async::

    async with await StreamSession.connect("ws://127.0.0.1:8000/ws/infer", model="default") as s:
        for packet in packets:
            await s.send_events(packet)
        end = await s.stop()          # flushes, waits for every prediction, returns the summary
        print(s.predictions[-1]["label"], end["label"])

A session may outlive the server's: ``StreamSession.connect(url, reconnect=Reconnect())`` reconnects
when the server drains or restarts (close code 1012 and the like) and carries on from the next packet
in a new session, which starts from rest (see :class:`Reconnect`). With ``resume=Resume()`` as well,
the new session continues the old one instead: the client keeps the latest snapshot of its session
(taken every ``snapshot_every_s`` and when the server drains) and the messages it sent after it,
and on reconnection resumes from the snapshot and replays them (see :class:`Resume`).

Sync: :func:`stream_events` (a whole recording, optional pacing) and :func:`classify` /
:func:`classify_batch` (``POST /v1/classify``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections import deque
from collections.abc import AsyncIterable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import httpx
import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from service.protocol import encode_packet

Message = dict[str, Any]


class ServiceError(RuntimeError):
    """The server answered with an error message (``code`` as in docs/protocol.md)."""

    def __init__(self, code: str, message: str, close_code: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.close_code = code, message, close_code


def http_base(url: str) -> str:
    """``ws://h:p/ws/infer`` or ``http://h:p/...`` -> ``http://h:p``."""
    u = urlparse(url)
    scheme = {"ws": "http", "wss": "https"}.get(u.scheme, u.scheme)
    return urlunparse((scheme, u.netloc, "", "", "", ""))


def ws_url(url: str) -> str:
    """``http://h:p`` -> ``ws://h:p/ws/infer``; a ws URL is kept as it is."""
    u = urlparse(url)
    if u.scheme in ("ws", "wss"):
        return (
            url if u.path not in ("", "/") else urlunparse((u.scheme, u.netloc, "/ws/infer", "", u.query, ""))
        )
    scheme = "wss" if u.scheme == "https" else "ws"
    return urlunparse((scheme, u.netloc, "/ws/infer", "", "", ""))


RETRY_CODES = frozenset(
    {1001, 1006, 1011, 1012, 4500, 4503}
)  # going away, lost, server error, drain, not ready
BUSY_CODES = frozenset({4429})  # replica full: retry, but later


@dataclass(frozen=True)
class Reconnect:
    """When and how a :class:`StreamSession` reconnects after the server ended its session
    (docs/deploy.md, "What a client does on reconnect").

    On a close code in ``retry_codes`` (1012 drain, 1001 going away, 1006 connection lost, 1011 / 4500
    server error, 4503 not ready) or ``busy_codes`` (4429 replica full, waited at least ``busy_delay_s``),
    and on a connection that cannot be opened, the session waits (exponential backoff with jitter:
    ``initial_delay_s`` doubling up to ``max_delay_s``, each delay stretched by up to ``jitter``), opens a
    new connection to the same URL, sends the same ``start`` and carries on with the next packet. Any
    other close code (4400 bad start, 4401 API key, 4404 unknown model, 4408 idle, 1000 after ``stop``)
    ends the session as without a policy; so do ``max_attempts`` failed attempts in a row.

    The new session is a new session of the server: **its state starts from rest** (membranes, attention
    statistics, readout; nothing is migrated), its step indices count from 0 again, and events sent
    after the old session's last prediction and before the new ``ready`` are lost.
    """

    max_attempts: int | None = 10  # failed attempts in a row before giving up; None: never give up
    initial_delay_s: float = 0.2
    max_delay_s: float = 10.0
    jitter: float = 0.5
    busy_delay_s: float = 5.0
    retry_codes: frozenset[int] = RETRY_CODES
    busy_codes: frozenset[int] = BUSY_CODES

    def retries(self, close_code: int | None) -> bool:
        """Whether a session closed with ``close_code`` (None: could not connect) is retried."""
        return close_code is None or close_code in self.retry_codes or close_code in self.busy_codes

    def delay(self, attempt: int, close_code: int | None = None) -> float:
        """Seconds to wait before attempt ``attempt`` (1, 2, ...)."""
        d = min(self.max_delay_s, self.initial_delay_s * 2 ** (attempt - 1))
        d *= 1 + self.jitter * random.random()
        if close_code in self.busy_codes:
            d = max(d, self.busy_delay_s)
        return d


@dataclass(frozen=True)
class Resume:
    """Resumable sessions (docs/protocol.md, "Snapshots"), used with :class:`Reconnect`.

    The client asks for its session's snapshot every ``snapshot_every_s`` (and the server sends one
    when it drains) and keeps the latest, and every state-changing message it sent after it (event
    packets, ``reset``, ``flush``, ``advance``), at most ``max_replay_messages``. On reconnection it
    sends ``start`` with ``"resume": true`` and the snapshot, then replays those messages: the new
    session continues exactly where the snapshot left, and the predictions it recomputes for steps
    already received are dropped, so ``predictions`` holds every step once, in order. Without a
    snapshot, after more than ``max_replay_messages`` messages since the last one, or when the server
    refuses the snapshot (an ``error`` such as ``snapshot_expired``), the new session starts from
    rest as with :class:`Reconnect` alone."""

    snapshot_every_s: float = 5.0
    max_replay_messages: int = 100_000


async def _open_session(
    url: str,
    start: Message,
    headers: dict[str, str] | None,
    open_timeout: float,
    snapshot: bytes | None = None,
) -> tuple[ClientConnection, Message]:
    """Connect, send ``start`` (and the snapshot, to resume), wait for ``ready``; :class:`ServiceError`
    on refusal. A refused snapshot comes as a non-fatal ``error`` before ``ready``: it is put into
    ``ready["refused"]``."""
    # No keepalive pings: a server holding this session under backpressure stops reading the socket,
    # so it cannot answer them (docs/protocol.md); its idle and stall timeouts cover dead peers.
    ws = await connect(
        ws_url(url), additional_headers=headers, open_timeout=open_timeout, max_size=2**24, ping_interval=None
    )
    with contextlib.suppress(ConnectionClosed):  # a refusal (say, a bad key) may close first
        await ws.send(json.dumps(start))
        if snapshot is not None:
            await ws.send(snapshot)
    refused = None
    while True:
        try:
            first = json.loads(await asyncio.wait_for(ws.recv(), open_timeout))
        except (ConnectionClosed, TimeoutError, json.JSONDecodeError) as e:
            code = ws.close_code
            await ws.close()
            raise ServiceError("closed", f"no ready message ({e})", code) from None
        if first.get("type") == "error" and not first.get("fatal") and snapshot is not None:
            refused = first  # the snapshot was refused; the session starts from rest
            continue
        break
    if first.get("type") != "ready":
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ws.wait_closed(), open_timeout)
        raise ServiceError(first.get("code", "unexpected"), first.get("message", str(first)), ws.close_code)
    if refused is not None:
        first["refused"] = refused
    return ws, first


@dataclass
class StreamSession:
    """An open session. A reader task files every server message into ``messages`` and the typed
    lists; ``on_message`` (if set) sees each one as it arrives. With a :class:`Reconnect` policy the
    session outlives the server's: see there. Each reconnection adds a client-side message
    ``{"type": "reconnected", "session": NEW_ID, "close_code": OLD_CODE, "attempts": N}``."""

    ws: ClientConnection
    ready: Message
    on_message: Callable[[Message], None] | None = None
    messages: list[Message] = field(default_factory=list)
    predictions: list[Message] = field(default_factory=list)
    warnings: list[Message] = field(default_factory=list)
    errors: list[Message] = field(default_factory=list)
    end: Message | None = None
    close_code: int | None = None
    reconnect: Reconnect | None = None
    reconnects: int = 0
    errors_recovered: int = 0  # the first this many ``errors`` were followed by a successful reconnection
    url: str = ""
    _start: Message = field(default_factory=dict)
    _headers: dict[str, str] | None = None
    _open_timeout: float = 10.0
    _queue: asyncio.Queue[Message | None] = field(default_factory=asyncio.Queue)
    _reader: asyncio.Task[None] | None = None
    _connected: asyncio.Event = field(default_factory=asyncio.Event)
    _closing: bool = False  # stop() or close() called: a close is the end, never retried
    resume: Resume | None = None
    snapshot: bytes | None = None  # the latest snapshot of this stream (with ``resume``)
    snapshot_messages: int = 0  # state-changing messages it holds
    _sent: int = 0  # state-changing messages sent (event packets, reset, flush, advance)
    _replay: deque[tuple[int, bytes | str]] = field(default_factory=deque)  # sent after the snapshot
    _pending_snapshot: Message | None = None  # its text header, waiting for the binary message
    _next_step: int = 0  # the next prediction step expected; a resumed session's repeats are dropped
    _snapshotter: asyncio.Task[None] | None = None

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        model: str | None = None,
        sensor: tuple[int, int] | None = None,
        dt_us: int | None = None,
        ds: int | None = None,
        t_start_us: int | None = None,
        readout: dict[str, Any] | None = None,
        output: dict[str, Any] | None = None,
        api_key: str | None = None,
        on_message: Callable[[Message], None] | None = None,
        open_timeout: float = 10.0,
        reconnect: Reconnect | None = None,
        resume: Resume | None = None,
    ) -> StreamSession:
        """Connect, send ``start``, wait for ``ready`` (raises :class:`ServiceError` on refusal; the
        first connection is not retried, whatever ``reconnect`` says). ``resume``: keep snapshots and
        continue the session on reconnection (:class:`Resume`; needs ``reconnect``)."""
        headers = {"X-API-Key": api_key} if api_key else None
        start: Message = {"type": "start", "version": 1}
        for k, v in (
            ("model", model),
            ("dt_us", dt_us),
            ("ds", ds),
            ("t_start_us", t_start_us),
            ("readout", readout),
            ("output", output),
        ):
            if v is not None:
                start[k] = v
        if sensor is not None:
            start["sensor"] = {"width": int(sensor[0]), "height": int(sensor[1])}
        ws, ready = await _open_session(url, start, headers, open_timeout)
        s = cls(ws, ready, on_message, reconnect=reconnect, url=url, resume=resume)
        s._start, s._headers, s._open_timeout = start, headers, open_timeout
        s._connected.set()
        s._reader = asyncio.get_running_loop().create_task(s._read())
        if resume is not None:
            s._snapshotter = asyncio.get_running_loop().create_task(s._snapshot_every(resume.snapshot_every_s))
        return s

    async def _snapshot_every(self, seconds: float) -> None:
        """Ask for the session's snapshot now and then (the reply is kept by the reader)."""
        while not self._closing:
            await asyncio.sleep(seconds)
            await self._connected.wait()
            with contextlib.suppress(ConnectionClosed):
                await self.ws.send(json.dumps({"type": "snapshot"}))

    def _record(self, data: bytes | str) -> None:
        """Count a state-changing message sent, and keep it for a replay after the snapshot."""
        self._sent += 1
        if self.resume is not None:
            self._replay.append((self._sent, data))
            if len(self._replay) > self.resume.max_replay_messages:
                self._replay.clear()  # too many to replay: the next reconnection starts from rest
                self.snapshot = None

    def _keep_snapshot(self, data: bytes) -> None:
        header, self._pending_snapshot = self._pending_snapshot, None
        if header is None or self.resume is None:
            return
        self.snapshot, self.snapshot_messages = data, int(header["messages"])
        while self._replay and self._replay[0][0] <= self.snapshot_messages:
            self._replay.popleft()

    async def __aenter__(self) -> StreamSession:  # noqa: PYI034 - final class
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _file(self, msg: Message) -> None:
        kind = msg.get("type")
        if kind == "prediction":
            if msg["step"] < self._next_step:
                return  # recomputed by a resumed session: the same prediction again
            self._next_step = msg["step"] + 1
        elif kind == "reset":
            self._next_step = 0
        elif kind == "snapshot":
            self._pending_snapshot = msg
        self.messages.append(msg)
        if kind == "prediction":
            self.predictions.append(msg)
        elif kind == "warning":
            self.warnings.append(msg)
        elif kind == "error":
            self.errors.append(msg)
        elif kind == "end":
            self.end = msg
        if self.on_message is not None:
            self.on_message(msg)
        self._queue.put_nowait(msg)

    async def _read(self) -> None:
        try:
            while True:
                try:
                    async for raw in self.ws:
                        if isinstance(raw, bytes):
                            self._keep_snapshot(raw)
                        else:
                            self._file(json.loads(raw))
                except ConnectionClosed:
                    pass  # the end of every session; close_code says how
                code = self.ws.close_code
                policy = self.reconnect
                if (
                    self._closing
                    or policy is None
                    or not policy.retries(code)
                    or not await self._reopen(code)
                ):
                    self.close_code = code
                    return
        finally:
            self._connected.set()  # senders waiting for a connection find it closed
            self._queue.put_nowait(None)

    async def _reopen(self, code: int | None) -> bool:
        """Reconnect after the server closed with ``code``; False when the policy gives up."""
        policy = self.reconnect
        assert policy is not None
        self._connected.clear()
        attempt, last = 0, code
        while policy.max_attempts is None or attempt < policy.max_attempts:
            attempt += 1
            await asyncio.sleep(policy.delay(attempt, last))
            if self._closing:
                return False
            resume = self.resume is not None and self.snapshot is not None
            start = {**self._start, "resume": True} if resume else self._start
            try:
                ws, ready = await _open_session(
                    self.url, start, self._headers, self._open_timeout, self.snapshot if resume else None
                )
            except ServiceError as e:
                if not policy.retries(e.close_code):
                    return False
                last = e.close_code
                continue
            except (OSError, TimeoutError, InvalidHandshake):
                last = None
                continue
            self.ws, self.ready = ws, ready
            self.reconnects += 1
            resumed = ready.get("resumed")
            if resumed is not None:  # the new session continues the snapshot: send what followed it
                with contextlib.suppress(ConnectionClosed):  # a failure here shows in the next read
                    for _, data in self._replay:
                        await ws.send(data)
            else:  # a session from rest: nothing of the old one carries over
                self._sent, self._next_step, self.snapshot = 0, 0, None
                self._replay.clear()
            if "refused" in ready:
                self._file(ready["refused"])
            self.errors_recovered = len(self.errors)
            self._connected.set()
            self._file(
                {
                    "type": "reconnected",
                    "session": ready["session"],
                    "close_code": code,
                    "attempts": attempt,
                    "resumed": resumed,
                }
            )
            return True
        return False

    @property
    def session_id(self) -> str:
        """The server's id of the current session (a new one after each reconnection)."""
        return str(self.ready["session"])

    async def _send(self, data: bytes | str, changes_state: bool = False) -> None:
        """Send on the current connection; with a policy, wait out a reconnection and send there.
        ``changes_state``: an event packet, ``reset``, ``flush`` or ``advance`` (counted, and kept for
        a replay with :class:`Resume`)."""
        while True:
            await self._connected.wait()
            ws = self.ws
            try:
                await ws.send(data)
                if changes_state:
                    self._record(data)
                return
            except ConnectionClosed:
                if self.reconnect is None or self._closing or self._reader is None or self._reader.done():
                    raise
                if self.ws is ws:  # the reader has not reconnected yet: wait for it
                    self._connected.clear()

    async def send_events(self, events: np.ndarray) -> None:
        await self._send(encode_packet(events), changes_state=True)

    async def send_bytes(self, data: bytes) -> None:
        await self._send(data, changes_state=True)

    async def send_json(self, msg: Message | str) -> None:
        text = msg if isinstance(msg, str) else json.dumps(msg)
        try:
            kind = json.loads(text).get("type") if isinstance(msg, str) else msg.get("type")
        except (ValueError, AttributeError):
            kind = None
        await self._send(text, changes_state=kind in ("reset", "flush", "advance"))

    async def reset(self) -> None:
        await self.send_json({"type": "reset"})

    async def flush(self) -> None:
        await self.send_json({"type": "flush"})

    async def advance(self, t_us: int) -> None:
        await self.send_json({"type": "advance", "t_us": int(t_us)})

    async def request_snapshot(self) -> None:
        """Ask for the session's snapshot now (kept in :attr:`snapshot` when it arrives)."""
        await self._send(json.dumps({"type": "snapshot"}))

    async def next_message(self, timeout: float = 10.0) -> Message | None:
        """The next server message in order (None once the connection closed)."""
        return await asyncio.wait_for(self._queue.get(), timeout)

    async def wait_for(self, kind: str, timeout: float = 10.0, code: str | None = None) -> Message:
        """Skip ahead to the next message of type ``kind`` (and ``code``); raise if the socket closes first."""
        while True:
            msg = await self.next_message(timeout)
            if msg is None:
                raise ServiceError("closed", f"connection closed before a {kind!r} message", self.close_code)
            if msg.get("type") == kind and (code is None or msg.get("code") == code):
                return msg

    async def stop(self, timeout: float = 60.0) -> Message:
        """Send ``stop`` and wait for the ``end`` summary (every prediction has arrived by then). With
        reconnections, the summary is the last session's."""
        self.end = None
        if self._snapshotter is not None:
            self._snapshotter.cancel()
        await self.send_json({"type": "stop"})
        self._closing = True
        if self._reader is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        if self.end is None:
            err = self.errors[-1] if self.errors else {"code": "closed", "message": "no end message"}
            raise ServiceError(err["code"], err["message"], self.close_code)
        return self.end

    async def close(self) -> None:
        self._closing = True
        if self._snapshotter is not None:
            self._snapshotter.cancel()
        await self.ws.close()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await self._reader


async def stream_async(
    url: str,
    packets: Iterable[np.ndarray] | AsyncIterable[np.ndarray],
    *,
    pace: float | None = None,
    **start: Any,
) -> StreamSession:
    """Stream packets in one session, ``stop`` at the end; return the finished session.

    ``pace``: send at ``pace`` times real time by the events' timestamps (None: as fast as possible).
    """
    from service.client.sources import Pacer

    pacer = Pacer(pace)
    s = await StreamSession.connect(url, **start)
    try:
        if isinstance(packets, AsyncIterable):
            async for p in packets:
                await asyncio.sleep(pacer.delay(p))
                await s.send_events(p)
        else:
            for p in packets:
                await asyncio.sleep(pacer.delay(p))
                await s.send_events(p)
        await s.stop()
    finally:
        await s.close()
    return s


def stream_events(
    url: str, packets: Iterable[np.ndarray], *, pace: float | None = None, **start: Any
) -> StreamSession:
    """Blocking form of :func:`stream_async`."""
    return asyncio.run(stream_async(url, packets, pace=pace, **start))


def _upload(name: str, data: Path | np.ndarray | bytes) -> tuple[str, bytes]:
    if isinstance(data, np.ndarray):
        return (name if name.endswith(".evt") else name + ".evt"), encode_packet(data)
    if isinstance(data, bytes):
        return name, data
    return data.name, Path(data).read_bytes()


def classify(
    url: str,
    recording: Path | str | np.ndarray | bytes,
    *,
    api_key: str | None = None,
    timeout: float = 120.0,
    filename: str = "recording",
    **options: Any,
) -> Message:
    """``POST /v1/classify``: a file path, events (sent in the wire format) or raw bytes."""
    rec = Path(recording) if isinstance(recording, str) else recording
    name, body = _upload(filename, rec)
    return _post(url, "/v1/classify", [("file", (name, body))], options, api_key, timeout)


def classify_batch(
    url: str,
    recordings: list[Path | str | np.ndarray],
    *,
    api_key: str | None = None,
    timeout: float = 300.0,
    **options: Any,
) -> Message:
    """``POST /v1/classify/batch``: several recordings, classified side by side."""
    files = []
    for i, r in enumerate(recordings):
        files.append(("files", _upload(f"recording{i}", Path(r) if isinstance(r, str) else r)))
    return _post(url, "/v1/classify/batch", files, options, api_key, timeout)


def _post(
    url: str, path: str, files: list[Any], options: dict[str, Any], api_key: str | None, timeout: float
) -> Message:
    headers = {"X-API-Key": api_key} if api_key else {}
    data = {
        k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in options.items() if v is not None
    }
    r = httpx.post(http_base(url) + path, files=files, data=data, headers=headers, timeout=timeout)
    if r.status_code != 200:
        try:
            detail = r.json().get("detail")
        except ValueError:
            detail = r.text
        if isinstance(detail, dict):
            raise ServiceError(
                detail.get("code", str(r.status_code)), detail.get("message", str(detail)), r.status_code
            )
        raise ServiceError(str(r.status_code), str(detail), r.status_code)
    return r.json()
