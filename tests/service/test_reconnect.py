"""The client's reconnect policy (service.client.api.Reconnect) against real servers that drain or
restart on the same port: the stream goes on in a new session, which starts from rest."""

from __future__ import annotations

import asyncio

import pytest
from websockets.exceptions import ConnectionClosed

from service.client.api import Reconnect, StreamSession
from tests.service.helpers import DT_US, LiveServer, events, live_server, settings_for

FAST = Reconnect(initial_delay_s=0.05, max_delay_s=0.3, max_attempts=200)


def run(coro):
    return asyncio.run(coro)


def test_policy_backoff_and_codes():
    p = Reconnect(jitter=0.0)
    assert [p.delay(n) for n in (1, 2, 3)] == [0.2, 0.4, 0.8] and p.delay(20) == 10.0
    assert p.delay(1, 4429) == 5.0  # a full replica: wait longer
    assert 0.2 <= Reconnect().delay(1) <= 0.3  # jitter stretches by up to half
    assert all(p.retries(c) for c in (1012, 1001, 1006, 1011, 4500, 4503, 4429, None))
    assert not any(p.retries(c) for c in (1000, 4400, 4401, 4404, 4408))


@pytest.mark.parametrize("how", ["drain", "restart"])
def test_stream_goes_on_after_the_server_drains_or_restarts(model_dir, how):
    settings = settings_for(model_dir, drain_timeout_s=0.3)
    a = LiveServer(settings).__enter__()
    try:

        async def go():
            s = await StreamSession.connect(a.ws, reconnect=FAST)
            first = s.session_id
            await s.send_events(events(0, 200, dt=DT_US // 10))  # 1 s: 19 steps complete
            while len(s.predictions) < 19:
                await s.wait_for("prediction")
            if how == "drain":
                a.begin_drain()
                await s.wait_for("warning", code="draining")
            else:
                a.server.should_exit = True  # uvicorn's own shutdown: every socket closed with 1012
            await asyncio.to_thread(a.thread.join, 15)
            assert not a.thread.is_alive()
            b = await asyncio.to_thread(LiveServer(settings, port=a.port).__enter__)  # same URL
            try:
                rec = await s.wait_for("reconnected", timeout=30)
                assert rec["close_code"] == 1012 and rec["session"] == s.session_id != first
                assert s.reconnects == 1 and s.close_code is None
                n = len(s.predictions)
                later = events(2_000_000, 200, dt=DT_US // 10)
                await s.send_events(later)
                end = await s.stop()
                await s.close()
                new = s.predictions[n:]
                # a new session: steps count from 0, the summary covers only it ...
                assert [p["step"] for p in new] == list(range(len(new))) and len(new) == 20
                assert end["session"] == s.session_id and end["steps"] == 20 and s.close_code == 1000
                # ... and it started from rest: the same as a fresh session given the same events
                fresh = await StreamSession.connect(b.ws)
                await fresh.send_events(later)
                await fresh.stop()
                await fresh.close()
                assert [p["spikes"] for p in new] == [p["spikes"] for p in fresh.predictions]
                assert [p["top_k"] for p in new] == [p["top_k"] for p in fresh.predictions]
            finally:
                b.__exit__()

        run(go())
    finally:
        a.__exit__()


def test_no_reconnect_on_a_close_the_policy_does_not_retry(model_dir):
    with live_server(model_dir, idle_timeout_s=0.5) as srv:

        async def go():
            s = await StreamSession.connect(srv.ws, reconnect=FAST)
            err = await s.wait_for("error", timeout=10)
            assert err["code"] == "idle_timeout"
            assert await s.next_message(10) is None
            assert s.close_code == 4408 and s.reconnects == 0
            await s.close()

        run(go())


def test_gives_up_after_max_attempts(model_dir):
    with live_server(model_dir) as srv:

        async def go():
            s = await StreamSession.connect(srv.ws, reconnect=Reconnect(initial_delay_s=0.01, max_attempts=3))
            srv.server.should_exit = True  # and nothing comes back on that port
            assert await s.next_message(30) is None
            assert s.close_code == 1012 and s.reconnects == 0
            with pytest.raises(ConnectionClosed):
                await s.send_events(events(0, 10))
            await s.close()

        run(go())
