"""Helpers of the deployment tests (imported by conftest.py and the tests of this folder).

* tools: Debian packages installed on demand (apt-get, root only), console scripts of the venv;
* processes: free loopback ports, HTTP polling, start/stop with logs;
* streaming: synthetic DVS events into ``WS /ws/infer`` over a plain WebSocket (protocol v1);
* model bundles: two small ones (causal ASA and vanilla) served side by side.

The PromQL tokenizer lives in :mod:`promql_names`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from service.client.wait import free_port, http_get

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent  # the venv's bin: asasnn, hadolint, kubernetes-validate


# ---- tools ------------------------------------------------------------------------------------------
def _apt_install(package: str) -> str:
    """Install a Debian package (root only); returns a log for the skip/fail message."""
    if shutil.which("apt-get") is None:
        return "apt-get not available"
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        return "not root, cannot apt-get install"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "-o", "Acquire::Retries=3"]
    install = [*apt, "install", "-y", "-q", "--no-install-recommends", package]
    log = []
    for attempt, update_first in enumerate((False, True, True)):
        try:
            if update_first:
                r = subprocess.run(
                    [*apt, "update", "-q"], env=env, check=False, capture_output=True, text=True, timeout=600
                )
                log.append(f"apt-get update rc={r.returncode}: {r.stderr.strip()[-500:]}")
            r = subprocess.run(install, env=env, check=False, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired as e:
            log.append(f"timed out: {e}")
            continue
        log.append(
            f"apt-get install {package} (try {attempt + 1}) rc={r.returncode}: {r.stderr.strip()[-500:]}"
        )
        if r.returncode == 0:
            break
        time.sleep(2 * attempt)
    return "\n".join(log)


@functools.cache
def _find_or_install(binary: str, package: str) -> tuple[str | None, str]:
    found = shutil.which(binary)
    if found:
        return found, ""
    log = _apt_install(package)
    return shutil.which(binary), log


def _unavailable(msg: str) -> None:
    """Skip, except under CI where these tests must run: there a missing tool fails."""
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def require_tool(binary: str, package: str) -> str:
    """Path of ``binary``, installing Debian's ``package`` if needed (skip, or fail under CI, if impossible)."""
    path, log = _find_or_install(binary, package)
    if path is None:
        _unavailable(f"{binary} not found and Debian package {package!r} could not be installed:\n{log}")
    return path  # type: ignore[return-value]


def require_venv_tool(name: str, pip_package: str) -> str:
    """A console script that a PyPI package installs into this venv (or one on PATH)."""
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        _unavailable(f"{name} missing: pip install {pip_package} (part of the dev extra)")
    return found  # type: ignore[return-value]


# ---- processes and HTTP -------------------------------------------------------------------------------
def log_tail(log: Path | None, n: int = 4000) -> str:
    return log.read_text(errors="replace")[-n:] if log is not None and log.exists() else ""


def wait_http(
    url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None
) -> None:
    """Poll ``url`` until it answers 200; fail with the process log if it exits or time runs out."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        try:
            status, body = http_get(url, timeout=2.0)
            if status == 200:
                return
            last = f"HTTP {status}: {body[:300]!r}"
        except OSError as e:
            last = repr(e)
        time.sleep(0.25)
    rc = None if proc is None else proc.poll()
    pytest.fail(f"{url} not ready after {timeout:.0f} s (last: {last}; exit code {rc})\n{log_tail(log)}")


def stop_process(proc: subprocess.Popen, grace: float = 15.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def running(cmd: list[str], log: Path, **kw: Any) -> Iterator[subprocess.Popen]:
    """A background process whose output goes to ``log``; terminated on exit."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, **kw)
    try:
        yield proc
    finally:
        stop_process(proc)


@dataclass
class LiveService:
    url: str  # http://127.0.0.1:PORT
    port: int
    model_dir: Path
    proc: subprocess.Popen
    log: Path

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[len("http") :] + "/ws/infer"

    def metrics_text(self) -> str:
        status, body = http_get(self.url + "/metrics")
        assert status == 200, f"GET /metrics: HTTP {status}"
        return body.decode()


