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
* the model call's mean wall time and the CPU time of its thread (``asasnn_step_latency_seconds``,
  ``asasnn_step_cpu_seconds_total``): wall well above CPU means the call waited for a core or the
  GIL, i.e. the model and the event loop compete for the machine;
* the cost of a session snapshot (docs/protocol.md, "Snapshots"): before ``stop`` each stream asks
  for one; its size in bytes and the milliseconds from the request to the snapshot arriving.

Run: ``python benchmarks/bench_service.py [--streams 8] [--speed 4] [--seconds 20]``. Without a
bundled default model (``models/bundled/default``) it exports the ``tiny`` causal-ASA network
(untrained, calibrated; 128x128 sensor, ds 4, dt 15 ms) into a temporary directory first. Server
settings go in as ``--env ASASNN_NAME=VALUE``. Not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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
    p.add_argument("--speed", type=float, default=1.0, help="times real time per stream (default 1)")
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
    p.add_argument(
        "--generators", type=int, default=1, help="load-generator processes (default 1; add more when one is at 100%% CPU)"
    )
    p.add_argument("--snapshot", action="store_true", help="each stream asks for its snapshot before stop, timed")
    p.add_argument(
        "--find-capacity",
        action="store_true",
        help="bisect the number of real-time streams (starting at --streams, doubling), and measure the model "
        "alone in the same run",
    )
    p.add_argument("--max-streams", type=int, default=4096, help="upper bound for --find-capacity")
    p.add_argument(
        "--confirm-seconds",
        type=float,
        default=0.0,
        help="--find-capacity: run the capacity found this long again, 10 %% fewer streams until one holds "
        "(short probes can pass at a load the server does not sustain); 0: no confirmation",
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
    with server_process(model_dir, env, log) as (url, _):
        yield url


@contextlib.contextmanager
def server_process(model_dir: Path, env: list[str], log: Path) -> Iterator[tuple[str, int]]:
    """As :func:`server`, yielding the URL and the server's process id."""
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
        yield f"ws://127.0.0.1:{port}/ws/infer", proc.pid
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


# ---- one run: N streams from generator processes --------------------------------------------------------
def packet_file(sensor: tuple[int, int], args: argparse.Namespace, out: Path) -> tuple[Path, int]:
    """The synthetic gestures as one long packet sequence (enough for ``args.seconds`` from any start
    offset), written for the generators; and the number of packets of one pass over the gestures."""
    packet_us = max(1, int(args.packet_ms * 1000))
    packets, period = gestures(sensor, args.gestures, packet_us)
    seconds = max(args.seconds, getattr(args, "confirm_seconds", 0.0) or 0.0)
    needed = int(seconds * args.speed * 1e6 / packet_us) + 2 * len(packets) + 2
    it = replay(packets, period, 0)
    seq = [next(it) for _ in range(needed)]
    ends = np.cumsum([len(q) for q in seq])
    np.savez(out, events=np.concatenate(seq), ends=ends)
    return out, len(packets)


def proc_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the server's worker processes), from /proc."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def proc_stats(pids: list[int]) -> tuple[float, float]:
    """(RSS MiB, CPU seconds) summed over ``pids``, from /proc."""
    rss = cpu = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) / 1024
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    return rss, cpu


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


def served_model(url: str) -> dict[str, Any]:
    from service.client.api import http_base

    _, body = http_get(http_base(url) + "/v1/models")
    models = json.loads(body)
    return next(m for m in models["models"] if m["name"] == models["default"])


