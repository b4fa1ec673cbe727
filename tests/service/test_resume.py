"""Resumable sessions (docs/protocol.md, "Snapshots"): a stream survives a drain or a crash of its
server, bit for bit, and every snapshot that must not be used is refused with its own code.

The end-to-end tests run real ``asasnn serve`` processes one after the other on one port, as a
rolling update does behind a Service: server A streams, is drained (SIGTERM) or killed (SIGKILL),
server B (same snapshot secret) takes the port, the client reconnects and resumes. The whole
prediction sequence must equal an uninterrupted run of the same events, value for value.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from websockets.asyncio.client import connect

from service import snapshot
from service.client.api import Reconnect, Resume, StreamSession
from service.client.wait import free_port, wait_ready
from tests.service.helpers import DT_US, events, live_server

REPO = Path(__file__).resolve().parents[2]
SECRET = "a-shared-test-secret"


def run(coro):
    return asyncio.run(coro)


def _packets(n: int = 40) -> list[np.ndarray]:
    """n packets of 5 timesteps each of varied events (the model's 128x128 sensor)."""
    rng = np.random.default_rng(3)
    out = []
    for i in range(n):
        t = np.sort(rng.integers(i * 5 * DT_US, (i + 1) * 5 * DT_US, 400))
        ev = events(0, 400)
        ev["t"], ev["x"], ev["y"] = t, rng.integers(0, 128, 400), rng.integers(0, 128, 400)
        out.append(ev)
    return out


def _row(p: dict) -> tuple:
    return (p["step"], p["label_index"], p["spikes"], p["sops"], p["energy_j"], json.dumps(p["top_k"]))


async def _uninterrupted(url: str, packets: list[np.ndarray]) -> tuple[list[tuple], dict]:
    async with await StreamSession.connect(url) as s:
        for p in packets:
            await s.send_events(p)
        end = await s.stop()
        return [_row(p) for p in s.predictions], end


class Serve:
    """``asasnn serve`` as a subprocess on ``port`` with the shared snapshot secret."""

    def __init__(self, model_dir: Path, port: int, log: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ASASNN_")} | {
            "ASASNN_MODEL_DIR": str(model_dir),
            "ASASNN_DEVICE": "cpu",
            "ASASNN_SNAPSHOT_SECRET": SECRET,
            "ASASNN_DRAIN_TIMEOUT_S": "1",
        }
        cmd = [sys.executable, "-m", "asasnn.cli", "serve", "--port", str(port)]
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        wait_ready(f"http://127.0.0.1:{port}/readyz", 120)

    def stop(self, sig: int) -> None:
        self.proc.send_signal(sig)
        self.proc.wait(60)


@pytest.mark.parametrize("how", ["drain", "crash"])
def test_a_stream_survives_its_server_bit_for_bit(model_dir, tmp_path, how):
    port = free_port()
    url = f"ws://127.0.0.1:{port}/ws/infer"
    packets = _packets()
    log = tmp_path / "serve.log"

    async def stream() -> tuple[list[tuple], dict, StreamSession]:
        s = await StreamSession.connect(
            url,
            reconnect=Reconnect(max_attempts=None, initial_delay_s=0.2, max_delay_s=0.5),
            resume=Resume(snapshot_every_s=0.3),
        )
        for i, p in enumerate(packets):
            await s.send_events(p)
            await asyncio.sleep(0.05)
            if i == len(packets) // 2:
                while s.snapshot is None:  # at least one periodic snapshot before the failure
                    await asyncio.sleep(0.05)
                await asyncio.to_thread(a.stop, signal.SIGTERM if how == "drain" else signal.SIGKILL)
                await asyncio.to_thread(servers.append, Serve(model_dir, port, log))  # B takes the port
        end = await s.stop(timeout=60)
        await s.close()
        return [_row(p) for p in s.predictions], end, s

    a = Serve(model_dir, port, log)
    servers: list[Serve] = []
    try:
        got, end, s = run(stream())
        ref, ref_end = run(_uninterrupted(url, packets))  # the same events, never interrupted (on B)
    finally:
        for srv in [a, *servers]:
            if srv.proc.poll() is None:
                srv.stop(signal.SIGTERM)
    assert s.reconnects == 1
    reconnected = next(m for m in s.messages if m["type"] == "reconnected")
    assert reconnected["resumed"] is not None and reconnected["close_code"] == (1012 if how == "drain" else 1006)
    assert got == ref  # every step once, in order, bit for bit: labels, spikes, SOPs, energy, top-k
    assert len(got) == ref_end["steps"] and end["steps"] == ref_end["steps"]
    assert end["spikes"] == ref_end["spikes"] and end["sops"] == ref_end["sops"]
    if how == "drain":
        assert "snapshot" in [m["type"] for m in s.messages]  # the drain sent one before 1012


# ---- refusals -----------------------------------------------------------------------------------------
async def _take_snapshot(url: str, **start) -> tuple[bytes, dict]:
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "start", **start}))
        await ws.recv()
        await ws.send(events(0, 200, dt=DT_US // 20).tobytes())
        await ws.send(json.dumps({"type": "snapshot"}))
        while not isinstance(raw := await ws.recv(), bytes):
            info = json.loads(raw)
        return raw, info


async def _resume_with(url: str, data: bytes | str, **start) -> tuple[dict | None, dict]:
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "start", "resume": True, **start}))
        await ws.send(data)
        first = json.loads(await ws.recv())
        error, ready = (first, json.loads(await ws.recv())) if first["type"] == "error" else (None, first)
        await ws.send(events(10**9, 20).tobytes())  # the session works either way
        await ws.send(json.dumps({"type": "stop"}))
        while json.loads(await ws.recv())["type"] != "end":
            pass
        return error, ready


