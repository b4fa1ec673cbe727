"""``WS /ws/watch``, ``GET /v1/sessions``, demo sessions and the offline docs (service/watch.py,
service/demo.py, service/ui): real servers on loopback, real WebSocket clients, no mocks."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import json
import os
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from service.client.api import classify
from service.client.sources import split_packets
from service.telemetry import Metrics
from service.ui import VENDOR
from service.watch import QUEUE_MESSAGES, Watcher, WatchMetrics
from tests.service.helpers import DT_US, SENSOR, LiveServer, events, live_server, settings_for

KEY = "k-123456789"


def run(coro):
    return asyncio.run(coro)


def watch_url(srv: LiveServer, session: str, token: str | None = None) -> str:
    return f"ws://127.0.0.1:{srv.port}/ws/watch/{session}" + (f"?token={token}" if token else "")


async def start_stream(srv: LiveServer, token: str | None = None, **start: Any) -> tuple[ClientConnection, dict]:
    ws = await connect(srv.ws + (f"?token={token}" if token else ""))
    await ws.send(json.dumps({"type": "start", **start}))
    ready = json.loads(await ws.recv())
    assert ready["type"] == "ready", ready
    return ws, ready


async def until_snapshot(ws: ClientConnection, into: list[dict]) -> None:
    """Ask for a snapshot and read up to it: the server runs every queued step first, so every
    prediction of what was sent so far is in ``into`` afterwards (a barrier, not a wait)."""
    await ws.send(json.dumps({"type": "snapshot"}))
    while True:
        msg = json.loads(await ws.recv())
        if msg["type"] == "snapshot":
            await ws.recv()  # the snapshot's bytes
            return
        if msg["type"] == "prediction":
            into.append(msg)


async def refused(url: str, **kw: Any) -> tuple[dict, int | None]:
    """The error message and close code of a watch the server refuses."""
    async with connect(url, **kw) as ws:
        msg = json.loads(await ws.recv())
        with contextlib.suppress(ConnectionClosed):
            await ws.recv()
        return msg, ws.close_code


async def read_watch(ws: ClientConnection) -> list[dict]:
    """Every message of a watch until the server closes it (``ws.close_code`` is then the server's)."""
    out = []
    with contextlib.suppress(ConnectionClosed):
        async for raw in ws:
            out.append(json.loads(raw))
    return out


def frame_counts(gesture: np.ndarray, t_start: int) -> np.ndarray:
    """The events of ``gesture`` in ``[t_start, t_start + DT_US)`` as a [2, H, W] count image."""
    t = gesture["t"]
    ev = gesture[(t >= t_start) & (t < t_start + DT_US)]
    h, w = SENSOR.height, SENSOR.width
    flat = ev["p"].astype(np.int64) * h * w + ev["y"].astype(np.int64) * w + ev["x"]
    return np.bincount(flat, minlength=2 * h * w).reshape(2, h, w)


# ---- the watch follows the stream -------------------------------------------------------------------
def test_watcher_gets_the_stream_predictions_and_its_frames(server, gesture):
    async def main():
        stream, ready = await start_stream(server)
        async with connect(watch_url(server, ready["session"])) as w:
            hello = json.loads(await w.recv())
            watched = asyncio.create_task(read_watch(w))
            preds: list[dict] = []
            for packet in split_packets(gesture, 10_000):
                await stream.send(packet.tobytes())
            await until_snapshot(stream, preds)
            await stream.send(json.dumps({"type": "stop"}))
            async for raw in stream:
                if json.loads(raw)["type"] == "prediction":
                    preds.append(json.loads(raw))
            got = await watched
            return hello, preds, got, w.close_code

    hello, preds, got, close_code = run(main())
    assert hello["type"] == "watching" and hello["demo"] is False and hello["last"] is None
    assert hello["binning"] == {"sensor": {"width": 128, "height": 128}, "dt_us": DT_US, "ds": 4}
    assert hello["frame_shape"] == [2, 128, 128] and hello["frame_block"] == 1  # the sensor's resolution
    assert got[-1] == {"type": "end", "session": hello["session"], "reason": "closed"} and close_code == 1000
    by_step = {p["step"]: p for p in preds}
    watched = [m for m in got if m["type"] == "prediction"]
    assert watched, "the watcher saw no prediction"
    for m in watched:  # each one is the stream's own message, plus how many the watcher lost
        dropped = m.pop("dropped")
        assert m == by_step[m["step"]]
    if dropped == 0:
        assert [m["step"] for m in watched] == sorted(by_step)
    frames = [m for m in got if m["type"] == "frame"]
    assert frames, "the watcher saw no frame"
    for f in frames:  # exactly the events of that timestep, pixel by pixel
        counts = np.frombuffer(zlib.decompress(base64.b64decode(f["data"])), np.uint8).reshape(2, 128, 128)
        want = frame_counts(gesture, f["t_start_us"])
        assert f["events"] == int(want.sum())
        np.testing.assert_array_equal(counts, np.minimum(want, 255))


def test_watch_of_an_unknown_session_is_refused(server):
    msg, code = run(refused(watch_url(server, "no-such-session")))
    assert msg["type"] == "error" and msg["code"] == "unknown_session" and msg["fatal"] is True
    assert "GET /v1/sessions" in msg["message"] and code == 4404


def test_watcher_messages_never_reach_the_session(server, gesture):
    offline = classify(server.http, gesture)
    half = gesture.size // 2

    async def main():
        stream, ready = await start_stream(server)
        msgs: list[dict] = []
        await stream.send(gesture[:half].tobytes())
        await until_snapshot(stream, msgs)
        refusals = []
        for intrusion in (gesture[half:].tobytes(), json.dumps({"type": "reset"}), json.dumps({"type": "stop"})):
            async with connect(watch_url(server, ready["session"])) as w:
                assert json.loads(await w.recv())["type"] == "watching"
                await w.send(intrusion)
                refusals.append(((await read_watch(w))[-1], w.close_code))
        await stream.send(gesture[half:].tobytes())
        await stream.send(json.dumps({"type": "stop"}))
        async for raw in stream:
            msgs.append(json.loads(raw))
        return refusals, msgs

    refusals, msgs = run(main())
    for last, code in refusals:
        assert last["type"] == "error" and last["code"] == "read_only" and code == 4405, (last, code)
    assert not [m for m in msgs if m["type"] in ("reset", "error")]
    end = msgs[-1]
    assert end["type"] == "end"  # the stream's own stop, not the watcher's
    assert end["events"] == gesture.size and end["steps"] == offline["steps"] and end["label"] == offline["label"]
    steps = [m["step"] for m in msgs if m["type"] == "prediction"]
    assert steps == list(range(offline["steps"]))


def test_api_keys_guard_the_watch_and_the_listing(model_dir):
    with live_server(model_dir, api_keys=[KEY]) as srv:
        assert httpx.get(srv.http + "/v1/sessions").status_code == 401
        assert httpx.post(srv.http + "/v1/demo").json()["detail"]["code"] == "unauthorized"
        assert httpx.get(srv.http + "/v1/sessions", headers={"X-API-Key": KEY}).status_code == 200

        async def main():
            stream, ready = await start_stream(srv, token=KEY)
            sid = ready["session"]
            out = [await refused(watch_url(srv, sid)), await refused(watch_url(srv, sid, token="wrong-key-0"))]
            for kw in ({"additional_headers": {"X-API-Key": KEY}}, {}):
                url = watch_url(srv, sid, token=None if kw else KEY)
                async with connect(url, **kw) as w:
                    out.append(json.loads(await w.recv())["type"])
            await stream.close()
            return out

        no_key, wrong_key, by_header, by_token = run(main())
    for msg, code in (no_key, wrong_key):
        assert msg["code"] == "unauthorized" and code == 4401
    assert "missing" in no_key[0]["message"] and "invalid" in wrong_key[0]["message"]
    assert by_header == by_token == "watching"


# ---- a stalled watcher ------------------------------------------------------------------------------
@contextlib.contextmanager
def small_buffer_server(model_dir) -> Iterator[LiveServer]:
    """A server whose sockets have an 8 KiB send buffer (accepted sockets inherit the listener's, and a
    set size turns the kernel's autotuning off): a peer that does not read blocks it within ~100 KB
    instead of the megabytes loopback allows."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    srv = LiveServer(settings_for(model_dir))
    srv.thread = threading.Thread(target=srv.server.run, kwargs={"sockets": [sock]}, daemon=True)
    with srv:
        yield srv


def stalled_watcher(port: int, session: str) -> socket.socket:
    """A watcher that completes the handshake with a 4 KiB receive buffer and never reads again."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        f"GET /ws/watch/{session} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def test_a_stalled_watcher_loses_messages_and_the_stream_keeps_its_pace(model_dir):
    with small_buffer_server(model_dir) as srv:

        def dropped() -> float:
            return sum(srv.metric("asasnn_watch_dropped_total", kind=k) for k in ("prediction", "frame"))

        async def main():
            stream, ready = await start_stream(srv, output={"top_k": 10, "probabilities": True})
            watcher = stalled_watcher(srv.port, ready["session"])
            steps: list[int] = []
            got_more = asyncio.Event()

            async def read() -> dict:
                async for raw in stream:
                    msg = json.loads(raw)
                    if msg["type"] == "prediction":
                        steps.append(msg["step"])
                        got_more.set()
                    elif msg["type"] == "end":
                        return msg
                raise AssertionError("the stream closed without its end")

            reader = asyncio.create_task(read())
            t, sent = 0, 0
            # stream until the server reports drops: 8 timesteps a packet, at most 64 in flight
            while dropped() == 0:
                assert sent < 20_000, "no drop after 20 000 timesteps"
                await stream.send(events(t, 400, dt=1000, x=(sent * 7) % 128, y=(sent * 3) % 128).tobytes())
                t, sent = t + 8 * DT_US, sent + 8
                while len(steps) < sent - 64:
                    got_more.clear()
                    await got_more.wait()
            lost_while_streaming = dropped()
            await stream.send(json.dumps({"type": "stop"}))
            end = await reader
            watcher.close()
            return steps, end, lost_while_streaming

        steps, end, lost = run(main())
        assert lost > 0
        assert steps == list(range(end["steps"]))  # every prediction of the stream, in order
        assert end["steps"] >= 2 * QUEUE_MESSAGES
        wait_for(lambda: srv.metric("asasnn_watchers") == 0, "the server to let the stalled watcher go")


def test_a_watcher_queue_keeps_the_newest_messages():
    async def main():
        w = Watcher(WatchMetrics.register(Metrics()), queue=4)
        for step in range(10):
            w.offer({"type": "prediction", "step": step})
        w.end("closed")
        out = []
        while (text := await w.next()) is not None:
            out.append(json.loads(text))
        return out

    out = run(main())
    assert out == [{"type": "prediction", "step": s, "dropped": 6} for s in range(6, 10)]


# ---- the listing and demo sessions ------------------------------------------------------------------
def wait_for(check, what: str, timeout: float = 30.0) -> Any:
    """Poll ``check()`` until it returns something truthy (an event of the server, not a duration)."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def test_sessions_listing_and_demo_sessions(model_dir, gesture):
    with live_server(model_dir) as srv:

        def listing() -> dict:
            return httpx.get(srv.http + "/v1/sessions").json()

        assert listing() == {"sessions": [], "demos_running": 0, "demos_max": 2, "demo_duration_s": 300.0}
        a, b = (httpx.post(srv.http + "/v1/demo") for _ in range(2))
        assert a.status_code == b.status_code == 201 and a.json()["demo"] is True
        third = httpx.post(srv.http + "/v1/demo")
        assert third.status_code == 429 and third.json()["detail"]["code"] == "too_many_demos"
        ids = {a.json()["id"], b.json()["id"]}

        def both_predict() -> dict | None:
            ls = listing()
            return ls if ls["sessions"] and all(s["label"] for s in ls["sessions"]) else None

        now = wait_for(both_predict, "both demos to predict")
        assert {s["id"] for s in now["sessions"]} == ids and now["demos_running"] == 2
        assert all(s["demo"] and s["model"] == "default" and s["truth"] and s["events"] > 0 for s in now["sessions"])

        async def watch_then_stop(sid: str):
            async with connect(watch_url(srv, sid)) as w:
                hello = json.loads(await w.recv())
                first = json.loads(await w.recv())
                stop = await asyncio.to_thread(httpx.delete, f"{srv.http}/v1/demo/{sid}")
                assert stop.status_code == 202
                rest = await read_watch(w)
                return hello, first, rest[-1], w.close_code

        hello, first, end, code = run(watch_then_stop(a.json()["id"]))
        assert hello["demo"] is True and hello["last"]["type"] == "prediction"
        assert first["type"] in ("prediction", "frame")
        assert end == {"type": "end", "session": a.json()["id"], "reason": "stopped"} and code == 1000
        wait_for(lambda: [s["id"] for s in listing()["sessions"]] == [b.json()["id"]], "the stopped demo to go")
        assert httpx.delete(f"{srv.http}/v1/demo/{a.json()['id']}").json()["detail"]["code"] == "unknown_session"
        r = httpx.post(srv.http + "/v1/demo", json={"model": "no-such-model"})
        assert r.status_code == 404 and r.json()["detail"]["code"] == "unknown_model"

        async def a_stream_is_listed():  # a WebSocket stream is listed too, with its latest label
            stream, ready = await start_stream(srv)
            preds: list[dict] = []
            await stream.send(gesture.tobytes())
            await until_snapshot(stream, preds)
            mine = [s for s in listing()["sessions"] if s["id"] == ready["session"]]
            await stream.close()
            return preds[-1], mine

        last, mine = run(a_stream_is_listed())
        assert len(mine) == 1 and mine[0]["demo"] is False and mine[0]["truth"] is None
        assert (mine[0]["label"], mine[0]["step"]) == (last["label"], last["step"])
        assert mine[0]["events"] == gesture.size and mine[0]["sensor"] == [128, 128]


# ---- the page and the docs load nothing from elsewhere ----------------------------------------------
class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]


def local_urls(base: str, html: str) -> list[str]:
    """Every ``src``/``href`` of ``html``, resolved; fails on one that names another host."""
    p = Links()
    p.feed(html)
    out = []
    for u in p.urls:
        if u.startswith("data:"):
            continue
        full = urljoin(base, u)
        assert urlsplit(full).netloc == urlsplit(base).netloc, f"{base} refers to {u}"
        out.append(full)
    return out


def test_the_page_and_the_docs_refer_only_to_this_server(server):
    r = httpx.get(server.http + "/")
    assert r.status_code == 307 and r.headers["location"] == "/ui/"
    page = httpx.get(server.http + "/ui/")
    assert page.status_code == 200 and "<canvas" in page.text
    assets = local_urls(str(page.url), page.text)
    assert {u.rsplit("/", 1)[-1] for u in assets} >= {"style.css", "app.js"}
    for js in ("app.js", "charts.js", "style.css"):
        text = httpx.get(f"{server.http}/ui/{js}").text
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, js
    for path, bundle in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        html = httpx.get(server.http + path).text
        assert "http://" not in html and "https://" not in html, path  # no fonts, no CDN, no validator
        urls = local_urls(server.http + path, html)
        assert any(u.endswith(bundle) for u in urls), urls
        for u in urls:
            assert httpx.get(u).status_code == 200, u
    packed = httpx.get(server.http + "/ui/vendor/redoc.standalone.js", headers={"Accept-Encoding": "gzip"})
    assert packed.headers["content-encoding"] == "gzip"
    plain = httpx.get(server.http + "/ui/vendor/redoc.standalone.js", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.content == packed.content  # httpx inflated it
    assert b"cdn.redoc.ly" not in plain.content
    css = httpx.get(server.http + "/ui/vendor/swagger-ui.css").content
    assert gzip.decompress((VENDOR / "swagger-ui.css.gz").read_bytes()) == css
    assert httpx.get(server.http + "/ui/vendor/manifest.json").status_code == 404  # assets only
    spec = httpx.get(server.http + "/openapi.json").json()
    assert {"/v1/sessions", "/v1/demo", "/v1/demo/{session_id}"} <= set(spec["paths"])


def test_a_drain_ends_demo_sessions_and_tells_their_watchers(model_dir):
    with live_server(model_dir) as srv:
        sid = httpx.post(srv.http + "/v1/demo").json()["id"]

        async def main():
            async with connect(watch_url(srv, sid)) as w:
                assert json.loads(await w.recv())["type"] == "watching"
                srv.begin_drain()  # what SIGTERM does
                got = await read_watch(w)
                return got[-1], w.close_code

        last, code = run(main())
        assert last == {"type": "end", "session": sid, "reason": "draining"} and code == 1000
        assert srv.state.connections == 0 and not srv.state.streams
