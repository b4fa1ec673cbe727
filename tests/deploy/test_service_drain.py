"""What a replica does on SIGTERM, which docs/deploy.md's operating model and the Kubernetes manifests
(preStop delay, terminationGracePeriodSeconds) rely on: it stops taking connections, hands every open
stream back to its client with WebSocket close code 1012 ("service restart", the client's cue to
reconnect elsewhere), and exits cleanly well within the grace period.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import yaml
from deploy_support import DEPLOY, log_tail, serve

GRACE_S = yaml.safe_load((DEPLOY / "k8s" / "base" / "deployment.yaml").read_text())["spec"]["template"][
    "spec"
]["terminationGracePeriodSeconds"]


def test_sigterm_hands_streams_back(model_dir: Path, tmp_path: Path) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    from models.events.types import SensorSize
    from models.synthetic import SyntheticConfig, live_packets

    with serve(model_dir, tmp_path) as svc, connect(svc.ws_url, max_size=None, open_timeout=30) as ws:
        ws.send(json.dumps({"type": "start"}))
        ready = json.loads(ws.recv(timeout=30))
        assert ready["type"] == "ready", ready
        sensor = ready["binning"]["sensor"]
        packets = live_packets(
            SyntheticConfig(sensor=SensorSize(sensor["width"], sensor["height"])), realtime=False
        )
        for _ in range(50):  # half a second of stream time
            ws.send(next(packets)[0].tobytes())
        while True:  # the stream is live: predictions come back
            msg = json.loads(ws.recv(timeout=60))
            if msg["type"] == "prediction":
                break

        t0 = time.monotonic()
        svc.proc.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed):
            while True:  # predictions still in flight may arrive first
                ws.recv(timeout=GRACE_S)
        assert ws.close_code == 1012, f"close code {ws.close_code} ({ws.close_reason!r})"
        rc = svc.proc.wait(GRACE_S)
        took = time.monotonic() - t0
        # uvicorn shuts down gracefully, then re-raises the signal: exit status "killed by SIGTERM"
        assert rc in (0, -signal.SIGTERM), f"exit code {rc}\n{log_tail(svc.log)}"
        assert "Application shutdown complete" in svc.log.read_text(), log_tail(svc.log)
        assert took < GRACE_S / 2, f"shutdown took {took:.1f} s of a {GRACE_S} s grace period"
        with pytest.raises(OSError):
            connect(svc.ws_url, open_timeout=5).close()
