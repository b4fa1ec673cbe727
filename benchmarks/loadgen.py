"""One load-generator process of ``asasnn bench service``: real-time streams over raw WebSockets.

The benchmark starts one or more of these (``python benchmarks/loadgen.py JOB.json RESULT.json``) so that the
load is generated outside the server's process and outside the benchmark's own, and each reports its
own CPU share: when a generator runs near 100 % of a core, the generator is the limit, not the server.

A process runs its streams on one event loop with one pacing clock: packet ``k`` of every stream
(``packet_us`` of stream time, pre-encoded once) leaves at ``t0 + (k + 1) * packet_us / speed``, when a
camera would have it, each stream with its own phase so that the sends spread over the interval. A
reader per stream checks that predictions come in order, one per step (``step`` 0, 1, 2, ...), and
times each from the send of the packet that completed its timestep. Before ``stop`` a stream may ask
for its snapshot and time it. The result, one JSON object in RESULT.json: streams, predictions received
and expected (the ``end`` message's step count), out-of-order and duplicate predictions, errors, the
latencies and the process' CPU seconds over its wall time.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

try:  # the generator's own JSON speed must not be what the benchmark measures
    import orjson

    loads = orjson.loads
except ImportError:  # pragma: no cover - the standard library is fine, just slower
    loads = json.loads


@dataclass
class Job:
    url: str
    sensor: tuple[int, int]
    packets: str  # .npz with ``events`` (the wire records, concatenated) and ``ends`` (packet bounds)
    packet_us: int
    offsets: list[int]  # per stream: the packet it starts at
    speed: float = 1.0
    seconds: float = 20.0
    warmup: float = 2.0
    snapshot: bool = False
    output: dict[str, Any] = field(default_factory=lambda: {"top_k": 1, "layer_rates": False})
    start_at: float = 0.0  # time.time() when every generator starts sending (0: at once)


@dataclass
class Result:
    streams: int = 0
    connected: int = 0
    predictions: int = 0
    expected: int = 0
    out_of_order: int = 0
    duplicates: int = 0
    late_sends: int = 0  # packets sent more than one interval after they were due (generator saturated)
    errors: list[str] = field(default_factory=list)
    e2e_client_ms: list[float] = field(default_factory=list)
    e2e_server_ms: list[float] = field(default_factory=list)
    step_ms: list[float] = field(default_factory=list)
    batch: list[int] = field(default_factory=list)
    snapshot_ms: list[float] = field(default_factory=list)
    snapshot_bytes: list[int] = field(default_factory=list)
    cpu_s: float = 0.0
    wall_s: float = 0.0


class Stream:
    def __init__(self, job: Job, result: Result, packets: list[bytes], last_t: np.ndarray, offset: int):
        self.job, self.res, self.packets, self.last_t, self.offset = job, result, packets, last_t, offset
        self.sent_t: list[int] = []  # last timestamp of each packet sent
        self.sent_at: list[float] = []
        self.next_step = 0
        self.ws: Any = None
        self.done = asyncio.Event()
        self.snapshot = asyncio.Event()
        self.t_keep = 0.0

    async def open(self) -> None:
        from websockets.asyncio.client import connect

        self.ws = await connect(self.job.url, max_size=None, open_timeout=120, ping_interval=None)
        w, h = self.job.sensor
        start = {"type": "start", "version": 1, "sensor": {"width": w, "height": h}, "output": self.job.output}
        await self.ws.send(json.dumps(start))
        ready = loads(await self.ws.recv())
        if ready.get("type") != "ready":
            raise RuntimeError(f"start refused: {ready}")

    async def read(self) -> None:
        try:
            await self._read()
        except Exception as e:  # noqa: BLE001 - reported; the stream's finish() must not wait for it
            self.res.errors.append(f"read: {e!r}")
        finally:
            self.done.set()
            self.snapshot.set()

    async def _read(self) -> None:
        res = self.res
        async for raw in self.ws:
            now = time.perf_counter()
            if isinstance(raw, bytes):
                res.snapshot_bytes.append(len(raw))
                self.snapshot.set()
                continue
            msg = loads(raw)
            kind = msg.get("type")
            if kind == "prediction":
                res.predictions += 1
                step = msg["step"]
                if step < self.next_step:
                    res.duplicates += 1
                elif step > self.next_step:
                    res.out_of_order += 1
                self.next_step = max(self.next_step, step + 1)
                i = bisect.bisect_left(self.sent_t, msg["t_end_us"])
                if i < len(self.sent_t) and self.sent_at[i] >= self.t_keep:
                    res.e2e_client_ms.append((now - self.sent_at[i]) * 1e3)
                    res.e2e_server_ms.append(msg["latency_ms"]["total"])
                    res.step_ms.append(msg["latency_ms"]["step"])
                    res.batch.append(msg["batch_size"])
            elif kind == "end":
                res.expected += msg["steps"]
                self.done.set()
                return
            elif kind == "error":
                res.errors.append(f"{msg.get('code')}: {msg.get('message')}")
                if msg.get("fatal"):
                    self.done.set()
                    return

    async def send(self, k: int) -> None:
        p = self.packets[self.offset + k]
        if p:
            await self.ws.send(p)
            self.sent_t.append(int(self.last_t[self.offset + k]))
            self.sent_at.append(time.perf_counter())

    async def finish(self) -> None:
        if self.job.snapshot:
            t = time.perf_counter()
            await self.ws.send('{"type": "snapshot"}')
            await asyncio.wait_for(self.snapshot.wait(), 120)
            self.res.snapshot_ms.append((time.perf_counter() - t) * 1e3)
        await self.ws.send('{"type": "stop"}')
        await asyncio.wait_for(self.done.wait(), 120)
        await self.ws.close()


def load_packets(job: Job) -> tuple[list[bytes], np.ndarray]:
    """The packets as wire bytes (an empty packet as b""), and the last timestamp of each."""
    with np.load(job.packets) as z:
        events, ends = z["events"], z["ends"]
    out, last = [], np.zeros(len(ends), dtype=np.int64)
    begin = 0
    for i, end in enumerate(ends):
        chunk = events[begin:end]
        out.append(chunk.tobytes())
        if len(chunk):
            last[i] = int(chunk["t"][-1])
        begin = end
    return out, last


async def run(job: Job) -> Result:
    res = Result(streams=len(job.offsets))
    packets, last_t = load_packets(job)
    streams = [Stream(job, res, packets, last_t, o) for o in job.offsets]
    opened = await asyncio.gather(*(s.open() for s in streams), return_exceptions=True)
    live = []
    for s, r in zip(streams, opened):
        if isinstance(r, BaseException):
            res.errors.append(f"open: {r!r}")
        else:
            live.append(s)
    res.connected = len(live)
    readers = [asyncio.create_task(s.read()) for s in live]
    if job.start_at:
        await asyncio.sleep(max(0.0, job.start_at - time.time()))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    interval = job.packet_us / 1e6 / job.speed
    n_packets = min(int(job.seconds / interval), len(packets) - max(job.offsets) - 1)
    groups = 10  # phases within one interval
    for s in live:
        s.t_keep = wall0 + job.warmup
    for k in range(n_packets):
        for g in range(groups):
            due = wall0 + (k + 1 + g / groups) * interval
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif -delay > interval:
                res.late_sends += 1
            for s in live[g::groups]:
                try:
                    await s.send(k)
                except Exception as e:  # noqa: BLE001 - a closed connection is reported, the rest go on
                    res.errors.append(f"send: {e!r}")
    results = await asyncio.gather(*(s.finish() for s in live), return_exceptions=True)
    res.errors += [f"finish: {r!r}" for r in results if isinstance(r, BaseException)]
    for t in readers:
        t.cancel()
    res.cpu_s, res.wall_s = time.process_time() - cpu0, time.perf_counter() - wall0
    return res


def main(argv: list[str]) -> int:
    job = Job(**json.loads(Path(argv[0]).read_text()))
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - the standard loop is fine, just slower
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        res = runner.run(run(job))
    res.errors = res.errors[:10]
    Path(argv[1]).write_text(json.dumps(asdict(res)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