def _resign(data: bytes, key: bytes, **header) -> bytes:
    snap = snapshot.decode(data, key)
    snap.header.update(header)
    return snapshot.encode(snap, key)


def test_each_unusable_snapshot_is_refused_with_its_code_and_the_session_starts_from_rest(model_dir):
    with live_server(model_dir, snapshot_secret=SECRET, snapshot_max_age_s=3600) as srv:
        key = srv.state.snapshot_key
        good, info = run(_take_snapshot(srv.ws))
        assert info["type"] == "snapshot" and info["bytes"] == len(good) and info["messages"] == 1
        error, ready = run(_resume_with(srv.ws, good))
        assert error is None and ready["resumed"]["step"] == info["step"]  # the good one resumes

        other, _ = run(_take_snapshot(srv.ws, model="other"))
        flipped = bytearray(good)
        flipped[len(good) // 2] ^= 1
        cases = {
            "snapshot_tampered": bytes(flipped),
            "snapshot_truncated": good[: len(good) - 100],
            "snapshot_malformed": b"not a snapshot at all, but long enough to have a header and a mac field",
            "snapshot_foreign_model": other,
            # the same model name, other weights and version: what a new release of the model is
            "snapshot_model_version": _resign(good, key, model={"name": "default", "version": "9.9.9", "fingerprint": "x"}),
            "snapshot_expired": _resign(good, key, created_s=time.time() - 10 * 86400),
            "snapshot_missing": json.dumps({"type": "flush"}),
        }
        for code, data in cases.items():
            error, ready = run(_resume_with(srv.ws, data))
            assert error is not None and error["code"] == code and not error["fatal"], (code, error)
            assert ready["type"] == "ready" and ready["resumed"] is None, code
            assert srv.metric("asasnn_snapshots_total", model="default", outcome=code) >= 1
        # the same snapshot into a session binned differently: a mismatch, not a silent misfit
        error, ready = run(_resume_with(srv.ws, good, dt_us=DT_US // 2))
        assert error["code"] == "snapshot_mismatch" and ready["resumed"] is None

    # another server secret: the signature does not match
    with live_server(model_dir, snapshot_secret="another-secret-of-16+") as other_srv:
        error, ready = run(_resume_with(other_srv.ws, good))
        assert error["code"] == "snapshot_tampered" and ready["resumed"] is None


def test_a_snapshot_restores_exactly_what_the_session_had(model_dir):
    """In one server: the state after resuming equals the state when the snapshot was taken."""
    with live_server(model_dir, snapshot_secret=SECRET) as srv:
        good, _ = run(_take_snapshot(srv.ws))
        snap = snapshot.decode(good, srv.state.snapshot_key)
        again = snapshot.decode(snapshot.encode(snap, srv.state.snapshot_key), srv.state.snapshot_key)
        assert again.header == snap.header
        assert all(np.array_equal(again.arrays[k], v) for k, v in snap.arrays.items())
        assert {"binner.acc", "readout.ring", "totals.counts"} <= set(snap.arrays)
        assert any(k.startswith("state.") for k in snap.arrays)
        assert len(good) <= _bound(srv)  # the size announced in `ready` is an upper bound


def _bound(srv) -> int:
    async def go():
        async with connect(srv.ws) as ws:
            await ws.send(json.dumps({"type": "start"}))
            return json.loads(await ws.recv())["limits"]["snapshot_bytes"]

    return run(go())
