"""Hostile input, case by case (each numbered case of the reliability review): a specific error,
and the server and every other stream go on. Real uvicorn, real WebSocket and HTTP clients.

Where a case is about the other streams keeping their pace, a healthy stream runs beside it and
must keep receiving predictions *while* the hostile request is being handled (counted, not timed).
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from models.events import MAX_T_US, make_events
from service.client.api import StreamSession
from tests.service.helpers import DT_US, events, live_server

CORPUS = Path(__file__).resolve().parents[1] / "fuzz" / "corpus" / "upload"


def run(coro):
    return asyncio.run(coro)


class Healthy:
    """A stream at real-time speed beside a test: one timestep of events every ``DT_US``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sent = 0

    async def __aenter__(self) -> Healthy:  # noqa: PYI034 - final class
        self.s = await StreamSession.connect(self.url)
        self.task = asyncio.get_running_loop().create_task(self._pump())
        return self

    async def _pump(self) -> None:
        t = 0
        while True:
            await self.s.send_events(events(t, 20, dt=DT_US // 20))
            t += DT_US
            self.sent += 1
            await asyncio.sleep(DT_US / 1e6)

    @property
    def received(self) -> int:
        return len(self.s.predictions)

    async def __aexit__(self, *exc: object) -> None:
        self.task.cancel()
        await self.s.close()


# ---- 1: a corrupted AEDAT4 upload that hangs dv-processing -----------------------------------------
def test_1_a_hanging_aedat4_is_killed_and_refused_while_streams_go_on(model_dir):
    data = (CORPUS / "hangs-one-flipped-byte.aedat4").read_bytes()

    async def go(srv):
        async with Healthy(srv.ws) as healthy:
            await healthy.s.wait_for("prediction")
            before = healthy.received
            async with httpx.AsyncClient(timeout=60) as http:
                r = await http.post(srv.http + "/v1/classify", files={"file": ("bad.aedat4", data)})
                during = healthy.received - before
                health = await http.get(srv.http + "/healthz")
        return r, during, health

    with live_server(model_dir, decode_timeout_s=3) as srv:
        r, during, health = run(go(srv))
        assert r.status_code == 422 and r.json()["detail"]["code"] == "decode_timeout"
        assert "3 s" in r.json()["detail"]["message"]
        assert during >= 10  # the neighbour kept streaming for the 3 s the decoder was given
        assert health.status_code == 200
        # the next upload gets a fresh decoder: a valid recording classifies
        valid = (CORPUS / "valid.aedat4").read_bytes()  # a 64x64 recording, classified as 128x128
        ok = httpx.post(
            srv.http + "/v1/classify",
            data={"sensor_width": "128", "sensor_height": "128"},
            files={"file": ("ok.aedat4", valid)},
        )
        assert ok.status_code == 200, ok.text


# ---- 2: decompression bombs --------------------------------------------------------------------------
def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_2_decompression_bombs_are_refused_by_their_headers(model_dir):
    bomb = _npz(events=np.zeros((60_000_000, 4), np.int64))  # 1.9 GB of zeros in about 2 MB
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<i8", "fortran_order": False, "shape": (10**12, 4)})
    with live_server(model_dir, max_recording_events=1_000_000) as srv, httpx.Client(timeout=60) as http:
        rss = _rss_mb()
        for name, data in (("bomb.npz", bomb), ("huge-header.npy", head.getvalue())):
            r = http.post(srv.http + "/v1/classify", files={"file": (name, data)})
            assert r.status_code == 413, r.text
            assert r.json()["detail"]["code"] == "too_many_events" and "declares" in r.json()["detail"]["message"]
        assert _rss_mb() - rss < 200  # the server process never held the expanded arrays
        # a zip member that is no .npy array: a clear 422, and the same keep-alive connection goes on
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("events.npy", b"this is not an array")
        r = http.post(srv.http + "/v1/classify", files={"file": ("odd.npz", buf.getvalue())})
        assert r.status_code == 422 and r.json()["detail"]["code"] == "bad_file"
        assert http.get(srv.http + "/healthz").status_code == 200


# ---- 3: a time gap inside one packet costs O(1) ------------------------------------------------------
@pytest.mark.parametrize("gap_us", [86_400 * 10**6, 10 * 86_400 * 10**6, MAX_T_US - 10])
def test_3_a_gap_inside_one_packet_costs_what_the_gap_cap_allows(server, gap_us):
    async def go():
        async with await StreamSession.connect(server.ws) as s:
            cap = s.ready["binning"]["max_gap_steps"]
            await s.send_events(make_events([0, gap_us], [1, 2], [1, 2], [1, 0]))
            warning = await s.wait_for("warning", code="time_gap", timeout=30)
            end = await s.stop()
            return cap, warning, end

    cap, warning, end = run(go())
    assert warning["skipped_steps"] == gap_us // DT_US - 1 - cap
    assert end["steps"] == cap + 2  # the event's step, the capped empty steps, the last event's step


def test_3_the_binning_of_a_gap_allocates_nothing_in_proportion_to_it(server):
    """The session's chunking follows the events: a packet spanning 2^62 us is binned with a few
    small arrays (before the fix it built an arange of gap / 8 entries: a MemoryError)."""
    import tracemalloc

    from service.session import Session

    state = server.state
    entry = state.registry.get(None)
    cfg = state.session_config(entry, live=False)

    async def go():
        s = Session(state.engine, state.worker(entry), cfg, stream=False)
        await s.open()
        try:
            tracemalloc.start()
            await s.feed(make_events([0, 5, MAX_T_US // 2, MAX_T_US], [1] * 4, [1] * 4, [1] * 4))
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            await s.finish()
        finally:
            await s.close()
        return peak

    assert run(go()) < 8 << 20


# ---- 4: a session held under backpressure is not killed by keepalive pings --------------------------
def test_4_backpressure_outlives_what_a_keepalive_ping_would_allow(model_dir):
    """With a keepalive like uvicorn's default (here 1 s + 1 s), a session held under backpressure for
    4 s dies with 1011: its socket is not read, so the pong is never seen. With the server's own
    settings (no pings) the same session waits, then gets every prediction."""
    import threading

    from service.client.api import ServiceError
    from tests.service.helpers import wrapping_loader

    async def go(srv, store):
        runner = store["default"]
        runner.gate = threading.Event()  # the model stalls: the session's queue fills, its socket is not read
        s = await StreamSession.connect(srv.ws)
        try:
            for i in range(12):
                await s.send_events(events(i * 10 * DT_US, 40, dt=DT_US // 4))  # 10 steps a packet
            await asyncio.sleep(4)  # two keepalive periods while held
            runner.gate.set()
            end = await s.stop(timeout=60)
            return end["steps"], len(s.predictions), s.close_code
        except (ServiceError, ConnectionClosed):
            return None, len(s.predictions), s.close_code or s.ws.close_code
        finally:
            runner.gate.set()
            await s.close()

    store: dict = {}
    with live_server(model_dir, loader=wrapping_loader(store), max_queue_steps=4) as srv:
        assert srv.settings.uvicorn_ws_options["ws_ping_interval"] is None
        steps, got, _ = run(go(srv, store))
        assert steps is not None and got == steps >= 119  # every prediction, none lost

    store = {}
    with live_server(model_dir, loader=wrapping_loader(store), max_queue_steps=4) as srv:
        srv.server.config.ws_ping_interval = srv.server.config.ws_ping_timeout = 1.0  # new connections ping
        steps, got, close = run(go(srv, store))
        assert steps is None and close == 1011  # what keepalive pings did to a healthy, waiting client


# ---- 5: numbers out of range get a specific error -------------------------------------------------
def test_5_start_and_control_numbers_out_of_range(server):
    async def start(extra):
        async with connect(server.ws) as ws:
            await ws.send(json.dumps({"type": "start", **extra}))
            msg = json.loads(await ws.recv())
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            return msg, ws.close_code

    for extra, code in (
        ({"t_start_us": 2**63}, "bad_message"),
        ({"t_start_us": 10**30}, "bad_message"),
        ({"version": True}, "unsupported_version"),
        ({"version": 1.0}, "unsupported_version"),
        ({"readout": {"horizon": 10**12}}, "bad_message"),
    ):
        msg, close = run(start(extra))
        assert msg["type"] == "error" and msg["code"] == code and msg["fatal"], (extra, msg)
        assert close == 4400

    async def control():
        async with await StreamSession.connect(server.ws) as s:
            await s.advance(10**20)
            err = await s.wait_for("error")
            await s.send_events(make_events([MAX_T_US + 1], [1], [1], [1]))
            err2 = await s.wait_for("error")
            await s.send_events(events(0, 5))  # and the session goes on
            await s.advance(3 * DT_US)
            await s.wait_for("prediction")
            return err, err2

    err, err2 = run(control())
    assert err["code"] == "bad_message" and not err["fatal"] and "t_us" in err["message"]
    assert err2["code"] == "time_out_of_range" and not err2["fatal"]


def test_5_rest_numbers_out_of_range_and_the_connection_survives(server):
    wire = make_events([0, 10**18], [1, 2], [1, 2], [1, 0]).tobytes()
    with httpx.Client(timeout=60) as http:
        for data, code in (
            ({"t_start_us": str(10**30)}, "bad_request"),
            ({"readout_horizon": str(10**12)}, "bad_request"),
        ):
            r = http.post(server.http + "/v1/classify", data=data, files={"file": ("a.evt", wire)})
            assert r.status_code == 422 and r.json()["detail"]["code"] == code, r.text
        r = http.post(server.http + "/v1/classify", files={"file": ("far.evt", wire)})  # a gap of 10^18 us
        assert r.status_code == 200, r.text
        assert r.json()["skipped_steps"] > 0
        assert http.get(server.http + "/healthz").status_code == 200  # one keep-alive connection throughout


# ---- 6: connections that never start ----------------------------------------------------------------
def test_6_unstarted_connections_neither_hold_sessions_nor_stay(model_dir):
    async def go(srv):
        idle = [await connect(srv.ws) for _ in range(4)]  # more than max_sessions, never start
        async with await StreamSession.connect(srv.ws) as s:  # a real stream still gets a session
            await s.send_events(events(0, 5))
            await s.advance(3 * DT_US)
            await s.wait_for("prediction")
        closes = []
        for ws in idle:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            closes.append((msg["code"], ws.close_code))
        return closes

    with live_server(model_dir, max_sessions=2, max_pending_connections=8, start_timeout_s=1.5) as srv:
        closes = run(go(srv))
        assert closes == [("start_timeout", 4408)] * 4

    async def flood(srv):
        idle = [await connect(srv.ws) for _ in range(2)]
        async with connect(srv.ws) as third:
            msg = json.loads(await third.recv())
        for ws in idle:
            await ws.close()
        return msg

    with live_server(model_dir, max_pending_connections=2, start_timeout_s=30) as srv:
        msg = run(flood(srv))
        assert msg["code"] == "too_many_pending" and msg["fatal"]


# ---- 7: cross-site WebSocket, and the API key before the body ------------------------------------------
def test_7_a_page_of_another_site_cannot_stream(model_dir):
    async def open_with(url, origin):
        async with connect(url, origin=origin) as ws:
            await ws.send(json.dumps({"type": "start"}))
            return json.loads(await ws.recv())["type"]

    with live_server(model_dir, allowed_origins=["https://viewer.example.org"]) as srv:
        with pytest.raises(InvalidStatus) as refused:
            run(open_with(srv.ws, "https://evil.example.com"))
        assert refused.value.response.status_code == 403
        assert run(open_with(srv.ws, f"http://127.0.0.1:{srv.port}")) == "ready"  # the server's own pages
        assert run(open_with(srv.ws, "https://viewer.example.org")) == "ready"  # allowed
        assert srv.metric("asasnn_sessions_rejected_total", reason="forbidden_origin") == 1


def test_7_an_unauthenticated_upload_is_refused_before_its_body_is_read(model_dir):
    with live_server(model_dir, api_keys=["secret-key-1"]) as srv:
        # headers announcing 60 MiB, and not one byte of body: the 401 must come anyway
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                b"Content-Length: 62914560\r\n\r\n"
            )
            reply = sock.recv(4096).decode()
        assert reply.startswith("HTTP/1.1 401") and '"unauthorized"' in reply


# ---- 8: REST errors have the documented shape -------------------------------------------------------
def test_8_every_rest_error_has_the_documented_shape(server):
    r = httpx.post(server.http + "/v1/classify", data={"top_k": "many"}, files={"file": ("a.evt", b"")})
    assert r.status_code == 422
    body = r.json()
    assert set(body) == {"detail"} and set(body["detail"]) == {"code", "message"}
    assert body["detail"]["code"] == "bad_request" and "top_k" in body["detail"]["message"]
    spec = httpx.get(server.http + "/openapi.json").json()
    err = spec["paths"]["/v1/classify"]["post"]["responses"]["422"]["content"]["application/json"]["schema"]
    assert err["$ref"].endswith("/ErrorResponse")
    assert spec["components"]["schemas"]["ErrorResponse"]["properties"]["detail"]["$ref"].endswith("/ErrorBody")
