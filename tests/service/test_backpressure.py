"""Backpressure (bounded queues, the client told, counters counting) and a failing model call."""

from __future__ import annotations

import asyncio
import threading

import httpx

from service.client.api import StreamSession
from tests.service.helpers import DT_US, events, live_server, wrapping_loader


def test_block_policy_slows_the_client_and_loses_nothing(model_dir):
    runners: dict = {}
    with live_server(model_dir, loader=wrapping_loader(runners), max_queue_steps=2) as srv:
        runners["default"].delay_s = 0.01

        async def go():
            s = await StreamSession.connect(srv.ws)
            await s.send_events(events(0, 200, dt=DT_US // 10))  # 20 steps at once
            end = await s.stop()
            await s.close()
            return s, end

        s, end = asyncio.run(go())
        assert [p["step"] for p in s.predictions] == list(range(20)) and end["steps"] == 20
        assert [w["code"] for w in s.warnings] == ["backpressure"]
        assert "stops reading this session" in s.warnings[0]["message"]
        assert srv.metric("asasnn_backpressure_total", model="default", action="wait") > 0
        assert srv.metric("asasnn_backpressure_wait_seconds_total", model="default") > 0
        assert srv.metric("asasnn_queue_depth", model="default") == 0


def test_drop_policy_refuses_packets_while_the_queue_is_full(model_dir):
    runners: dict = {}
    with live_server(
        model_dir, loader=wrapping_loader(runners), max_queue_steps=2, backpressure="drop"
    ) as srv:
        gate = runners["default"].gate = threading.Event()

        async def go():
            s = await StreamSession.connect(srv.ws)
            for k in range(6):  # each packet completes one more step
                await s.send_events(events(k * DT_US, 10, dt=DT_US // 10))
                await asyncio.sleep(0.05)
            err = await s.wait_for("error")
            gate.set()
            end = await s.stop()
            await s.close()
            return s, err, end

        s, err, end = asyncio.run(go())
        assert err["code"] == "overloaded" and "timesteps are already waiting (limit 2)" in err["message"]
        assert [p["step"] for p in s.predictions] == list(range(end["steps"]))
        assert end["steps"] < 6
        assert srv.metric("asasnn_events_rejected_total", model="default", reason="overloaded") >= 10
        assert srv.metric("asasnn_backpressure_total", model="default", action="drop") >= 1


def test_failing_model_call_ends_only_its_sessions(model_dir):
    runners: dict = {}
    with live_server(model_dir, loader=wrapping_loader(runners)) as srv:
        runners["other"].fail_on_step = True

        async def go():
            bad = await StreamSession.connect(srv.ws, model="other")
            good = await StreamSession.connect(srv.ws)
            await bad.send_events(events(0, 30, dt=DT_US // 10))
            err = await bad.wait_for("error")
            await good.send_events(events(0, 30, dt=DT_US // 10))
            end = await good.stop()
            await asyncio.sleep(0.1)
            await bad.close()
            await good.close()
            return bad, err, end

        bad, err, end = asyncio.run(go())
        assert err["code"] == "internal" and err["fatal"] and "injected failure" in err["message"]
        assert bad.close_code == 4500
        assert end["steps"] == 3
        assert httpx.get(srv.http + "/healthz").json()["status"] == "ok"
        assert httpx.get(srv.http + "/readyz").status_code == 200
