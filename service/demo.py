"""Demo sessions: the built-in synthetic camera streaming into the server itself, so that a fresh
install shows something in the live view at once (docs/ui.md).

A demo is an ordinary streaming :class:`~service.session.Session`, fed packet by packet at real-time
pace through ``Session.feed`` exactly as ``WS /ws/infer`` feeds one, listed among the streams and
drained with them; only its outbox goes nowhere (a watcher sees its predictions). At most
``max_running`` run at once; each stops by itself after ``duration_s``, when asked, or when the server
drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass, field

from models.synthetic import CLASSES, SyntheticConfig, live_packets
from service.logs import fields
from service.protocol import ProtocolError
from service.registry import ModelNotFound
from service.schemas import OutputOptions, SensorSpec
from service.session import Session
from service.state import ServiceState

log = logging.getLogger("asasnn.demo")

MAX_RUNNING = 2
DURATION_S = 300.0
PACKET_US = 10_000


class DemoError(Exception):
    """A demo that cannot start: ``code`` and ``status`` as a REST error."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class Demo:
    session: Session
    ends_at: float  # time.monotonic()
    truth: str | None = None  # the class the synthetic camera is showing now
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class DemoSessions:
    def __init__(
        self, state: ServiceState, max_running: int = MAX_RUNNING, duration_s: float = DURATION_S
    ) -> None:
        self.state, self.max_running, self.duration_s = state, max_running, duration_s
        self.running: dict[str, Demo] = {}

    async def start(self, model: str | None = None) -> Demo:
        st = self.state
        if st.draining:
            raise DemoError(503, "draining", "this server is shutting down")
        if not st.ready or st.registry is None or st.engine is None:
            raise DemoError(503, "not_ready", st.load_error or "models are still loading; retry shortly")
        if len(self.running) >= self.max_running:
            raise DemoError(
                429, "too_many_demos", f"{len(self.running)} demo sessions run already (limit {self.max_running})"
            )
        if st.connections >= st.settings.max_sessions:
            raise DemoError(429, "too_many_sessions", f"the server is at its limit of {st.settings.max_sessions} sessions")
        try:
            entry = st.registry.get(model)
        except ModelNotFound as e:
            raise DemoError(404, "unknown_model", str(e)) from None
        if entry.runner is None:
            raise DemoError(503, "model_unavailable", f"model {entry.name!r} did not load: {entry.error}")
        sensor = SyntheticConfig().sensor
        try:  # the synthetic camera is 128x128: a model for another sensor refuses it (bad_sensor)
            cfg = st.session_config(
                entry,
                sensor=SensorSpec(width=sensor.width, height=sensor.height),
                output=OutputOptions(top_k=5, probabilities=False, layer_rates=True),
            )
        except ProtocolError as e:
            raise DemoError(422, e.code, e.message) from None
        session = Session(st.engine, st.worker(entry), cfg)
        await session.open()
        demo = Demo(session, time.monotonic() + self.duration_s)
        self.running[session.id] = demo
        st.add_stream(session)
        st.connections += 1  # a demo takes a session like any stream (max_sessions, /readyz)
        demo.task = asyncio.get_running_loop().create_task(self._run(demo), name=f"asasnn-demo-{session.id}")
        log.info("demo started", extra=fields(session=session.id, model=session.model, duration_s=self.duration_s))
        return demo

    def stop(self, session_id: str) -> bool:
        demo = self.running.get(session_id)
        if demo is None:
            return False
        demo.stop.set()
        return True

    async def close(self) -> None:
        """Stop every demo and wait for them (the app's shutdown)."""
        tasks = [d.task for d in self.running.values() if d.task is not None]
        for d in self.running.values():
            d.stop.set()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=5.0)
            for t in pending:
                t.cancel()

    async def _run(self, demo: Demo) -> None:
        s, st = demo.session, self.state
        sink = asyncio.get_running_loop().create_task(_discard(s))
        # realtime=False: the generator does not sleep; the pacing is done here, on the event loop,
        # and each packet (a new gesture is simulated at its first one) is made on a worker thread
        gen = live_packets(SyntheticConfig(), PACKET_US, realtime=False, seed=random.randrange(2**31))
        reason = "stopped"
        try:
            wall0, sent = time.monotonic(), 0
            while True:
                if s.failed is not None or st.draining:
                    reason = "draining" if st.draining else s.failed.code  # type: ignore[union-attr]
                    break
                if time.monotonic() >= demo.ends_at:
                    reason = "time_limit"
                    break
                events, label = await asyncio.to_thread(next, gen)
                sent += 1
                due = wall0 + sent * PACKET_US / 1e6
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(demo.stop.wait(), max(0.0, due - time.monotonic()))
                if demo.stop.is_set():
                    break
                demo.truth = CLASSES[label]
                if events.size:
                    async with s.lock:
                        await s.feed(events)
            if s.failed is None:
                async with s.lock:
                    await s.finish()
        except ProtocolError as e:
            reason = e.code
        except Exception:  # a broken demo must not take the server down
            log.exception("demo %s failed", s.id)
            reason = "internal"
        finally:
            sink.cancel()
            with contextlib.suppress(ValueError):  # "generator already executing": a cancelled to_thread
                gen.close()
            self.running.pop(s.id, None)
            st.remove_stream(s)
            st.connections -= 1
            s.watchers.close(reason)
            await s.close()
            log.info("demo ended", extra=fields(session=s.id, reason=reason, steps=s.totals.steps))


async def _discard(s: Session) -> None:
    """A demo's outbox goes nowhere (its watchers get the predictions); keep it empty so that the
    scheduler never holds the demo for a full outbox."""
    while True:
        await s.outbox.get()
        s.on_sent()

