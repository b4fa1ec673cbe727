"""``asasnn serve --workers 2``: two real server processes on one port (service/workers.py).

Streams reach both workers and each gets every prediction, in order; ``GET /metrics`` on any worker
reports the sessions and steps of both; a worker killed outright is replaced while the other's
stream goes on; SIGTERM drains both and the parent exits 0. Every wait is on a log line, a message
or a process, with a generous limit only so that a broken server fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from service.client.api import StreamSession
from service.client.wait import free_port, wait_ready
from tests.service.helpers import DT_US, events

REPO = Path(__file__).resolve().parents[2]


class Workers:
    """``asasnn serve --workers 2 --log-format json`` on a free port; its log lines, parsed."""

    def __init__(self, model_dir: Path, log: Path) -> None:
        self.port = free_port()
        self.http = f"http://127.0.0.1:{self.port}"
        self.ws = f"ws://127.0.0.1:{self.port}/ws/infer"
        self.log = log
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ASASNN_", "PROMETHEUS_"))} | {
            "ASASNN_MODEL_DIR": str(model_dir),
            "ASASNN_DEVICE": "cpu",
            "ASASNN_BACKEND": "torch",
            "ASASNN_DRAIN_TIMEOUT_S": "2",
        }
        cmd = [sys.executable, "-m", "asasnn.cli", "serve", "--port", str(self.port), "--workers", "2",
               "--log-format", "json"]
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        self.wait_log(lambda r: "with 2 workers" in r.get("message", ""))
        for worker in (0, 1):
            self.wait_log(lambda r, w=worker: r.get("worker") == w and "serving models" in r.get("message", ""))
        wait_ready(self.http + "/readyz", 120)

    def records(self) -> list[dict]:
        out = []
        for line in self.log.read_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def wait_log(self, pred, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [r for r in self.records() if pred(r)]
            if found:
                return found[-1]
            assert self.proc.poll() is None, f"the server exited:\n{self.log.read_text()[-3000:]}"
            time.sleep(0.1)
        raise AssertionError(f"no such log line within {timeout} s:\n{self.log.read_text()[-3000:]}")

    def worker_pids(self) -> set[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return {int(c) for c in children if "spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes().decode()}

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


def _packets(n: int = 6) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        ev = events(i * 2 * DT_US, 300, dt=2 * DT_US // 300)
        ev["x"], ev["y"] = rng.integers(0, 128, 300), rng.integers(0, 128, 300)
        out.append(ev)
    return out


async def _stream(url: str) -> tuple[str, list[int], dict]:
    async with await StreamSession.connect(url) as s:
        for p in _packets():
            await s.send_events(p)
        end = await s.stop()
        return s.session_id, [p["step"] for p in s.predictions], end


def _sessions_by_worker(srv: Workers) -> dict[str, int]:
    return {r["session"]: r["worker"] for r in srv.records() if r.get("message") == "session opened"}


def test_two_workers_share_the_port_and_the_metrics(model_dir, tmp_path):
    srv = Workers(model_dir, tmp_path / "serve.log")
    try:
        results = []
        for _ in range(40):  # until both workers have served streams (the kernel picks the worker)
            results += asyncio.run(_gather(srv.ws, 4))
            if len(set(_sessions_by_worker(srv).values())) == 2:
                break
        by_worker = _sessions_by_worker(srv)
        assert set(by_worker.values()) == {0, 1}, by_worker
        for sid, steps, end in results:
            assert steps == list(range(end["steps"])) and end["steps"] > 0, (sid, steps, end)
        # any worker's /metrics counts every worker's sessions and steps
        want_steps = sum(end["steps"] for _, _, end in results)
        for _ in range(4):
            text = httpx.get(srv.http + "/metrics").text
            assert _sample(text, 'asasnn_sessions_started_total{model="default"}') == len(results)
            assert _sample(text, 'asasnn_steps_total{model="default"}') == want_steps
            assert _sample(text, 'asasnn_active_sessions{model="default"}') == 0
    finally:
        status = srv.stop()
    assert status == 0
    for worker in (0, 1):
        srv.wait_log(lambda r, w=worker: r.get("worker") == w and r.get("message") == "drained", timeout=5)


def test_a_killed_worker_is_replaced_and_the_other_streams_on(model_dir, tmp_path):
    srv = Workers(model_dir, tmp_path / "serve.log")
    try:
        pids = srv.worker_pids()
        assert len(pids) == 2
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        srv.wait_log(lambda r: "starting a new one" in r.get("message", ""))
        deadline = time.monotonic() + 120
        while len(srv.worker_pids() - {victim}) < 2:
            assert time.monotonic() < deadline, "no replacement worker"
            time.sleep(0.1)
        wait_ready(srv.http + "/readyz", 120)
        # streams are served again, by whichever worker takes them
        for _, steps, end in asyncio.run(_gather(srv.ws, 4)):
            assert steps == list(range(end["steps"])) and end["steps"] > 0
    finally:
        assert srv.stop() == 0


async def _gather(url: str, n: int) -> list[tuple[str, list[int], dict]]:
    return list(await asyncio.gather(*(_stream(url) for _ in range(n))))


def _sample(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))
