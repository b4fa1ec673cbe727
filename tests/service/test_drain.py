"""Draining (what SIGTERM starts, service/server.py): no new streams, /readyz 503, open streams warned,
given ``drain_timeout_s`` to end by themselves, then closed with 1012; then the server exits."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from service.client.api import ServiceError, StreamSession
from tests.service.helpers import DT_US, events, live_server


def run(coro):
    return asyncio.run(coro)


def wait_exit(srv, timeout: float) -> float:
    t0 = time.monotonic()
    srv.thread.join(timeout)
    assert not srv.thread.is_alive(), "the server did not exit after the drain"
    return time.monotonic() - t0


def test_drain_lets_open_streams_finish_and_refuses_new_ones(model_dir):
    with live_server(model_dir, drain_timeout_s=20) as srv:

        async def go():
            s = await StreamSession.connect(srv.ws)
            await s.send_events(events(0, 100, dt=DT_US // 10))
            await s.wait_for("prediction")
            srv.begin_drain()
            warn = await s.wait_for("warning", code="draining")
            assert warn["timeout_s"] == 20 and "reconnect" in warn["message"]
            r = await asyncio.to_thread(httpx.get, srv.http + "/readyz")
            assert r.status_code == 503 and r.json()["status"] == "draining"
            assert (await asyncio.to_thread(httpx.get, srv.http + "/healthz")).status_code == 200
            with pytest.raises(ServiceError) as e:
                await StreamSession.connect(srv.ws)
            assert e.value.code == "draining" and e.value.close_code == 1012
            # the open stream goes on as before and ends normally
            before = len(s.predictions)
            await s.send_events(events(500_000, 100, dt=DT_US // 10))
            end = await s.stop()
            await s.close()
            assert len(s.predictions) > before and end["steps"] == len(s.predictions)
            assert s.close_code == 1000

        run(go())
        took = wait_exit(srv, 15)
        assert took < 10  # the last stream ended: no waiting for the drain timeout
        assert srv.metric("asasnn_sessions_rejected_total", reason="draining") == 1


def test_streams_still_open_at_the_drain_timeout_are_closed_with_1012(model_dir):
    with live_server(model_dir, drain_timeout_s=1) as srv:

        async def go():
            s = await StreamSession.connect(srv.ws)
            await s.send_events(events(0, 100, dt=DT_US // 10))
            await s.wait_for("prediction")
            t0 = time.monotonic()
            srv.begin_drain()
            await s.wait_for("warning", code="draining")
            err = await s.wait_for("error", timeout=10)
            assert err["code"] == "draining" and err["fatal"]
            assert await s.next_message(10) is None  # closed
            assert s.close_code == 1012
            assert time.monotonic() - t0 > 0.9  # not before the drain timeout (an upper bound would be a race)
            await s.close()

        run(go())
        wait_exit(srv, 15)


def test_drain_with_no_streams_exits_at_once(model_dir):
    with live_server(model_dir, drain_timeout_s=30) as srv:
        srv.begin_drain()
        assert wait_exit(srv, 15) < 10
