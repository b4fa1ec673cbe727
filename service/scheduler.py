"""The step scheduler of one model: which ready timesteps run in the next batch.

Shape copied from vLLM v1: ``schedule()`` picks the work, the executor runs it, and
``update_from_output()`` takes the results back and says which belong to whom. Everything in and out
is a plain dataclass, nothing here knows HTTP, asyncio or tensors, so it is tested with hand-written
outputs.

Rules:

* A batch holds **at most one step per session** (a session's steps depend on each other through
  the membrane state), at most ``max_batch`` steps, oldest step of each session first, so the order
  of a session's predictions is its order of timesteps.
* Sessions take turns: the scan starts one place further round the session list each batch, so
  when more sessions are ready than fit a batch, none starves.
* A session may be *held* (its consumer is full, see ``can_run``); its steps wait, which in turn
  fills its queue and pushes back on its input (see :mod:`service.session`).
* ``reset`` (and removal) bump the session's epoch and drop its queued steps; a step already in
  flight comes back from the model with the old epoch and is discarded, never delivered.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class StepRequest:
    """One completed timestep of one session, waiting to run."""

    session_id: str
    epoch: int
    index: int  # step index within the session (since start or the last reset)
    t_start_us: int  # stream time of the bin start; the bin is [t_start_us, t_start_us + dt)
    frame: np.ndarray  # [2, H, W] float32
    arrived_at: float  # time.perf_counter() when the message that completed the bin arrived (latency origin)


@dataclass
class ScheduledStep:
    request: StepRequest
    slot: int


@dataclass
class SchedulerOutput:
    steps: list[ScheduledStep]

    @property
    def slots(self) -> list[int]:
        return [s.slot for s in self.steps]

    def stack_frames(self) -> np.ndarray:
        return np.stack([s.request.frame for s in self.steps])


@dataclass
class ModelOutput:
    """What the executor returns for a :class:`SchedulerOutput`, rows in the same order."""

    out: np.ndarray  # [n, K] output-layer spikes per class
    counts: np.ndarray  # [n, L] spikes per layer
    sops: np.ndarray  # [n]
    energy_j: np.ndarray  # [n]
    step_s: float  # seconds the model call took
    evaluated: np.ndarray | None = None  # [n] bool: fresh output (window models: every hop steps)
    started_at: float = 0.0  # time.perf_counter() when the model call started
    cpu_s: float = 0.0  # CPU time of the calling thread during the call (step_s - cpu_s: waiting)


@dataclass
class StepOutput:
    """One session's result of one batch."""

    request: StepRequest
    out: np.ndarray  # [K]
    counts: np.ndarray  # [L]
    sops: float
    energy_j: float
    step_s: float
    batch_size: int
    evaluated: bool = True
    started_at: float = 0.0  # time.perf_counter() when the model call started


@dataclass
class _Entry:
    slot: int
    epoch: int = 0
    queue: deque[StepRequest] = field(default_factory=deque)


class Scheduler:
    """Queues of ready steps per session and the batch policy over them."""

    def __init__(self, max_batch: int) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.max_batch = max_batch
        self._entries: dict[str, _Entry] = {}
        self._order: list[str] = []  # round-robin order of sessions
        self._next = 0  # where the next scan starts
        self._depth = 0  # steps queued over all sessions

    # ---- sessions ------------------------------------------------------------------------------
    def add_session(self, session_id: str, slot: int) -> None:
        if session_id in self._entries:
            raise KeyError(f"session {session_id} already scheduled")
        self._entries[session_id] = _Entry(slot)
        self._order.append(session_id)

    def remove_session(self, session_id: str) -> int:
        """Forget a session; return how many queued steps were dropped."""
        entry = self._entries.pop(session_id, None)
        if entry is None:
            return 0
        i = self._order.index(session_id)
        self._order.pop(i)
        if i < self._next:
            self._next -= 1
        self._depth -= len(entry.queue)
        return len(entry.queue)

    def reset(self, session_id: str) -> int:
        """Drop the queued steps and start a new epoch; return how many steps were dropped."""
        entry = self._entries[session_id]
        dropped = len(entry.queue)
        entry.queue.clear()
        entry.epoch += 1
        self._depth -= dropped
        return dropped

    def epoch(self, session_id: str) -> int:
        return self._entries[session_id].epoch

    def enqueue(self, request: StepRequest) -> None:
        entry = self._entries[request.session_id]
        if request.epoch != entry.epoch:
            return  # made before a reset that has since happened
        entry.queue.append(request)
        self._depth += 1

    def queue_len(self, session_id: str) -> int:
        entry = self._entries.get(session_id)
        return 0 if entry is None else len(entry.queue)

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def num_sessions(self) -> int:
        return len(self._entries)

    def has_work(self) -> bool:
        return self._depth > 0

    # ---- batches -------------------------------------------------------------------------------
    def schedule(self, can_run: Callable[[str], bool] | None = None) -> SchedulerOutput | None:
        """Take the next batch: the oldest step of up to ``max_batch`` ready sessions, or None."""
        if not self._depth:
            return None
        n = len(self._order)
        steps: list[ScheduledStep] = []
        last = self._next - 1
        for k in range(n):
            i = (self._next + k) % n
            sid = self._order[i]
            entry = self._entries[sid]
            if not entry.queue or (can_run is not None and not can_run(sid)):
                continue
            steps.append(ScheduledStep(entry.queue.popleft(), entry.slot))
            last = i
            if len(steps) == self.max_batch:
                break
        if not steps:
            return None
        self._depth -= len(steps)
        self._next = (last + 1) % n
        return SchedulerOutput(steps)

    def update_from_output(self, sched: SchedulerOutput, output: ModelOutput) -> list[StepOutput]:
        """Pair each row of ``output`` with its step; drop steps of removed or reset sessions."""
        n = len(sched.steps)
        if output.out.shape[0] != n or output.counts.shape[0] != n:
            raise ValueError(f"model output has {output.out.shape[0]} rows for {n} scheduled steps")
        results: list[StepOutput] = []
        for i, step in enumerate(sched.steps):
            req = step.request
            entry = self._entries.get(req.session_id)
            if entry is None or entry.epoch != req.epoch:
                continue
            results.append(
                StepOutput(
                    req,
                    output.out[i],
                    output.counts[i],
                    float(output.sops[i]),
                    float(output.energy_j[i]),
                    output.step_s,
                    n,
                    True if output.evaluated is None else bool(output.evaluated[i]),
                    output.started_at,
                )
            )
        return results
