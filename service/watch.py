"""Read-only watchers of a live session: the fan-out behind ``WS /ws/watch/{session}`` (docs/protocol.md,
section 11) and the live view (docs/ui.md).

A session holds one :class:`Watchers` (``Session.watchers``) and calls it at two places: with each
accepted event packet (:meth:`Watchers.feed`) and with each prediction message it makes
(:meth:`Watchers.publish`). Both return at once when nobody watches. When someone does, ``feed``
counts the packet's events of the last two timesteps into a frame at the sensor's resolution (capped
at ``MAX_SIDE`` pixels a side) and, at most ``MAX_FPS`` times a second, hands each watcher the latest
completed one; ``publish`` hands each watcher the prediction. Handing over is an append to the
watcher's bounded queue, never a wait: a watcher that falls ``QUEUE_MESSAGES`` behind loses its oldest
messages, counted in ``dropped`` and ``asasnn_watch_dropped_total``, and the session never waits for
it. Text is made by each watcher's own sender, off the session's path.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
import zlib
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from prometheus_client import Counter, Gauge
from pydantic import BaseModel

from models.events.binner import BinnerConfig
from service.schemas import ModelSummary, SensorSpec
from service.telemetry import Metrics

QUEUE_MESSAGES = 32  # a watcher this far behind loses its oldest messages
MAX_FPS = 20.0  # frames per second sent to watchers, at most
MAX_SIDE = 256  # frames larger than this (pixels a side) are summed over square blocks to fit
MAX_WATCHERS = 8  # per session

# close codes of /ws/watch beyond those of /ws/infer (service/protocol.py); they mirror HTTP statuses
CLOSE_READ_ONLY = 4405  # "method not allowed": a watcher sent a message
CLOSE_UNKNOWN_SESSION = 4404


# ---- messages (server -> watcher) --------------------------------------------------------------------
class Binning(BaseModel):
    sensor: SensorSpec
    dt_us: int
    ds: int  # the network's input: frames of ceil(H/ds) x ceil(W/ds)


class WatchReady(BaseModel):
    """First message to a watcher: what the session streams and how its frames are laid out."""

    type: Literal["watching"] = "watching"
    session: str
    model: ModelSummary
    binning: Binning
    frame_shape: list[int]  # [2, rows, columns] of the watch frames (polarity 0 OFF, 1 ON)
    frame_block: int  # sensor pixels a side summed into one frame cell (1 up to MAX_SIDE pixels)
    max_fps: float
    queue: int  # messages a watcher may fall behind before its oldest are dropped
    demo: bool
    last: dict[str, Any] | None  # the session's latest prediction message, if it has made one


class WatchFrame(BaseModel):
    """The events of one timestep at the sensor's resolution: counts clipped to 255, uint8 in C order
    (``frame_shape``), zlib-compressed (``DecompressionStream("deflate")`` in a browser), base64."""

    type: Literal["frame"] = "frame"
    t_start_us: int  # the timestep [t_start_us, t_start_us + dt_us) on the session's grid
    events: int  # events in it (before clipping)
    encoding: Literal["zlib"] = "zlib"
    data: str
    dropped: int


class WatchEnd(BaseModel):
    type: Literal["end"] = "end"
    session: str
    reason: str  # the error code that ended the session (e.g. "stalled", "draining"), or "closed"


# ---- metrics ------------------------------------------------------------------------------------------
@dataclass
class WatchMetrics:
    dropped: Counter
    watchers: Gauge

    @classmethod
    def register(cls, metrics: Metrics) -> WatchMetrics:
        r = metrics.registry
        dropped = Counter(
            "asasnn_watch_dropped_total",
            "Messages to read-only watchers dropped because the watcher fell behind",
            ["kind"],
            registry=r,
        )
        for kind in ("prediction", "frame"):
            dropped.labels(kind)  # every series starts at 0
        watchers = Gauge(
            "asasnn_watchers", "Open read-only watchers (/ws/watch)", registry=r, multiprocess_mode="livesum"
        )
        return cls(dropped, watchers)


# ---- frames at the sensor's resolution ---------------------------------------------------------------
class FrameTap:
    """The latest completed timestep of a stream as a count image at the sensor's resolution.

    Only the events of the last two timesteps of each packet are counted (older ones of a long packet
    can never be the latest frame), so the cost follows the stream's live event rate, not a replay's.
    """

    def __init__(self, binning: BinnerConfig) -> None:
        s = binning.sensor
        self.block = max(1, math.ceil(max(s.width, s.height) / MAX_SIDE))
        self.h, self.w = math.ceil(s.height / self.block), math.ceil(s.width / self.block)
        self.dt = binning.dt_us
        self._t0: int | None = None
        self._k: int | None = None  # the open timestep held in _acc
        self._acc = np.zeros(0, np.int64)

    @property
    def shape(self) -> list[int]:
        return [2, self.h, self.w]

    def _count(self, ev: np.ndarray) -> np.ndarray:
        b, h, w = self.block, self.h, self.w
        flat = ev["p"].astype(np.int64) * (h * w) + (ev["y"] // b).astype(np.int64) * w + ev["x"] // b
        return np.bincount(flat, minlength=2 * h * w)

    def add(self, events: np.ndarray, t0: int) -> tuple[int, np.ndarray] | None:
        """Count a packet (sorted, validated) on the grid that starts at ``t0``; return the start and
        counts of the timestep it completed, if it completed one (the latest, when several)."""
        if t0 != self._t0:  # the first packet, or a reset started a new grid
            self._t0, self._k = t0, None
        t, dt = events["t"], self.dt
        k = (int(t[-1]) - t0) // dt
        i1 = int(np.searchsorted(t, t0 + k * dt))
        if k == self._k:
            self._acc += self._count(events[i1:])
            return None
        i0 = int(np.searchsorted(t, t0 + (k - 1) * dt))
        done = self._count(events[i0:i1])
        if self._k == k - 1:
            done += self._acc
        self._acc, self._k = self._count(events[i1:]), k
        return t0 + (k - 1) * dt, done


@dataclass
class _Frame:
    t_start_us: int
    counts: np.ndarray  # int64 [2 * h * w]: made for this frame alone, shared by the watchers


def encode_frame(f: _Frame, dropped: int) -> str:
    counts = np.minimum(f.counts, 255).astype(np.uint8)
    return WatchFrame(
        t_start_us=f.t_start_us,
        events=int(f.counts.sum()),
        data=base64.b64encode(zlib.compress(counts.tobytes(), 1)).decode("ascii"),
        dropped=dropped,
    ).model_dump_json()


# ---- the fan-out --------------------------------------------------------------------------------------
class Watcher:
    """One watcher's bounded queue: :meth:`offer` is called on the session's path and never waits;
    the watcher's sender awaits :meth:`next`."""

    def __init__(self, metrics: WatchMetrics, queue: int = QUEUE_MESSAGES) -> None:
        self._q: deque[dict[str, Any] | _Frame] = deque()
        self._cap = queue
        self._wake = asyncio.Event()
        self._metrics = metrics
        self.dropped = 0
        self.ended: str | None = None  # why the session ended, once it has

    def offer(self, item: dict[str, Any] | _Frame) -> None:
        if len(self._q) >= self._cap:
            old = self._q.popleft()  # the oldest goes: a live view wants the present
            self.dropped += 1
            self._metrics.dropped.labels("frame" if isinstance(old, _Frame) else "prediction").inc()
        self._q.append(item)
        self._wake.set()

    def end(self, reason: str) -> None:
        self.ended = reason
        self._wake.set()

    async def next(self) -> str | None:
        """The next message as JSON text; None once the session has ended and the queue is empty."""
        while not self._q:
            if self.ended is not None:
                return None
            self._wake.clear()
            await self._wake.wait()
        item = self._q.popleft()
        if isinstance(item, _Frame):
            return encode_frame(item, self.dropped)
        return json.dumps({**item, "dropped": self.dropped})