def run_streams(
    url: str, args: argparse.Namespace, streams: int, packets: Path, cycle: int, server_pid: int | None
) -> dict[str, Any]:
    """``streams`` sessions from ``args.generators`` generator processes (benchmarks/loadgen.py)."""
    card = served_model(url)
    sensor = (card["sensor"]["width"], card["sensor"]["height"])
    n_gen = max(1, min(args.generators, streams))
    step = max(1, cycle // max(streams, 1))
    offsets = [(i * step) % cycle for i in range(streams)]
    start_at = time.time() + 5.0 + streams / 100  # every generator connects its streams first
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        for g in range(n_gen):
            job = {
                "url": url,
                "sensor": sensor,
                "packets": str(packets),
                "packet_us": max(1, int(args.packet_ms * 1000)),
                "offsets": offsets[g::n_gen],
                "speed": args.speed,
                "seconds": args.seconds,
                "warmup": args.warmup,
                "snapshot": args.snapshot,
                "start_at": start_at,
            }
            jf = Path(tmp) / f"job{g}.json"
            jf.write_text(json.dumps(job))
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(Path(__file__).with_name("loadgen.py")), str(jf), str(jf) + ".out"],
                    cwd=REPO,
                )
            )
        before = scrape(url)
        pids = proc_tree(server_pid) if server_pid else []
        time.sleep(max(0.0, start_at - time.time()))
        _, cpu0 = proc_stats(pids)
        t0 = time.perf_counter()
        rss_max, samples = 0.0, []
        while any(p.poll() is None for p in procs):
            time.sleep(0.5)
            if pids:
                rss, _ = proc_stats(pids)
                rss_max = max(rss_max, rss)
                samples.append(rss)
        wall = time.perf_counter() - t0
        _, cpu1 = proc_stats(pids)
        gens = [json.loads(Path(tmp, f"job{g}.json.out").read_text()) for g in range(n_gen)]
    after = scrape(url)
    steps = _sum(after, "asasnn_steps_total") - _sum(before, "asasnn_steps_total")
    batches = _sum(after, "asasnn_batch_size_count") - _sum(before, "asasnn_batch_size_count")
    step_wall = _sum(after, "asasnn_step_latency_seconds_sum") - _sum(before, "asasnn_step_latency_seconds_sum")
    step_cpu = _sum(after, "asasnn_step_cpu_seconds_total") - _sum(before, "asasnn_step_cpu_seconds_total")
    merged: dict[str, Any] = {k: [] for k in ("e2e_client_ms", "e2e_server_ms", "step_ms", "snapshot_ms",
                                               "snapshot_bytes", "errors")}
    counts = dict.fromkeys(("connected", "predictions", "expected", "out_of_order", "duplicates", "late_sends"), 0)
    for g in gens:
        for k in merged:
            merged[k] += g.get(k, [])
        for k in counts:
            counts[k] += g.get(k, 0)
    dt_ms = card["dt_us"] / 1000
    e2e_client, e2e_server = _pct(merged["e2e_client_ms"]), _pct(merged["e2e_server_ms"])
    lost = counts["expected"] - counts["predictions"] + counts["duplicates"]
    ok = (
        counts["connected"] == streams
        and counts["expected"] > 0
        and lost == 0
        and counts["out_of_order"] == 0
        and not merged["errors"]
        and e2e_client["p99"] < dt_ms
    )
    return {
        "model": f"{card['name']} ({card['backend']}, {card['device']}, dt {dt_ms:g} ms)",
        "dt_ms": dt_ms,
        "streams": streams,
        "packet_ms": args.packet_ms,
        "speed": args.speed,
        "offered_steps_per_s": streams * args.speed * 1e6 / card["dt_us"],
        "wall_s": wall,
        "steps": steps,
        "steps_per_s": steps / wall if wall else float("nan"),
        "mean_batch": steps / batches if batches else float("nan"),
        # per model call, from /metrics: wall time, and the CPU time of the calling thread (the rest
        # is waiting for a core or the GIL)
        "step_wall_mean_ms": 1e3 * step_wall / batches if batches else float("nan"),
        "step_cpu_mean_ms": 1e3 * step_cpu / batches if batches else float("nan"),
        **counts,
        "lost": lost,
        "errors": merged["errors"][:5],
        "e2e_server_ms": e2e_server,
        "e2e_client_ms": e2e_client,
        "step_ms": _pct(merged["step_ms"]),
        "snapshot_ms": _pct(merged["snapshot_ms"]),
        "snapshot_bytes": int(np.median(merged["snapshot_bytes"])) if merged["snapshot_bytes"] else None,
        "server_cpu": (cpu1 - cpu0) / wall if pids and wall else None,  # cores busy, all its processes
        "server_rss_mib_max": rss_max or None,
        "generators": [
            {"streams": g.get("streams"), "cpu": g["cpu_s"] / g["wall_s"] if g.get("wall_s") else None}
            for g in gens
        ],
        "real_time": ok,
        "cores": os.cpu_count(),
    }


