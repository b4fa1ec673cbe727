"""The engine: one loop that turns ready timesteps of every session into batched model calls.

Layers (vLLM v1's shape): routes -> sessions -> **engine** -> scheduler (what runs) + step runner (runs
it, on one worker thread) -> scheduler (whose results). The loop runs on the event loop; every call
into a step runner (``open``, ``reset``, ``close``, ``step``) goes through one single-thread executor,
so runner state is only ever touched by that thread, one call at a time, in submission order. That
order is what makes ``reset`` and ``close`` land *between* steps, never inside one: a step already in
flight finishes first, and its stale result is discarded by the scheduler's epoch check.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np

from models.runtime.slots import Runner
from service.scheduler import ModelOutput, Scheduler, SchedulerOutput, StepOutput, StepRequest
from service.telemetry import Metrics

log = logging.getLogger("asasnn.engine")
T = TypeVar("T")


class StepConsumer(Protocol):
    """What the engine needs of a session."""

    def can_take_output(self) -> bool: ...
    def on_step(self, output: StepOutput) -> None: ...
    def on_batch_done(self) -> None: ...
    def on_failure(self, code: str, message: str) -> None: ...


@dataclass
class ModelWorker:
    """One served model: its step runner, its scheduler and the sessions attached to it."""

    name: str
    runner: Runner
    scheduler: Scheduler
    sessions: dict[str, StepConsumer] = field(default_factory=dict)
    queue_gauge: Any = None  # asasnn_queue_depth{model=name}, set by Engine.add_worker
    # what a session snapshot is bound to: {"name", "version", "fingerprint"} (service/snapshot.py)
    identity: dict[str, str] = field(default_factory=dict)

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(self.runner.layer_names)

    @property
    def neurons(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.runner.energy.neurons)

    def execute(self, sched: SchedulerOutput) -> ModelOutput:
        """Run one batch (on the worker thread)."""
        frames = sched.stack_frames()
        t0, c0 = time.perf_counter(), time.thread_time()
        res = self.runner.step(sched.slots, frames)
        wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
        return ModelOutput(res.out, res.counts, res.sops, res.energy_j, wall, res.evaluated, t0, cpu)


class Engine:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.workers: dict[str, ModelWorker] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asasnn-step")
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.last_error: str | None = None

    # ---- worker thread ---------------------------------------------------------------------------
    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the worker thread, after everything submitted before it."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def add_worker(self, worker: ModelWorker) -> None:
        worker.queue_gauge = self.metrics.queue_depth.labels(worker.name)
        self.workers[worker.name] = worker

    # ---- sessions --------------------------------------------------------------------------------
    async def attach(self, model: str, session_id: str, consumer: StepConsumer) -> int:
        """Open a state slot for a new session and start scheduling it; return the slot."""
        w = self.workers[model]
        slot = await self.call(w.runner.open)
        w.scheduler.add_session(session_id, slot)
        w.sessions[session_id] = consumer
        self.metrics.active_sessions.labels(model).set(len(w.sessions))
        return slot

    async def detach(self, model: str, session_id: str, slot: int) -> int:
        """Stop scheduling a session and free its slot (after any step in flight); return dropped steps."""
        w = self.workers[model]
        w.sessions.pop(session_id, None)
        dropped = w.scheduler.remove_session(session_id)
        self.metrics.active_sessions.labels(model).set(len(w.sessions))
        self.metrics.queue_depth.labels(model).set(w.scheduler.depth)
        await self.call(w.runner.close, slot)
        return dropped

    async def reset(self, model: str, session_id: str, slot: int) -> int:
        """Drop a session's queued steps and zero its state before its next step; return dropped steps."""
        w = self.workers[model]
        dropped = w.scheduler.reset(session_id)
        self.metrics.queue_depth.labels(model).set(w.scheduler.depth)
        await self.call(w.runner.reset, slot)
        return dropped

    def submit(
        self, model: str, session_id: str, index: int, t_start_us: int, frame: np.ndarray, arrived_at: float
    ) -> None:
        """Queue a session's next timestep (in its current epoch, see :meth:`reset`) and wake the loop."""
        w = self.workers[model]
        sched = w.scheduler
        sched.enqueue(StepRequest(session_id, sched.epoch(session_id), index, t_start_us, frame, arrived_at))
        w.queue_gauge.set(sched.depth)
        self._wake.set()

    def queued(self, model: str, session_id: str) -> int:
        """A session's timesteps waiting to run (its backpressure measure)."""
        return self.workers[model].scheduler.queue_len(session_id)

    def notify(self) -> None:
        """Something may be ready to run (an outbox drained)."""
        self._wake.set()

    # ---- loop ------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="asasnn-engine")

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            busy = True
            while busy:
                busy = False
                for w in list(self.workers.values()):
                    busy |= await self._run_batch(w)

    async def _run_batch(self, w: ModelWorker) -> bool:
        sessions = w.sessions
        sched = w.scheduler.schedule(lambda sid: sid in sessions and sessions[sid].can_take_output())
        if sched is None:
            return False
        m = self.metrics
        w.queue_gauge.set(w.scheduler.depth)
        try:
            output = await self.call(w.execute, sched)
        except Exception as e:  # a failing model call must not take the server down
            log.exception("model %s: step failed", w.name)
            self.last_error = f"{type(e).__name__}: {e}"
            for step in sched.steps:
                consumer = sessions.get(step.request.session_id)
                if consumer is not None:
                    consumer.on_failure("internal", f"model step failed: {type(e).__name__}: {e}")
            return True
        self.batches += 1
        results = w.scheduler.update_from_output(sched, output)
        m.observe_batch(
            w.name,
            w.layers,
            w.neurons,
            output.counts,
            float(output.sops.sum()),
            float(output.energy_j.sum()),
            output.step_s,
            output.cpu_s,
        )
        for r in results:
            consumer = sessions.get(r.request.session_id)
            if consumer is None:
                continue
            try:
                consumer.on_step(r)
            except Exception as e:  # one session's bug ends that session, not the loop
                log.exception("session %s: result handling failed", r.request.session_id)
                consumer.on_failure("internal", f"result handling failed: {type(e).__name__}: {e}")
        for sid in {s.request.session_id for s in sched.steps}:
            consumer = sessions.get(sid)
            if consumer is not None:
                consumer.on_batch_done()
        return True