class Watchers:
    """A session's watchers, and what a listing shows of the session: its latest prediction, its age."""

    def __init__(self, binning: BinnerConfig) -> None:
        self.started = time.monotonic()
        self.last: dict[str, Any] | None = None
        self.subs: list[Watcher] = []
        self.ended: str | None = None
        self.frames = FrameTap(binning)
        # a token bucket, not a minimum interval: a real-time stream's timesteps come every dt with
        # jitter, and a strict 1/MAX_FPS interval would drop every other frame of a 20-step/s stream
        self._tokens, self._tokens_at = 1.0, self.started
        self._mark, self._rate = (self.started, 0), 0.0

    def feed(self, events: np.ndarray, t0: int | None) -> None:
        """An accepted packet (``Session.feed``) on the session's grid from ``t0``; nothing when unwatched."""
        if not self.subs or t0 is None or events.size == 0:
            return
        done = self.frames.add(events, t0)
        if done is None:
            return
        now = time.monotonic()
        self._tokens = min(2.0, self._tokens + (now - self._tokens_at) * MAX_FPS)
        self._tokens_at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            frame = _Frame(*done)
            for w in self.subs:
                w.offer(frame)

    def publish(self, msg: dict[str, Any]) -> None:
        """A step's prediction message (``Session.on_step``)."""
        self.last = msg
        for w in self.subs:
            w.offer(msg)

    def close(self, reason: str) -> None:
        """The session is over: every watcher gets ``end`` after what is queued (the first reason wins)."""
        if self.ended is None:
            self.ended = reason
            for w in self.subs:
                w.end(reason)

    def add(self, w: Watcher) -> None:
        self.subs.append(w)
        if self.ended is not None:
            w.end(self.ended)

    def remove(self, w: Watcher) -> None:
        if w in self.subs:
            self.subs.remove(w)

    def events_per_s(self, events: int) -> float:
        """Events/s over the last second or more (a fresh window at most once a second, however many
        pages poll the listing; 0 during the first second)."""
        now = time.monotonic()
        t0, n0 = self._mark
        if now - t0 >= 1.0:
            self._rate = max(events - n0, 0) / (now - t0)  # a reset zeroes the count: no negative rate
            self._mark = (now, events)
        return self._rate