# ---- the model alone ---------------------------------------------------------------------------------------
def model_only_capacity(
    model_dir: Path, name: str, sensor_frames: Path, max_batch: int, threads: int, backend: str = "onnx"
) -> dict:
    """The most streams whose timesteps the runner alone (the server's backend, ``threads`` threads,
    batches of at most ``max_batch`` as the scheduler forms them) computes within one dt, at p99 of 30
    rounds; frames binned from the same synthetic events as the streams."""
    from models.events.binner import BinnerConfig, FrameBinner
    from models.events.types import SensorSize
    from models.runtime.loading import load_runner

    kw = {"threads": threads} if backend == "onnx" else {}
    path = model_dir if (model_dir / "card.json").is_file() else model_dir / name  # a bundle, or a directory of them
    runner = load_runner(path, backend=backend, device="cpu", **kw)  # type: ignore[arg-type]
    card = runner.card
    dt_s = card.dt_us / 1e6
    with np.load(sensor_frames) as z:
        events = z["events"][: 2_000_000]
    cfg = BinnerConfig(SensorSize(card.sensor.width, card.sensor.height), card.dt_us, card.ds)
    frames = FrameBinner(cfg).push(events)[:512]
    rng = np.random.default_rng(0)

    def rounds_p99(n: int) -> float:
        slots = [runner.open() for _ in range(n)]
        times = []
        try:
            for r in range(33):
                t = time.perf_counter()
                for b in range(0, n, max_batch):
                    chunk = slots[b : b + max_batch]
                    runner.step(chunk, frames[rng.integers(0, len(frames), len(chunk))])
                if r >= 3:
                    times.append(time.perf_counter() - t)
        finally:
            for s in slots:
                runner.close(s)
        return float(np.percentile(times, 99))

    lo, hi, tried = 0, 1, {}
    while True:  # double until a round misses dt, then bisect
        tried[hi] = rounds_p99(hi)
        if tried[hi] >= dt_s or hi >= 8192:
            break
        lo, hi = hi, hi * 2
    while hi - lo > max(1, lo // 32):
        mid = (lo + hi) // 2
        tried[mid] = rounds_p99(mid)
        lo, hi = (mid, hi) if tried[mid] < dt_s else (lo, mid)
    return {"streams": lo, "dt_ms": dt_s * 1e3, "max_batch": max_batch, "threads": threads, "backend": backend,
            "p99_ms": {n: v * 1e3 for n, v in sorted(tried.items())}}


# ---- capacity: bisect N ------------------------------------------------------------------------------------
def find_capacity(url: str, args: argparse.Namespace, packets: Path, cycle: int, pid: int | None, log) -> dict:
    """The most streams that stay real time (every prediction, in order, client e2e p99 below dt):
    double from ``--streams`` until a run fails, then bisect to within ~5 %; with
    ``--confirm-seconds``, then run that many streams that long, 10 % fewer until a run holds."""
    runs: list[dict[str, Any]] = []

    def probe(n: int, probe_args: argparse.Namespace = args) -> bool:
        r = run_streams(url, probe_args, n, packets, cycle, pid)
        r["seconds"] = probe_args.seconds
        runs.append(r)
        log(summary_line(r) + f"  ({probe_args.seconds:g} s)")
        wait_idle(url)
        return r["real_time"]

    found = _bisect(probe, args)
    if not args.confirm_seconds or not found.get("streams"):
        return {**found, "runs": runs}
    long = argparse.Namespace(**{**vars(args), "seconds": args.confirm_seconds})
    n = found["streams"]
    while n > 0 and not probe(n, long):
        n = min(n - 1, int(n * 0.9))
    return {**found, "confirmed": n, "confirm_seconds": args.confirm_seconds, "runs": runs}


def _bisect(probe, args: argparse.Namespace) -> dict[str, Any]:
    """Double from ``--streams`` while ``probe`` passes, then bisect to within ~5 %."""
    lo, hi = 0, min(max(1, args.streams), args.max_streams)
    while probe(hi):
        lo = hi
        if hi >= args.max_streams:
            return {"streams": lo, "at_max_streams": True}
        hi = min(hi * 2, args.max_streams)
    while hi - lo > max(1, lo // 20):
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if probe(mid) else (lo, mid)
    return {"streams": lo}


def wait_idle(url: str, timeout: float = 120) -> None:
    """Until the server holds no session (the last run's are closed and their steps done)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _sum(scrape(url), "asasnn_active_sessions") > 0:
        time.sleep(0.5)


def summary_line(r: dict[str, Any]) -> str:
    gens = ", ".join(f"{g['cpu'] * 100:.0f}%" for g in r["generators"] if g["cpu"] is not None)
    cpu = f"{r['server_cpu'] * 100:.0f}%" if r["server_cpu"] is not None else "?"
    return (
        f"  {r['streams']:5d} streams: {'REAL TIME' if r['real_time'] else 'behind   '}  "
        f"predictions {r['predictions']}/{r['expected']} lost {r['lost']} reordered {r['out_of_order']}  "
        f"e2e client p50 {r['e2e_client_ms']['p50']:.1f} p99 {r['e2e_client_ms']['p99']:.1f} ms, "
        f"server p99 {r['e2e_server_ms']['p99']:.1f} ms  batch {r['mean_batch']:.1f}  server CPU {cpu} "
        f"RSS {r['server_rss_mib_max'] or 0:.0f} MiB  generators CPU {gens}"
        + (f"  errors {r['errors'][:2]}" if r["errors"] else "")
    )


def report(r: dict[str, Any]) -> str:
    def row(name: str, d: dict[str, float]) -> str:
        return f"  {name:<11} p50 {d['p50']:8.2f}  p90 {d['p90']:8.2f}  p99 {d['p99']:8.2f}  max {d['max']:8.2f} ms"

    lines = [
        (
            f"{r['model']}: {r['streams']} streams at {r['speed']:g}x real time, {r['packet_ms']:g} ms packets "
            f"({r['offered_steps_per_s']:.0f} steps/s offered), {r['wall_s']:.1f} s"
        ),
        (
            f"  {r['steps']:.0f} steps, {r['steps_per_s']:.0f} steps/s, mean batch {r['mean_batch']:.2f}, "
            f"model call mean {r['step_wall_mean_ms']:.2f} ms (CPU of its thread {r['step_cpu_mean_ms']:.2f} ms)"
        ),
        summary_line(r),
        row("e2e server", r["e2e_server_ms"]),
        row("e2e client", r["e2e_client_ms"]),
        row("step", r["step_ms"]),
    ]
    if r["snapshot_bytes"]:
        lines.append(row("snapshot", r["snapshot_ms"]) + f"  ({r['snapshot_bytes']} bytes a stream)")
    return "\n".join(lines)


def main(args: argparse.Namespace | list[str] | None = None) -> int:
    if not isinstance(args, argparse.Namespace):
        p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        add_arguments(p)
        args = p.parse_args(args)
    with tempfile.TemporaryDirectory() as tmp:
        if args.export:
            model_dir = export_tiny(Path(tmp), args.export)
        elif args.model_dir:
            model_dir = Path(args.model_dir)
        elif (BUNDLED / "default" / "card.json").exists():
            model_dir = BUNDLED
        else:
            print("no bundled default model: exporting the tiny causal-ASA network ...", flush=True)
            model_dir = export_tiny(Path(tmp))
        with contextlib.ExitStack() as stack:
            if args.url:
                url, pid = args.url, None
            else:
                env = [f"ASASNN_MAX_SESSIONS={args.max_streams}", *args.env]  # room for every probe
                url, pid = stack.enter_context(server_process(model_dir, env, Path(tmp) / "serve.log"))
            card = served_model(url)
            packets, cycle = packet_file((card["sensor"]["width"], card["sensor"]["height"]), args,
                                         Path(tmp) / "packets.npz")
            if args.find_capacity:
                print(f"{card['name']}: capacity at {args.packet_ms:g} ms packets", flush=True)
                result = find_capacity(url, args, packets, cycle, pid, lambda s: print(s, flush=True))
                settings = dict(kv.split("=", 1) for kv in args.env)
                backend = settings.get("ASASNN_BACKEND", "auto")
                result["model_only"] = model_only_capacity(
                    model_dir, card["name"], packets, int(settings.get("ASASNN_MAX_BATCH", 64)),
                    int(settings.get("ASASNN_STEP_THREADS", max(1, (os.cpu_count() or 2) - 1))),
                    "onnx" if backend == "auto" else backend,  # what auto serves a bundle with a graph
                )
                text = capacity_report(result, args)
            else:
                result = run_streams(url, args, args.streams, packets, cycle, pid)
                text = report(result)
    result["server_env"] = args.env
    print(text, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


def capacity_report(result: dict[str, Any], args: argparse.Namespace) -> str:
    mo = result["model_only"]
    e2e = result["streams"]
    held = (
        f" ({result['confirmed']} held for {result['confirm_seconds']:g} s)" if "confirmed" in result else ""
    )
    return (
        f"end to end ({args.packet_ms:g} ms packets): {e2e} real-time streams in {args.seconds:g} s probes{held}; "
        "model alone "
        f"({mo.get('backend', 'onnx')} backend, {mo['threads']} thread(s), batches of <= {mo['max_batch']}): {mo['streams']} streams "
        f"(p99 of a round below dt {mo['dt_ms']:g} ms); ratio {e2e / max(mo['streams'], 1):.3f}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
