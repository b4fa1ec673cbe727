"""Bad input on ``/ws/infer``: each kind gets a specific error, and the session (where it can), the
server and the other sessions go on."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest
from websockets.asyncio.client import connect

from models.events import EVENT_DTYPE, make_events
from service.client.api import ServiceError, StreamSession
from tests.service.helpers import DT_US, events, live_server


async def still_works(s: StreamSession, t0: int) -> None:
    """The session goes on: events after the error still produce predictions."""
    before = len(s.predictions)
    await s.send_events(events(t0, 100, dt=DT_US // 10))  # ten steps' worth
    await s.advance(t0 + 20 * DT_US)
    for _ in range(50):
        if len(s.predictions) > before:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no prediction after the error")


async def bystander(url: str) -> StreamSession:
    """A second session open during the test; it must be unaffected."""
    return await StreamSession.connect(url)


def run(coro):
    return asyncio.run(coro)


BAD_BINARY = [
    ("truncated", lambda: events(0, 2).tobytes()[:-1], "misaligned_packet", "25 bytes is not a whole number"),
    (
        "misaligned",
        lambda: events(0, 2).tobytes() + bytes(5),
        "misaligned_packet",
        "2 records + 5 stray bytes",
    ),
    (
        "shifted",  # right length, records shifted by one byte: fields become garbage
        lambda: b"\x07" + events(0, 4).tobytes()[:-1],
        None,
        "",
    ),
    ("outside_sensor", lambda: events(0, 3, x=200), "out_of_range", "x=200"),
    ("bad_polarity", lambda: make_events([0, 1], [1, 1], [1, 1], [1, 7]), "bad_polarity", "got 7"),
    ("unsorted", lambda: make_events([5, 3], [1, 1], [1, 1], [1, 0]), "unsorted", "5 -> 3"),
]


@pytest.mark.parametrize("name, make, code, words", BAD_BINARY, ids=[b[0] for b in BAD_BINARY])
def test_bad_packets_are_refused_and_the_session_goes_on(server, name, make, code, words):
    async def go():
        other = await bystander(server.ws)
        s = await StreamSession.connect(server.ws)
        await s.send_events(events(1_000_000, 10))
        data = make()
        await s.send_bytes(data if isinstance(data, bytes) else data.tobytes())
        err = await s.wait_for("error")
        if code is not None:
            assert err["code"] == code
        else:
            assert err["code"] in (
                "out_of_range",
                "bad_polarity",
                "unsorted",
                "time_backwards",
                "negative_time",
            )
        assert words in err["message"] and err["fatal"] is False
        await still_works(s, 1_100_000)
        await still_works(other, 0)
        await s.stop()
        await other.stop()
        await s.close()
        await other.close()

    run(go())


def test_timestamps_going_backwards(server):
    async def go():
        s = await StreamSession.connect(server.ws)
        await s.send_events(events(5_000_000, 10))
        await s.send_events(events(1_000_000, 10))
        err = await s.wait_for("error")
        assert err["code"] == "time_backwards"
        assert "packet starts at 1000000 us, before the last accepted event at 5009000 us" in err["message"]
        await still_works(s, 5_100_000)
        await s.close()

    run(go())


@pytest.mark.parametrize(
    "text, code, words",
    [
        ('{"type": "rewind"}', "unknown_type", "unknown message type 'rewind'"),
        ("{oops", "bad_json", "not valid JSON"),
        ('"just a string"', "bad_message", "must be a JSON object"),
        ('{"type": "advance", "t_us": "later"}', "bad_message", "t_us"),
        ('{"type": "start"}', "already_started", "already started"),
    ],
)
def test_bad_text_messages(server, text, code, words):
    async def go():
        s = await StreamSession.connect(server.ws)
        await s.send_json(text)
        err = await s.wait_for("error")
        assert err["code"] == code and words in err["message"] and not err["fatal"]
        await still_works(s, 0)
        await s.close()

    run(go())


def test_jump_of_hours_is_capped_and_reported(server):
    async def go():
        s = await StreamSession.connect(server.ws)
        await s.send_events(events(0, 100, dt=DT_US // 10))  # steps 0..9 (the 10th still open)
        hours = 3 * 3600 * 1_000_000
        await s.send_events(events(hours, 100, dt=DT_US // 10))
        warn = await s.wait_for("warning", code="time_gap")
        assert "stream time jumped" in warn["message"] and warn["skipped_steps"] > 200_000
        end = await s.stop()
        await s.close()
        return s, end, warn

    s, end, warn = run(go())
    # 10 + 1 (open bin) + 32 empty (the gap cap) + 10 after the jump
    assert end["steps"] == len(s.predictions) == 10 + 32 + 10
    assert end["skipped_steps"] == warn["skipped_steps"]
    assert [p["step"] for p in s.predictions] == list(range(end["steps"]))
    assert s.predictions[-1]["t_start_us"] >= 3 * 3600 * 1_000_000


def test_packet_of_millions_of_events(server):
    async def go():
        s = await StreamSession.connect(server.ws)
        huge = np.zeros(1_200_000, EVENT_DTYPE)  # 15.6 MB
        await s.send_events(huge)
        err = await s.wait_for("error", timeout=30)
        assert err["code"] == "packet_too_large"
        assert "1200000 events" in err["message"] and "split it into smaller packets" in err["message"]
        await still_works(s, 0)
        await s.close()

    run(go())


def test_binary_before_start_and_bad_start(server):
    async def go():
        async with connect(server.ws) as ws:
            await ws.send(events(0, 3).tobytes())
            msg = json.loads(await ws.recv())
            assert msg["code"] == "not_started" and msg["fatal"]
            await ws.wait_closed()
            assert ws.close_code == 4400
        async with connect(server.ws) as ws:
            await ws.send('{"type": "start", "version": 7}')
            msg = json.loads(await ws.recv())
            assert msg["code"] == "unsupported_version" and "version 7" in msg["message"]
            await ws.wait_closed()
        with pytest.raises(ServiceError) as e:
            await StreamSession.connect(server.ws, sensor=(640, 480))
        assert e.value.code == "bad_sensor" and "640x480" in e.value.message

    run(go())


@pytest.mark.parametrize("name", ["nope", "../default", "default/../other", "..", "a" * 100])
def test_unknown_model(server, name):
    async def go():
        with pytest.raises(ServiceError) as e:
            await StreamSession.connect(server.ws, model=name)
        assert e.value.code == "unknown_model" and e.value.close_code == 4404
        assert "served models: ['asa-window', 'default', 'other']" in e.value.message

    run(go())


def test_api_keys_ws(model_dir):
    key = "s3cret-key-1"
    with live_server(model_dir, api_keys=[key]) as srv:

        async def go():
            with pytest.raises(ServiceError) as e:
                await StreamSession.connect(srv.ws)
            assert (
                e.value.code == "unauthorized"
                and e.value.close_code == 4401
                and "missing API key" in e.value.message
            )
            with pytest.raises(ServiceError) as e:
                await StreamSession.connect(srv.ws, api_key="wrong-key-123")
            assert e.value.message == "invalid API key"
            s = await StreamSession.connect(srv.ws, api_key=key)  # header
            await s.close()
            s = await StreamSession.connect(srv.ws + "?token=" + key)  # query token, for browsers
            await s.close()

        run(go())
        assert srv.metric("asasnn_sessions_rejected_total", reason="unauthorized") == 2


def test_session_limits_idle_and_rate(model_dir):
    with live_server(
        model_dir, max_sessions=2, idle_timeout_s=0.6, max_events_per_second=20, rate_burst_s=100.0
    ) as srv:

        async def go():
            a = await StreamSession.connect(srv.ws)
            b = await StreamSession.connect(srv.ws)
            with pytest.raises(ServiceError) as e:
                await StreamSession.connect(srv.ws)
            assert e.value.code == "too_many_sessions" and e.value.close_code == 4429
            # rate limit: a burst of 2000 events is fine; 1500 more need 75 s of refill at 20 events/s
            await a.send_events(events(0, 2000))
            await a.send_events(events(3_000_000, 1500))
            err = await a.wait_for("error")
            assert err["code"] == "rate_limited" and "20 events/s" in err["message"]
            await a.close()  # now: a left idle as long as b would be closed for idling as well
            # idle: b says nothing
            err = await b.wait_for("error", timeout=5)
            assert err["code"] == "idle_timeout" and err["fatal"]
            await asyncio.wait_for(b._reader, 5)  # the close follows the error
            assert b.close_code == 4408

        run(go())
        assert srv.metric("asasnn_events_rejected_total", model="default", reason="rate_limited") == 1500
        deadline = time.monotonic() + 5
        while srv.state.connections and time.monotonic() < deadline:  # the server sees a's close
            time.sleep(0.02)
        assert srv.state.connections == 0
