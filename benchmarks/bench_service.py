"""End-to-end latency and throughput of the service: a real ``asasnn serve`` on loopback, N streams.

The benchmark starts ``asasnn serve`` as a subprocess on a free loopback port (or uses ``--url``),
opens ``--streams`` sessions with the project's own client (:class:`service.client.api.StreamSession`)
and sends synthetic DVS gestures to each, paced at ``--speed`` times real time by the events'
timestamps, for ``--seconds`` of wall time; then ``stop`` on every stream. The gestures are simulated
once before the clock starts and replayed on a continuous clock (each stream starts at a different
gesture), so the client spends its CPU on sending and receiving, not on simulating.

Reported (the first ``--warmup`` seconds left out):

* ``e2e server``: each prediction's ``latency_ms.total``: from the arrival of the packet that
  completed the timestep to the prediction being handed to the socket (what
  ``asasnn_e2e_latency_seconds`` measures);
* ``e2e client``: from the client sending the packet that completed the timestep to the client
  receiving the prediction (adds both socket hops and the client's own event loop);
* ``queue``: ``latency_ms.queue``, from the packet's arrival to the start of the model call that ran
  the timestep (binning, waiting for a batch and the worker thread);
* ``step``: ``latency_ms.step``, the batched model call;
* steps/s over the run and the mean batch size (``asasnn_batch_size`` from ``/metrics``);
* the cost of a session snapshot (docs/protocol.md, "Snapshots"): before ``stop`` each stream asks
  for one; its size in bytes and the milliseconds from the request to the snapshot arriving.

Run: ``python benchmarks/bench_service.py [--streams 8] [--speed 4] [--seconds 20]``. Without a
bundled default model (``models/bundled/default``) it exports the ``tiny`` causal-ASA network
(untrained, calibrated; 128x128 sensor, ds 4, dt 15 ms) into a temporary directory first. Server
settings go in as ``--env ASASNN_NAME=VALUE``. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Run as a script, Python puts benchmarks/ on the path, not the repository root.
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np

from service.client.wait import free_port, http_get

BUNDLED = REPO / "models" / "bundled"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--streams", type=int, default=8, help="concurrent sessions (default 8)")
    p.add_argument("--speed", type=float, default=4.0, help="times real time per stream (default 4)")
    p.add_argument("--seconds", type=float, default=20.0, help="wall time of sending (default 20)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of results left out (default 2)")
    p.add_argument("--packet-ms", type=float, default=10.0, help="stream time per packet (default 10)")
    p.add_argument("--gestures", type=int, default=4, help="distinct gestures simulated (default 4)")
    p.add_argument("--model-dir", help="bundles to serve (default: models/bundled, else a tiny export)")
    p.add_argument(
        "--export",
        choices=("tiny", "gesture3"),
        help="serve this preset (causal ASA, untrained, calibrated), exported into a temporary directory",
    )
    p.add_argument("--url", help="use this running server (ws://HOST:PORT/ws/infer) instead of starting one")
    p.add_argument(
        "--env", action="append", default=[], metavar="ASASNN_NAME=VALUE", help="server setting (repeatable)"
    )
    p.add_argument("--json", help="write the results here")


# ---- the server ---------------------------------------------------------------------------------------
def export_tiny(out: Path, preset: str = "tiny") -> Path:
    """A causal-ASA preset (``tiny``, or the paper's ``gesture3``), untrained but calibrated so every
    layer spikes, as the bundle ``default`` (128x128 sensor, ds 4, dt 15 ms)."""
    from models.runtime.calibrate import untrained_network
    from models.runtime.export import build_card, export_bundle
    from models.synthetic import CLASSES

    net = untrained_network(preset, "causal-asa", num_classes=len(CLASSES))
    card = build_card(net, classes=CLASSES, sensor=(128, 128), ds=4, dt_us=15_000, name="default")
    export_bundle(net, card, out / "default", steps=8)
    return out


@contextlib.contextmanager
def server(model_dir: Path, env: list[str], log: Path) -> Iterator[str]:
    """``asasnn serve`` on a free loopback port; yields its WebSocket URL; SIGTERM on exit."""
    port = free_port()
    extra = dict(kv.split("=", 1) for kv in env)
    penv = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ASASNN_")},
        "ASASNN_MODEL_DIR": str(model_dir),
        "ASASNN_DEVICE": "cpu",
        "ASASNN_LOG_LEVEL": "warning",
        **extra,
    }
    cmd = [sys.executable, "-m", "asasnn.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=penv, cwd=REPO)
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not become ready:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                if http_get(f"http://127.0.0.1:{port}/readyz", 2)[0] == 200:
                    break
            time.sleep(0.2)
        yield f"ws://127.0.0.1:{port}/ws/infer"
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def scrape(url: str) -> dict[str, float]:
    """``/metrics`` as {sample name with labels: value}."""
    from service.client.api import http_base

    _, body = http_get(http_base(url) + "/metrics")
    out = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _sum(metrics: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in metrics.items() if re.match(re.escape(prefix) + r"(\{|$)", k))


# ---- the streams ---------------------------------------------------------------------------------------
def gestures(sensor: tuple[int, int], n: int, packet_us: int) -> tuple[list[np.ndarray], int]:
    """``n`` synthetic gestures back to back as packets of ``packet_us``; and their total duration."""
    from models.events.types import SensorSize
    from models.synthetic import SyntheticConfig, live_packets

    cfg = SyntheticConfig(sensor=SensorSize(*sensor))
    per = -(-cfg.duration_us // packet_us)
    gen = live_packets(cfg, packet_us, realtime=False, seed=0)
    packets = [p for p, _ in (next(gen) for _ in range(n * per))]
    gen.close()
    return packets, n * cfg.duration_us


def replay(packets: list[np.ndarray], period_us: int, start: int) -> Iterator[np.ndarray]:
    """The packets from index ``start`` on, looped on a continuous clock starting at 0."""
    t0 = int(packets[start]["t"][0]) if packets[start].size else 0
    loop = 0
    i = start
    while True:
        p = packets[i]
        if p.size:
            q = p.copy()
            q["t"] += loop * period_us - t0
            yield q
        i += 1
        if i == len(packets):
            i, loop = 0, loop + 1


@dataclass
class StreamResult:
    predictions: int = 0
    e2e_server_ms: list[float] = field(default_factory=list)
    e2e_client_ms: list[float] = field(default_factory=list)
    queue_ms: list[float] = field(default_factory=list)
    step_ms: list[float] = field(default_factory=list)
    warnings: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    snapshot_bytes: list[int] = field(default_factory=list)
    snapshot_ms: list[float] = field(default_factory=list)


async def one_stream(
    url: str,
    packets: Iterator[np.ndarray],
    sensor: tuple[int, int],
    speed: float,
    t_stop: float,
    t_keep: float,
) -> StreamResult:
    from service.client.api import Resume, ServiceError, StreamSession
    from service.client.sources import Pacer

    res = StreamResult()
    sent_t: list[int] = []  # last timestamp of each packet sent
    sent_at: list[float] = []  # when it was sent

    def on_message(msg: dict[str, Any]) -> None:
        now = time.perf_counter()
        kind = msg.get("type")
        if kind == "warning":
            res.warnings[msg["code"]] = res.warnings.get(msg["code"], 0) + 1
        elif kind == "error":
            res.errors.append(f"{msg['code']}: {msg['message']}")
        if kind != "prediction":
            return
        res.predictions += 1
        # the packet that completed this timestep: the first one holding an event at or after its end
        i = bisect.bisect_left(sent_t, msg["t_end_us"])
        if i == len(sent_t) or sent_at[i] < t_keep:
            return  # completed by stop's flush, or warm-up
        res.e2e_client_ms.append((now - sent_at[i]) * 1e3)
        res.e2e_server_ms.append(msg["latency_ms"]["total"])
        res.step_ms.append(msg["latency_ms"]["step"])
        if "queue" in msg["latency_ms"]:
            res.queue_ms.append(msg["latency_ms"]["queue"])

    s = await StreamSession.connect(
        url,
        sensor=sensor,
        output={"top_k": 1, "layer_rates": False},
        on_message=on_message,
        open_timeout=60,
        resume=Resume(snapshot_every_s=1e9),  # keep the snapshot asked for below; none on a timer
    )
    pacer = Pacer(speed)
    try:
        for p in packets:
            delay = pacer.delay(p)
            if delay > 0:
                await asyncio.sleep(delay)
            if time.perf_counter() >= t_stop:
                break
            await s.send_events(p)
            sent_t.append(int(p["t"][-1]))
            sent_at.append(time.perf_counter())
        t_snap = time.perf_counter()
        await s.request_snapshot()
        while s.snapshot is None and time.perf_counter() - t_snap < 60:
            await asyncio.sleep(0.001)
        if s.snapshot is not None:
            res.snapshot_ms.append((time.perf_counter() - t_snap) * 1e3)
            res.snapshot_bytes.append(len(s.snapshot))
        await s.stop(timeout=120)
    except ServiceError as e:
        res.errors.append(f"stop: {e} (close code {e.close_code})")
    finally:
        await s.close()
    return res


def _pct(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {"p50": float("nan"), "p90": float("nan"), "p99": float("nan"), "max": float("nan")}
    a = np.asarray(xs)
    return {
        "p50": float(np.percentile(a, 50)),
        "p90": float(np.percentile(a, 90)),
        "p99": float(np.percentile(a, 99)),
        "max": float(a.max()),
    }


async def run_streams(url: str, args: argparse.Namespace) -> dict[str, Any]:
    from service.client.api import http_base

    _, body = http_get(http_base(url) + "/v1/models")
    models = json.loads(body)
    card = next(m for m in models["models"] if m["name"] == models["default"])
    sensor = (card["sensor"]["width"], card["sensor"]["height"])
    packet_us = max(1, int(args.packet_ms * 1000))
    packets, period = gestures(sensor, args.gestures, packet_us)
    before = scrape(url)
    t_start = time.perf_counter()
    t_stop, t_keep = t_start + args.seconds, t_start + args.warmup
    step = max(1, len(packets) // max(args.streams, 1))
    results = await asyncio.gather(
        *(
            one_stream(
                url, replay(packets, period, (i * step) % len(packets)), sensor, args.speed, t_stop, t_keep
            )
            for i in range(args.streams)
        )
    )
    wall = time.perf_counter() - t_start
    after = scrape(url)
    steps = _sum(after, "asasnn_steps_total") - _sum(before, "asasnn_steps_total")
    batches = _sum(after, "asasnn_batch_size_count") - _sum(before, "asasnn_batch_size_count")
    merged = StreamResult()
    for r in results:
        merged.predictions += r.predictions
        merged.e2e_server_ms += r.e2e_server_ms
        merged.e2e_client_ms += r.e2e_client_ms
        merged.step_ms += r.step_ms
        merged.queue_ms += r.queue_ms
        merged.errors += r.errors
        merged.snapshot_bytes += r.snapshot_bytes
        merged.snapshot_ms += r.snapshot_ms
        for k, v in r.warnings.items():
            merged.warnings[k] = merged.warnings.get(k, 0) + v
    return {
        "model": f"{card['name']} ({card['backend']}, {card['device']}, dt {card['dt_us'] / 1000:g} ms)",
        "streams": args.streams,
        "speed": args.speed,
        "offered_steps_per_s": args.streams * args.speed * 1e6 / card["dt_us"],
        "wall_s": wall,
        "steps": steps,
        "steps_per_s": steps / wall,
        "mean_batch": steps / batches if batches else float("nan"),
        "e2e_server_ms": _pct(merged.e2e_server_ms),
        "e2e_client_ms": _pct(merged.e2e_client_ms),
        "queue_ms": _pct(merged.queue_ms),
        "step_ms": _pct(merged.step_ms),
        "snapshot_ms": _pct(merged.snapshot_ms),
        "snapshot_bytes": int(np.median(merged.snapshot_bytes)) if merged.snapshot_bytes else None,
        "warnings": merged.warnings,
        "errors": merged.errors[:5],
        "cores": os.cpu_count(),
        "load_avg_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def report(r: dict[str, Any]) -> str:
    def row(name: str, d: dict[str, float]) -> str:
        return f"  {name:<11} p50 {d['p50']:8.2f}  p90 {d['p90']:8.2f}  p99 {d['p99']:8.2f}  max {d['max']:8.2f} ms"

    lines = [
        (
            f"{r['model']}: {r['streams']} streams at {r['speed']:g}x real time "
            f"({r['offered_steps_per_s']:.0f} steps/s offered), {r['wall_s']:.1f} s"
        ),
        f"  {r['steps']:.0f} steps, {r['steps_per_s']:.0f} steps/s, mean batch {r['mean_batch']:.2f}",
        row("e2e server", r["e2e_server_ms"]),
        row("e2e client", r["e2e_client_ms"]),
        row("queue", r["queue_ms"]),
        row("step", r["step_ms"]),
        row("snapshot", r["snapshot_ms"]) + f"  ({r['snapshot_bytes']} bytes a stream)",
    ]
    if r["warnings"] or r["errors"]:
        lines.append(f"  warnings {r['warnings']}  errors {r['errors']}")
    return "\n".join(lines)


def main(args: argparse.Namespace | list[str] | None = None) -> int:
    if not isinstance(args, argparse.Namespace):
        p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        add_arguments(p)
        args = p.parse_args(args)
    with tempfile.TemporaryDirectory() as tmp:
        if args.url:
            result = asyncio.run(run_streams(args.url, args))
        else:
            if args.export:
                model_dir = export_tiny(Path(tmp), args.export)
            elif args.model_dir:
                model_dir = Path(args.model_dir)
            elif (BUNDLED / "default" / "card.json").exists():
                model_dir = BUNDLED
            else:
                print("no bundled default model: exporting the tiny causal-ASA network ...", flush=True)
                model_dir = export_tiny(Path(tmp))
            with server(model_dir, args.env, Path(tmp) / "serve.log") as url:
                result = asyncio.run(run_streams(url, args))
    result["server_env"] = args.env
    print(report(result), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