@contextlib.contextmanager
def serve(model_dir: Path, workdir: Path, **settings: str) -> Iterator[LiveService]:
    """`asasnn serve` as a subprocess (real uvicorn) on a free loopback port, ready to stream; stopped
    with SIGTERM on exit. ``settings`` become ``ASASNN_<NAME>`` variables."""
    asasnn = require_venv_tool("asasnn", "the project itself (pip install -e .)")
    port = free_port()
    log = workdir / f"serve-{port}.log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ASASNN_")},
        "ASASNN_MODEL_DIR": str(model_dir),
        "ASASNN_DEVICE": "cpu",
        "PYTHONUNBUFFERED": "1",
        **{f"ASASNN_{k.upper()}": v for k, v in settings.items()},
    }
    with running(
        [asasnn, "serve", "--host", "127.0.0.1", "--port", str(port)], log, cwd=workdir, env=env
    ) as proc:
        svc = LiveService(f"http://127.0.0.1:{port}", port, model_dir, proc, log)
        wait_http(svc.url + "/readyz", timeout=120, proc=proc, log=log)
        yield svc


class Prometheus:
    """Client of a Prometheus HTTP API (instant queries, targets, rules)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def api(self, path: str, **params: str) -> Any:
        q = urllib.parse.urlencode(params)
        status, body = http_get(f"{self.url}/api/v1/{path}" + (f"?{q}" if q else ""), timeout=10)
        doc = json.loads(body)
        assert status == 200 and doc.get("status") == "success", f"{path} {params}: HTTP {status} {doc}"
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return data["result"]

    def value(self, expr: str) -> float | None:
        """The single value of a scalar-like query (None when the result is empty)."""
        res = self.query(expr)
        assert len(res) <= 1, f"{expr}: more than one series {res}"
        return float(res[0]["value"][1]) if res else None

    def wait_for(self, expr: str, pred, timeout: float) -> float | None:
        """Poll ``expr`` until ``pred(value)``; return the last value."""
        deadline = time.monotonic() + timeout
        v = None
        while time.monotonic() < deadline:
            v = self.value(expr)
            if v is not None and pred(v):
                return v
            time.sleep(0.5)
        return v


# ---- streaming ---------------------------------------------------------------------------------------
def _recv_json(ws: Any, timeout: float) -> dict[str, Any] | None:
    try:
        msg = ws.recv(timeout=timeout)
    except TimeoutError:
        return None
    return json.loads(msg) if isinstance(msg, str) else None


def stream_one(url: str, model: str | None, seconds: float, seed: int, out: list[dict[str, Any]]) -> None:
    """One session: ``start``, synthetic packets paced in real time for ``seconds``, ``stop``; the
    ``end`` summary goes to ``out``. Predictions are read as they come (never left to pile up)."""
    from websockets.sync.client import connect

    from models.events.types import SensorSize
    from models.synthetic import SyntheticConfig, live_packets

    with connect(url, max_size=None, open_timeout=30) as ws:
        ws.send(json.dumps({"type": "start", **({"model": model} if model else {})}))
        ready = None
        while ready is None:
            msg = _recv_json(ws, 30)
            assert msg is not None, "no 'ready' message within 30 s"
            assert msg.get("type") != "error", msg
            ready = msg if msg.get("type") == "ready" else None
        sensor = ready["binning"]["sensor"]
        cfg = SyntheticConfig(sensor=SensorSize(sensor["width"], sensor["height"]), seed=seed)
        predictions = 0
        t_end = time.monotonic() + seconds
        for events, _label in live_packets(cfg, packet_us=10_000, realtime=True, seed=seed):
            ws.send(events.tobytes())
            while (msg := _recv_json(ws, 0)) is not None:
                assert not (msg.get("type") == "error" and msg.get("fatal")), msg
                predictions += msg.get("type") == "prediction"
            if time.monotonic() >= t_end:
                break
        ws.send(json.dumps({"type": "stop"}))
        deadline = time.monotonic() + 120  # every queued step runs first; slow on a busy machine
        while time.monotonic() < deadline:
            msg = _recv_json(ws, 5)
            if msg is None:
                continue
            if msg.get("type") == "end":
                out.append({**msg, "predictions_seen": predictions})
                return
            assert not (msg.get("type") == "error" and msg.get("fatal")), msg
            predictions += msg.get("type") == "prediction"
        raise AssertionError("no 'end' message within 120 s of 'stop'")


def refused_session(url: str, start: dict[str, Any]) -> dict[str, Any]:
    """Open a WebSocket, send ``start`` (one the server must refuse) and return its fatal error message
    (the server counts it in ``asasnn_sessions_rejected_total{reason=<code>}``)."""
    from websockets.sync.client import connect

    with connect(url, max_size=None, open_timeout=30) as ws:
        ws.send(json.dumps(start))
        msg = _recv_json(ws, 30)
    assert msg is not None and msg.get("type") == "error" and msg.get("fatal"), msg
    return msg


def refused_packet(url: str, data: bytes, model: str | None = None) -> dict[str, Any]:
    """A session that sends one binary packet the server must refuse (e.g. not a whole number of event
    records), then stops cleanly; returns the (non-fatal) error message. The server counts it in
    ``asasnn_messages_rejected_total`` and ``asasnn_events_rejected_total`` (len(data) // 13 events)."""
    from websockets.sync.client import connect

    with connect(url, max_size=None, open_timeout=30) as ws:
        ws.send(json.dumps({"type": "start", **({"model": model} if model else {})}))
        while (msg := _recv_json(ws, 30)) is not None and msg.get("type") != "ready":
            assert msg.get("type") != "error", msg
        assert msg is not None, "no 'ready' message within 30 s"
        ws.send(data)
        while (msg := _recv_json(ws, 30)) is not None and msg.get("type") != "error":
            pass
        assert msg is not None and not msg.get("fatal"), msg
        error = msg
        ws.send(json.dumps({"type": "stop"}))
        while (msg := _recv_json(ws, 30)) is not None and msg.get("type") != "end":
            pass
        assert msg is not None, "no 'end' message within 30 s of 'stop'"
    return error


def stream_synthetic(
    url: str, seconds: float, models: tuple[str | None, ...] = (None,)
) -> list[dict[str, Any]]:
    """One concurrent session of synthetic events per entry of ``models`` (None: the default model);
    their ``end`` summaries."""
    out: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def run(model: str | None, seed: int) -> None:
        try:
            stream_one(url, model, seconds, seed, out)
        except BaseException as e:  # noqa: BLE001 - re-raised by the caller, in its thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(m, i), daemon=True) for i, m in enumerate(models)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 200)
    if errors:
        raise errors[0]
    assert len(out) == len(models), f"{len(out)} of {len(models)} streams finished"
    return out


# ---- the small model bundles ------------------------------------------------------------------------
def build_tiny_bundle(directory: Path, attention: str, name: str, with_onnx: bool = False) -> Path:
    """A small streaming bundle (``tiny`` network, calibrated so that every layer spikes, sensor 128x128,
    ds 4, dt 15 ms). Without ``with_onnx`` only the card and the weights are written (the torch backend
    needs nothing else, and the verified ONNX export takes about a minute on two cores)."""
    import torch

    from models.attention import AttentionConfig
    from models.config import preset
    from models.network import SpikingNet
    from models.runtime.bundle import save_bundle
    from models.runtime.calibrate import calibrate_untrained
    from models.runtime.export import build_card, export_bundle, random_frames
    from models.synthetic import CLASSES

    torch.manual_seed(0)
    cfg = preset("tiny", len(CLASSES), attention=AttentionConfig(kind=attention))
    net = SpikingNet(cfg)
    frames = torch.from_numpy(random_frames(4, 2, (2, *cfg.input_size), seed=0))  # enough to set BN stats
    calibrate_untrained(net, frames)
    card = build_card(net, classes=CLASSES, sensor=(128, 128), ds=4, dt_us=15_000, name=name)
    if with_onnx:
        export_bundle(net, card, directory, steps=8)
    else:
        save_bundle(directory, card, net, None)
    return directory


def build_model_dir(tmp: Path) -> Path:
    """A model directory serving two models side by side, as the dashboard's A/B row expects:
    ``default`` (the bundled default model when the checkout has one, else a tiny causal-ASA
    network) and ``vanilla`` (a tiny network without attention)."""
    root = tmp / "models"
    root.mkdir(parents=True, exist_ok=True)
    bundled = REPO / "models" / "bundled" / "default"
    if (bundled / "card.json").is_file():
        shutil.copytree(bundled, root / "default", ignore=shutil.ignore_patterns("__pycache__"))
    else:
        build_tiny_bundle(root / "default", "causal-asa", "tiny-causal-asa")
    build_tiny_bundle(root / "vanilla", "none", "tiny-vanilla")
    return root
