"""One stream (a WebSocket session, or a recording posted to ``/v1/classify``) from events to results.

A :class:`Session` owns a :class:`~models.events.FrameBinner` (stream time: bins follow the events'
own timestamps, never the wall clock), a readout, a state slot in its model's step runner and the
running totals. Streams and recordings run through *this same code*, the same binner and the same
runner, which is why classifying a recording gives exactly the predictions streaming it gives.

Memory is bounded whatever the client does:

* a packet is cut into chunks of at most ``CHUNK_STEPS`` timesteps and binned chunk by chunk;
* before each chunk the session waits until its step queue holds fewer than ``max_queue_steps``
  (backpressure: the WebSocket is not read meanwhile, so TCP pushes back on the client; the client
  gets one ``backpressure`` warning per episode). With ``backpressure="drop"`` a packet that arrives
  while the queue is full is refused instead (error ``overloaded``);
* the scheduler holds a session whose outbox (predictions not yet sent) reached ``max_outbox``, which
  fills its queue, which stops reading its socket.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from models.events.binner import BinnerConfig, FrameBinner, TimedFrames, split_by_bins
from models.events.types import EventError
from models.runtime.readout import Readout
from service import messages, snapshot
from service.engine import Engine, ModelWorker
from service.protocol import ProtocolError
from service.results import Totals
from service.scheduler import StepOutput
from service.schemas import OutputOptions, ReadoutOptions
from service.snapshot import Snapshot, SnapshotError
from service.telemetry import Metrics
from service.watch import Watchers

CHUNK_STEPS = 8  # most timesteps binned at once between backpressure checks


@dataclass(frozen=True)
class SessionLimits:
    max_queue_steps: int = 64
    max_outbox: int = 256
    backpressure: Literal["block", "drop"] = "block"
    max_events_per_second: float | None = None  # None: no rate limit (recordings)
    rate_burst_s: float = 1.0
    stall_timeout_s: float = 60.0  # longest backpressure wait before the session is ended


@dataclass(frozen=True)
class SessionConfig:
    binner: BinnerConfig
    t_start_us: int | None = None
    readout: ReadoutOptions = field(default_factory=ReadoutOptions)
    output: OutputOptions = field(default_factory=OutputOptions)
    limits: SessionLimits = field(default_factory=SessionLimits)


class Session:
    """See the module docstring. ``stream=True`` produces prediction messages into ``outbox``;
    ``keep_steps=True`` keeps every step's probabilities in ``step_log`` (REST ``include_steps``)."""

    def __init__(
        self,
        engine: Engine,
        worker: ModelWorker,
        cfg: SessionConfig,
        *,
        stream: bool = True,
        keep_steps: bool = False,
    ) -> None:
        self.id = uuid.uuid4().hex
        self.engine, self.worker, self.cfg = engine, worker, cfg
        self.model = worker.name
        self.metrics: Metrics = engine.metrics
        self.classes: list[str] = list(worker.runner.card.classes)
        self.stream, self.keep_steps = stream, keep_steps
        self.outbox: asyncio.Queue[tuple[dict[str, Any] | bytes, float | None]] = asyncio.Queue()
        # held while a client message is handled, and while a snapshot is taken: a snapshot falls
        # between two messages, and ``messages`` says how many it holds
        self.lock = asyncio.Lock()
        self.messages = 0  # state-changing client messages handled: packets, reset, flush, advance
        self.slot: int | None = None
        self.failed: ProtocolError | None = None
        self._room = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._tokens = (cfg.limits.max_events_per_second or 0) * cfg.limits.rate_burst_s
        self._tokens_at = time.monotonic()
        self._warned_backpressure = False
        self._held = False  # the scheduler skipped this session for a full outbox
        m, model = self.metrics, self.model  # the label children of the hot paths, looked up once
        self._m_events = m.events_received.labels(model)
        self._m_packets = m.packets_received.labels(model)
        # accepted input, added to the two counters above once per timestep rather than per packet
        self._unreported_events = self._unreported_packets = 0
        self._m_skipped = m.skipped_steps.labels(model)
        self._m_predictions: dict[int, Any] = {}
        self.watchers = Watchers(cfg.binner)  # read-only viewers (service/watch.py), never waited for
        self._new_epoch()

    def _new_epoch(self) -> None:
        self.binner = FrameBinner(self.cfg.binner, self.cfg.t_start_us)
        ro = self.cfg.readout
        self.readout = Readout(
            len(self.classes), ro.mode, ro.horizon or int(self.worker.runner.card.timesteps), ro.alpha or 0.1
        )
        self.next_index = 0
        self.events = 0
        self.first_t: int | None = None
        self.totals = Totals(self.worker.layers, np.asarray(self.worker.neurons, dtype=np.float64))
        self.step_log: list[dict[str, Any]] = []

    # ---- lifecycle --------------------------------------------------------------------------------
    async def open(self) -> None:
        self.slot = await self.engine.attach(self.model, self.id, self)
        if self.stream:
            self.metrics.sessions_started.labels(self.model).inc()

    async def close(self) -> None:
        self._report_input()
        self.watchers.close(self.failed.code if self.failed is not None else "closed")
        if self.slot is not None:
            slot, self.slot = self.slot, None
            await self.engine.detach(self.model, self.id, slot)

    def emit(self, msg: dict[str, Any] | bytes, arrived_at: float | None = None) -> None:
        """Queue a message for the client (a dict is sent as JSON text, bytes as a binary message);
        ``arrived_at``: a prediction's latency origin."""
        if self.stream:
            self.outbox.put_nowait((msg, arrived_at))

    # ---- input ------------------------------------------------------------------------------------
    def _reject(self, code: str, n_events: int, message: str, fatal: bool = False) -> ProtocolError:
        self.metrics.events_rejected.labels(self.model, code).inc(n_events)
        self.metrics.messages_rejected.labels(self.model, code).inc()
        return ProtocolError(code, message, fatal)

    def _take_tokens(self, n: int) -> None:
        lim = self.cfg.limits
        if lim.max_events_per_second is None:
            return
        now = time.monotonic()
        cap = lim.max_events_per_second * lim.rate_burst_s
        self._tokens = min(cap, self._tokens + (now - self._tokens_at) * lim.max_events_per_second)
        self._tokens_at = now
        if n > self._tokens:
            raise self._reject(
                "rate_limited",
                n,
                f"packet of {n} events refused: this session may send {lim.max_events_per_second:.0f} events/s "
                f"(bursts up to {cap:.0f}); {int(self._tokens)} available now",
            )
        self._tokens -= n

    async def feed(self, events: np.ndarray, arrived_at: float | None = None, validated: bool = False) -> None:
        """Accept one packet (validated whole: a refused packet changes nothing) and bin it.

        ``arrived_at``: ``time.perf_counter()`` when the packet arrived (default: now); the latency of
        every timestep it completes is counted from there. ``validated``: the events were checked
        against this session's sensor already and are its first (a decoded recording).
        """
        arrived_at = time.perf_counter() if arrived_at is None else arrived_at
        pixels = None
        if not (validated and self.binner.last_t is None):
            try:
                pixels = self.binner.check(events)
            except EventError as e:
                raise self._reject(e.code, int(events.size), str(e)) from None
        n = int(events.size)
        if n == 0:
            return
        self._take_tokens(n)
        lim = self.cfg.limits
        if lim.backpressure == "drop":
            queued = self.engine.queued(self.model, self.id)
            if queued >= lim.max_queue_steps:
                self.metrics.backpressure.labels(self.model, "drop").inc()
                raise self._reject(
                    "overloaded",
                    n,
                    f"packet of {n} events dropped: {queued} timesteps are already waiting "
                    f"(limit {lim.max_queue_steps}); send slower or at real-time speed",
                )
        if self._drained.is_set():
            self._warned_backpressure = False  # caught up: the next overload is a new episode
        self._unreported_events += n
        self._unreported_packets += 1
        if self.first_t is None:
            self.first_t = int(events["t"][0])
        self.events += n
        await self._bin(events, arrived_at, pixels)
        self.watchers.feed(events, self.binner.t0)

    async def _bin(self, events: np.ndarray, arrived_at: float, pixels: np.ndarray | None = None) -> None:
        """Bin in chunks of at most ``CHUNK_STEPS`` non-empty timesteps; each chunk's frames are queued
        (waiting for room, see backpressure) before the next chunk is binned. The chunks follow the
        events, not the clock: a gap of any length inside a packet costs what the gap cap lets it
        emit (``max_gap_steps`` empty frames), never work in proportion to its length."""
        b, dt = self.binner, self.cfg.binner.dt_us
        dropped0, skipped0, start = b.dropped_events, b.skipped_bins, b.open_bin_start
        t = events["t"]
        t0 = b.t0 if b.t0 is not None else int(t[0])
        if (int(t[-1]) - t0) // dt - (int(t[0]) - t0) // dt < CHUNK_STEPS:  # the live case: a short packet
            await self._enqueue(b.push_timed(events, validate=False, pixels=pixels), arrived_at)
        else:
            for part in split_by_bins(events, t0, dt, CHUNK_STEPS):  # sorted and checked above
                await self._enqueue(b.push_timed(part, validate=False), arrived_at)
        self._gap_warning(b.skipped_bins - skipped0)
        if b.dropped_events > dropped0:
            n_late = b.dropped_events - dropped0
            self.metrics.events_dropped.labels(self.model, "late").inc(n_late)
            self.emit(
                messages.warning(
                    "late_events",
                    f"{n_late} event(s) fell before the open timestep at {start if start is not None else t0} "
                    "us (already flushed or advanced past) and were not counted",
                )
            )

    def _gap_warning(self, skipped: int) -> None:
        if not skipped:
            return
        self._m_skipped.inc(skipped)
        cap = self.cfg.binner.max_gap_bins
        self.emit(
            messages.warning(
                "time_gap",
                f"stream time jumped without events: {cap} empty timestep(s) run, {skipped} more "
                f"({skipped * self.cfg.binner.dt_us / 1e6:.3f} s) skipped (gap cap {cap})",
                skipped_steps=skipped,
            )
        )

    async def advance(self, t_us: int, arrived_at: float | None = None) -> None:
        """The stream promises no events before ``t_us``: complete every bin that ends by then."""
        skipped0 = self.binner.skipped_bins
        await self._enqueue(self.binner.advance_to_timed(t_us), arrived_at)
        self._gap_warning(self.binner.skipped_bins - skipped0)

    async def flush(self, arrived_at: float | None = None) -> None:
        """Run the open bin now if it holds events (a short last timestep)."""
        await self._enqueue(self.binner.flush_timed(), arrived_at)

    def _report_input(self) -> None:
        if self._unreported_packets:
            self._m_events.inc(self._unreported_events)
            self._m_packets.inc(self._unreported_packets)
            self._unreported_events = self._unreported_packets = 0

    async def _enqueue(self, done: TimedFrames, arrived_at: float | None) -> None:
        frames, starts = done
        if not len(frames):
            return
        self._report_input()
        arrived_at = time.perf_counter() if arrived_at is None else arrived_at
        for frame, t_start in zip(frames, starts.tolist()):
            await self._wait_room()
            self.engine.submit(self.model, self.id, self.next_index, t_start, frame, arrived_at)
            self.next_index += 1
            self._drained.clear()

    async def _wait_room(self) -> None:
        lim = self.cfg.limits
        queued = self.engine.queued(self.model, self.id)
        if queued < lim.max_queue_steps:
            return
        self.metrics.backpressure.labels(self.model, "wait").inc()
        if not self._warned_backpressure:
            self._warned_backpressure = True
            self.emit(
                messages.warning(
                    "backpressure",
                    f"{queued} timesteps waiting (limit {lim.max_queue_steps}): the server "
                    "stops reading this session until they have run; stream at real-time speed to avoid it",
                )
            )
        t0 = time.perf_counter()
        try:
            while self.engine.queued(self.model, self.id) >= lim.max_queue_steps:
                self._check_alive(t0)
                self._room.clear()
                try:  # a timeout scope, not wait_for: no task per wait (a busy server waits a lot)
                    async with asyncio.timeout(1.0):
                        await self._room.wait()
                except TimeoutError:
                    pass
        finally:
            self.metrics.backpressure_wait.labels(self.model).inc(time.perf_counter() - t0)

    def _check_alive(self, since: float) -> None:
        if self.failed is not None:
            raise self.failed
        if not self.engine.running:
            raise ProtocolError("unavailable", "the inference engine has stopped", fatal=True)
        if time.perf_counter() - since > self.cfg.limits.stall_timeout_s:
            raise ProtocolError(
                "stalled",
                f"no progress for {self.cfg.limits.stall_timeout_s:.0f} s: the client is not reading its predictions",
                fatal=True,
            )

    async def drain(self) -> None:
        """Wait until every queued step of this session has run."""
        t0 = time.perf_counter()
        while not self._drained.is_set():
            self._check_alive(t0)
            try:
                await asyncio.wait_for(self._drained.wait(), 1.0)
            except TimeoutError:
                pass

    async def reset(self) -> int:
        """Start over: zero the state, forget the stream's time; return the queued steps dropped."""
        assert self.slot is not None
        self._new_epoch()  # before the await: nothing of the old epoch can be counted after this
        dropped = await self.engine.reset(self.model, self.id, self.slot)
        self._drained.set()  # the step in flight (if any) ran before the runner's reset returned
        self.emit(messages.reset(dropped))
        return dropped

    async def finish(self, arrived_at: float | None = None) -> dict[str, Any]:
        """Flush, wait for every step to run, return the summary (the ``end`` message body)."""
        await self.flush(arrived_at)
        self._report_input()
        await self.drain()
        return self.summary()

    # ---- output (called by the engine) ------------------------------------------------------------
    def can_take_output(self) -> bool:
        if self.outbox.qsize() < self.cfg.limits.max_outbox:
            return True
        self._held = True
        return False

    def on_sent(self) -> None:
        """The sender took a message out of the outbox: wake the engine if it was holding this session."""
        if self._held and self.outbox.qsize() < self.cfg.limits.max_outbox:
            self._held = False
            self.engine.notify()

    def on_batch_done(self) -> None:
        self._room.set()
        if self.engine.queued(self.model, self.id) == 0:
            self._drained.set()

    def on_failure(self, code: str, message: str) -> None:
        self.end(ProtocolError(code, message, fatal=True))

    def end(self, error: ProtocolError) -> None:
        """End the session from the server side: ``error`` goes to the client (whose socket is then
        closed) and every wait of the session raises it."""
        self.failed = error
        self.emit(error.to_message())
        self.abort()

    def abort(self) -> None:
        """Wake every wait of this session (it is ending: failure, or the client went away)."""
        self.failed = self.failed or ProtocolError("disconnected", "the client went away", fatal=True)
        self._room.set()
        self._drained.set()

    def on_step(self, r: StepOutput) -> None:
        # window models: a row is fresh only when the window was evaluated; else keep the last prediction
        pred = self.readout.update(r.out) if r.evaluated else self.readout.prediction()
        self.totals.add(r, pred.probs, pred.label)
        req, dt = r.request, self.cfg.binner.dt_us
        if self.keep_steps:
            self.step_log.append(
                {
                    "step": req.index,
                    "t_start_us": req.t_start_us,
                    "t_end_us": req.t_start_us + dt,
                    "label": self.classes[pred.label],
                    "probabilities": pred.probs.tolist(),
                }
            )
        if self.stream:
            child = self._m_predictions.get(pred.label)
            if child is None:
                child = self._m_predictions[pred.label] = self.metrics.predictions.labels(
                    self.model, self.classes[pred.label]
                )
            child.inc()
            w = self.worker
            neurons = np.asarray(w.neurons, dtype=np.float64)
            msg = messages.prediction(
                r, pred.probs, pred.label, self.classes, w.layers, neurons, self.cfg.output, dt
            )
            self.emit(msg, req.arrived_at)
            self.watchers.publish(msg)

    # ---- snapshots (service/snapshot.py) ----------------------------------------------------------
    async def capture(self) -> Snapshot:
        """The session's complete state once every step queued so far has run: the model state of
        its slot, the binner (grid, open timestep), the readout, the totals and the counters. Call it
        between two client messages (under :attr:`lock`)."""
        await self.drain()
        assert self.slot is not None
        runner = self.worker.runner
        state = await self.engine.call(runner.read_state, self.slot)
        binner, readout, totals = self.binner.state_dict(), self.readout.state_dict(), self.totals
        arrays: dict[str, np.ndarray] = {
            "binner.acc": binner.pop("acc"),
            "readout.ring": readout["ring"],
            "readout.sum": readout["sum"],
            "readout.ema": readout["ema"],
            "totals.counts": totals.counts,
            **{f"state.{n}": a for n, a in zip(runner.state_names, state)},
        }
        if totals.probabilities is not None:
            arrays["totals.probabilities"] = np.asarray(totals.probabilities, dtype=np.float64)
        header = {
            "model": self.worker.identity,
            "created_s": time.time(),
            "binning": self._binning_identity(),
            "readout": self.cfg.readout.model_dump(),
            "session": {
                "next_index": self.next_index,
                "events": self.events,
                "first_t": self.first_t,
                "messages": self.messages,
            },
            "binner": binner,
            "readout_steps": readout["steps"],
            "totals": {"steps": totals.steps, "sops": totals.sops, "energy_j": totals.energy_j, "label": totals.label},
            "state_names": list(runner.state_names),
        }
        return Snapshot(header, arrays)

    async def send_snapshot(self, key: bytes) -> None:
        """Take the snapshot (between two client messages: the caller holds :attr:`lock`) and queue
        it for the client: a ``snapshot`` text message, then the snapshot as one binary message."""
        t0 = time.perf_counter()
        data = snapshot.encode(await self.capture(), key)
        self.emit(messages.snapshot(self.next_index, self.messages, len(data)))
        self.emit(data)
        self.metrics.snapshots.labels(self.model, "taken").inc()
        self.metrics.snapshot_seconds.labels(self.model).observe(time.perf_counter() - t0)

    def snapshot_bytes(self) -> int:
        """An upper bound of this session's snapshot size: its arrays plus the header's reserve."""
        runner = self.worker.runner
        floats = sum(int(np.prod(s)) for s in runner.state_shapes) * 4
        k, layers = len(self.classes), len(self.worker.layers)
        return (
            snapshot.OVERHEAD_BYTES
            + floats
            + self.binner.state_dict()["acc"].nbytes
            + (self.readout.horizon + 3) * k * 8
            + layers * 8
        )

    def _binning_identity(self) -> dict[str, Any]:
        b = self.cfg.binner
        return {
            "sensor": [b.sensor.width, b.sensor.height],
            "dt_us": b.dt_us,
            "ds": b.ds,
            "mode": b.mode,
            "max_gap_steps": b.max_gap_bins,
            "t_start_us": self.cfg.t_start_us,
        }

    async def restore(self, snap: Snapshot) -> None:
        """Continue from a verified snapshot (:func:`service.snapshot.check_binding` passed): the
        next step is the snapshot's next step, with the state it left. :class:`SnapshotError`
        (``snapshot_mismatch`` / ``snapshot_malformed``) if it does not fit this session."""
        h, a = snap.header, snap.arrays
        if h.get("binning") != self._binning_identity() or h.get("readout") != self.cfg.readout.model_dump():
            raise SnapshotError(
                "snapshot_mismatch",
                f"the snapshot was taken with binning {h.get('binning')} and readout {h.get('readout')}; this "
                f"session has {self._binning_identity()} and {self.cfg.readout.model_dump()} (start with the same options)",
            )
        runner = self.worker.runner
        try:
            if h["state_names"] != list(runner.state_names):
                raise ValueError(f"state {h['state_names']} is not this model's {list(runner.state_names)}")
            session, totals = h["session"], h["totals"]
            counters = (session["next_index"], session["events"], session["messages"], totals["steps"])
            if any(type(v) is not int or v < 0 for v in counters):
                raise ValueError(f"session counters {counters} are not counts")
            self.binner.load_state_dict({**h["binner"], "acc": a["binner.acc"]})
            self.readout.load_state_dict(
                {"steps": h["readout_steps"], "ring": a["readout.ring"], "sum": a["readout.sum"], "ema": a["readout.ema"]}
            )
            counts = np.asarray(a["totals.counts"], dtype=np.float64)
            if counts.shape != self.totals.counts.shape:
                raise ValueError(f"totals of {counts.shape} layers, this model has {self.totals.counts.shape}")
            state = [a[f"state.{n}"] for n in runner.state_names]
            assert self.slot is not None
            await self.engine.call(runner.write_state, self.slot, state)
        except (KeyError, TypeError, ValueError) as e:
            raise SnapshotError("snapshot_malformed", f"the snapshot does not fit this model: {e}") from None
        self.next_index, self.events, self.first_t = session["next_index"], session["events"], session["first_t"]
        self.messages = session["messages"]
        self.totals.steps, self.totals.counts = totals["steps"], counts
        self.totals.sops, self.totals.energy_j = float(totals["sops"]), float(totals["energy_j"])
        self.totals.label = totals["label"]
        probs = a.get("totals.probabilities")
        self.totals.probabilities = None if probs is None else probs.astype(np.float32)

    def summary(self) -> dict[str, Any]:
        """Totals since the start (or the last reset): the ``end`` message and the REST result."""
        b = self.binner
        return {
            "model": self.model,
            **self.totals.summary(self.classes, self.cfg.output.top_k),
            "events": self.events,
            "duration_us": 0 if self.first_t is None or b.last_t is None else b.last_t - self.first_t,
            "skipped_steps": b.skipped_bins,
            "late_events": b.dropped_events,
        }
