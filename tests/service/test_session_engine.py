"""Session and Engine on their own: no socket, no route; a real step runner (the test bundle, torch).

What a route relies on: a session turns packets into predictions in step order, equal to its frames
stepped through the runner by hand; a refused packet changes nothing; ``drop`` backpressure refuses
what does not fit and ``reset`` drops what is queued; the engine ends the sessions of a failed batch
with ``internal`` and goes on with the next.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from models.events import BinnerConfig, FrameBinner
from models.runtime import load_runner
from service.engine import Engine, ModelWorker
from service.protocol import ProtocolError
from service.scheduler import Scheduler
from service.schemas import OutputOptions
from service.session import Session, SessionConfig, SessionLimits
from service.telemetry import Metrics
from tests.service.fakes import WrappedRunner
from tests.service.helpers import DT_US, SENSOR, events


def _packets(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        ev = events(i * DT_US, 200, dt=DT_US // 200)
        ev["x"], ev["y"] = rng.integers(0, 128, 200), rng.integers(0, 128, 200)
        out.append(ev)
    return out


class Rig:
    """An engine with one model worker; sessions made on it."""

    def __init__(self, bundle: Path, fail: bool = False) -> None:
        self.runner = WrappedRunner(load_runner(bundle, "torch", "cpu"))
        self.runner.fail_on_step = fail
        self.engine = Engine(Metrics())
        self.worker = ModelWorker("default", self.runner, Scheduler(64))  # type: ignore[arg-type]
        self.engine.add_worker(self.worker)

    def config(self, **limits) -> SessionConfig:
        card = self.runner.card
        return SessionConfig(
            BinnerConfig(SENSOR, DT_US, card.ds),
            output=OutputOptions(top_k=1, probabilities=True, layer_rates=False),
            limits=SessionLimits(**limits),
        )

    async def session(self, **limits) -> Session:
        s = Session(self.engine, self.worker, self.config(**limits))
        await s.open()
        return s


def _drain_outbox(s: Session) -> list[dict]:
    out = []
    while not s.outbox.empty():
        msg, _ = s.outbox.get_nowait()
        out.append(msg)
    return out


def test_a_session_steps_its_frames_through_the_runner_in_order(model_dir):
    packets = _packets(12)

    async def run() -> list[dict]:
        rig = Rig(model_dir / "default")
        rig.engine.start()
        s = await rig.session()
        for p in packets:
            await s.feed(p)
        await s.finish()
        await s.close()
        await rig.engine.stop()
        return [m for m in _drain_outbox(s) if m["type"] == "prediction"]

    got = asyncio.run(run())
    # by hand: the frames of the same events, one fresh slot, one step each
    runner = load_runner(model_dir / "default", "torch", "cpu")
    binner = FrameBinner(BinnerConfig(SENSOR, DT_US, runner.card.ds))
    frames = np.concatenate([binner.push(np.concatenate(packets)), binner.flush()])  # finish() flushes too
    slot = runner.open()
    spikes = [int(runner.step([slot], f[None]).counts.sum()) for f in frames]
    assert [m["step"] for m in got] == list(range(len(frames)))
    assert [m["spikes"] for m in got] == spikes and sum(spikes) > 0


def test_a_refused_packet_changes_nothing(model_dir):
    packets = _packets(6, seed=1)
    bad = packets[3].copy()
    bad["x"][7] = 500  # off the sensor

    async def run(with_bad: bool) -> tuple[list[tuple], list[str], float]:
        rig = Rig(model_dir / "default")
        rig.engine.start()
        s = await rig.session()
        codes = []
        for i, p in enumerate(packets):
            if with_bad and i == 3:
                with pytest.raises(ProtocolError) as e:
                    await s.feed(bad)
                codes.append(e.value.code)
            await s.feed(p)
        await s.finish()
        await s.close()
        await rig.engine.stop()
        rejected = rig.engine.metrics.registry.get_sample_value(
            "asasnn_events_rejected_total", {"model": "default", "reason": "out_of_range"}
        )
        rows = [(m["step"], m["label_index"], m["spikes"], tuple(m["probabilities"]))
                for m in _drain_outbox(s) if m["type"] == "prediction"]
        return rows, codes, rejected or 0.0

    clean, _, _ = asyncio.run(run(False))
    with_bad, codes, rejected = asyncio.run(run(True))
    assert codes == ["out_of_range"] and rejected == bad.size
    assert with_bad == clean and len(clean) > 3


def test_drop_backpressure_refuses_what_does_not_fit_and_reset_drops_the_queue(model_dir):
    async def run() -> None:
        rig = Rig(model_dir / "default")  # the engine is not started: nothing runs, steps stay queued
        s = await rig.session(max_queue_steps=3, backpressure="drop")
        for p in _packets(4):  # four timesteps completed... three fit
            await s.feed(p)
        assert rig.worker.scheduler.queue_len(s.id) == 3 == rig.engine.queued(s.model, s.id)
        with pytest.raises(ProtocolError) as e:
            await s.feed(_packets(6)[5])
        assert e.value.code == "overloaded" and not e.value.fatal
        dropped = await s.reset()
        assert dropped == 3 and rig.worker.scheduler.queue_len(s.id) == 0 and s.next_index == 0
        assert [m for m in _drain_outbox(s) if m["type"] == "reset"] == [{"type": "reset", "dropped_steps": 3}]
        await s.close()
        await rig.engine.stop()

    asyncio.run(run())


def test_a_failed_batch_ends_its_sessions_and_the_engine_goes_on(model_dir):
    async def run() -> None:
        rig = Rig(model_dir / "default", fail=True)
        rig.engine.start()
        s = await rig.session()
        for p in _packets(3):
            await s.feed(p)
        while s.failed is None:  # the failure reaches the session through on_failure
            await asyncio.sleep(0.01)
        assert s.failed.code == "internal" and s.failed.fatal
        assert "injected failure" in (rig.engine.last_error or "")
        await s.close()
        # the engine still runs: a new session on a working runner gets its predictions
        rig.runner.fail_on_step = False
        t = await rig.session()
        for p in _packets(3):
            await t.feed(p)
        await t.finish()
        assert rig.engine.running
        assert [m["step"] for m in _drain_outbox(t) if m["type"] == "prediction"] == [0, 1, 2]
        await t.close()
        await rig.engine.stop()

    asyncio.run(run())
