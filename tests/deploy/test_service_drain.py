"""What a replica does on SIGTERM, which docs/deploy.md's operating model and the Kubernetes manifests
(preStop delay, terminationGracePeriodSeconds) rely on: it drains. New streams are refused (close code
1012, "service restart", the client's cue to reconnect elsewhere) and ``/readyz`` answers 503; open
streams are warned and may go on for ``drain_timeout_s``; those still open then are closed with 1012;
and the process exits cleanly well within the grace period.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import yaml
from deploy_support import DEPLOY, http_get, log_tail, serve

GRACE_S = yaml.safe_load((DEPLOY / "k8s" / "base" / "deployment.yaml").read_text())["spec"]["template"][
    "spec"
]["terminationGracePeriodSeconds"]


def _start(ws):
    """``start`` on a plain WebSocket; returns a synthetic packet source for the sensor it was given."""
    from models.events.types import SensorSize
    from models.synthetic import SyntheticConfig, live_packets

    ws.send(json.dumps({"type": "start"}))
    ready = json.loads(ws.recv(timeout=30))
    assert ready["type"] == "ready", ready
    sensor = ready["binning"]["sensor"]
    return live_packets(SyntheticConfig(sensor=SensorSize(sensor["width"], sensor["height"])), realtime=False)


def _until(ws, kind: str, code: str | None = None, timeout: float = 60) -> dict:
    """Read messages up to the first of type ``kind`` (and ``code``)."""
    while True:
        msg = json.loads(ws.recv(timeout=timeout))
        assert not (msg["type"] == "error" and msg["type"] != kind), msg
        if msg["type"] == kind and (code is None or msg.get("code") == code):
            return msg


def _check_exit(svc, t0: float) -> float:
    rc = svc.proc.wait(GRACE_S)
    took = time.monotonic() - t0
    # uvicorn shuts down gracefully, then re-raises the signal: exit status "killed by SIGTERM"
    assert rc in (0, -signal.SIGTERM), f"exit code {rc}\n{log_tail(svc.log)}"
    assert "Application shutdown complete" in svc.log.read_text(), log_tail(svc.log)
    assert took < GRACE_S / 2, f"shutdown took {took:.1f} s of a {GRACE_S} s grace period"
    return took


def test_sigterm_drains_then_hands_streams_back(model_dir: Path, tmp_path: Path) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    drain_s = 4.0
    with (
        serve(model_dir, tmp_path, drain_timeout_s=str(drain_s)) as svc,
        connect(svc.ws_url, max_size=None, open_timeout=30) as ws,
    ):
        packets = _start(ws)
        for _ in range(50):  # half a second of stream time
            ws.send(next(packets)[0].tobytes())
        _until(ws, "prediction")  # the stream is live

        t0 = time.monotonic()
        svc.proc.send_signal(signal.SIGTERM)
        warn = _until(ws, "warning", "draining")  # predictions in flight may come first
        assert warn["timeout_s"] == drain_s

        # no new streams: /readyz takes the replica out of rotation, a new WebSocket is refused with 1012
        status, body = http_get(svc.url + "/readyz")
        assert status == 503 and json.loads(body)["status"] == "draining"
        with connect(svc.ws_url, open_timeout=10) as ws2:
            try:  # the server may refuse before it reads anything: the close can beat our start
                ws2.send(json.dumps({"type": "start"}))
            except ConnectionClosed:
                pass
            refused = json.loads(ws2.recv(timeout=10))
            assert refused["type"] == "error" and refused["code"] == "draining", refused
            with pytest.raises(ConnectionClosed):
                ws2.recv(timeout=10)
            assert ws2.close_code == 1012

        # the open stream goes on until the drain timeout, then is handed back with 1012
        for _ in range(20):
            ws.send(next(packets)[0].tobytes())
        _until(ws, "prediction")
        with pytest.raises(ConnectionClosed):
            while True:
                ws.recv(timeout=GRACE_S)
        assert ws.close_code == 1012, f"close code {ws.close_code} ({ws.close_reason!r})"
        assert time.monotonic() - t0 >= drain_s - 0.5
        _check_exit(svc, t0)
        with pytest.raises(OSError):
            connect(svc.ws_url, open_timeout=5).close()


def test_sigterm_exits_as_soon_as_the_streams_end(model_dir: Path, tmp_path: Path) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    with (
        serve(model_dir, tmp_path, drain_timeout_s="60") as svc,
        connect(svc.ws_url, max_size=None, open_timeout=30) as ws,
    ):
        packets = _start(ws)
        for _ in range(30):
            ws.send(next(packets)[0].tobytes())
        _until(ws, "prediction")
        t0 = time.monotonic()
        svc.proc.send_signal(signal.SIGTERM)
        _until(ws, "warning", "draining")
        ws.send(json.dumps({"type": "stop"}))  # the stream ends by itself: nothing left to wait for
        end = _until(ws, "end")
        assert end["steps"] > 0
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=30)
        assert ws.close_code == 1000
        assert _check_exit(svc, t0) < 30  # well before the 60 s drain timeout
