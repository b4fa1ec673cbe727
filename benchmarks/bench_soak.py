"""Soak: healthy real-time streams beside a hostile client mix, for minutes, against a real server.

``asasnn bench soak --streams 16 --minutes 10`` starts ``asasnn serve`` (the bundled models) on a
free loopback port and runs, each load generator in its own process:

* **healthy** processes (``--healthy-procs``, streams split among them): ``--streams`` sessions
  sending synthetic gestures at real time in 10 ms packets, each checking that it receives every
  timestep's prediction once and in order;
* one **hostile** process cycling through what a broken or malicious client does: malformed and
  out-of-range packets, a day-long gap inside one packet, timestamps near 2^62, a flood at 50x real
  time, a client that never reads, connections that never send ``start``, reconnect storms, bad
  control messages, and uploads (a valid recording, an AEDAT4 that hangs dv-processing, an ``.npz``
  bomb, a huge ``.npy`` header).

The main process samples the server's RSS and CPU every ``--sample-s`` seconds. Reported: lost and
reordered predictions of the healthy streams (must be 0), their end-to-end latency (p50/p99/max,
server and client side), the server's RSS over time and its growth after the first minute, what
the hostile actions got back (error codes), and each generator process's CPU share (if a generator
is near a full core, it and not the server may be the limit).

Run: ``asasnn bench soak [--streams 16] [--minutes 10] [--json FILE]``. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import itertools

import numpy as np

from benchmarks.bench_service import BUNDLED, export_tiny, gestures, replay, server

CORPUS = REPO / "tests" / "fuzz" / "corpus" / "upload"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--streams", type=int, default=16, help="healthy real-time streams (default 16)")
    p.add_argument("--minutes", type=float, default=10.0, help="duration (default 10)")
    p.add_argument("--packet-ms", type=float, default=10.0, help="stream time per packet (default 10)")
    p.add_argument(
        "--healthy-procs", type=int, default=2, help="processes for the healthy streams (default 2)"
    )
    p.add_argument(
        "--sample-s", type=float, default=10.0, help="server RSS / CPU sampling period (default 10)"
    )
    p.add_argument("--model-dir", help="bundles to serve (default: models/bundled)")
    p.add_argument("--env", action="append", default=[], metavar="ASASNN_NAME=VALUE", help="server setting")
    p.add_argument(
        "--hostile",
        default="all",
        help="comma list of hostile actions to cycle through, 'all' or 'none' (names as in the report)",
    )
    p.add_argument("--json", help="write the results here")
    # internal: a load generator process
    p.add_argument("--role", choices=("healthy", "hostile"), help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)  # where a generator writes its JSON results


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ---- healthy streams -------------------------------------------------------------------------------
async def healthy_stream(url: str, packets: Any, sensor: tuple[int, int], t_stop: float) -> dict[str, Any]:
    from service.client.api import ServiceError, StreamSession
    from service.client.sources import Pacer

    steps: list[int] = []
    server_ms: list[float] = []
    client_ms: list[float] = []
    sent: list[tuple[int, float]] = []  # (last timestamp of a packet, when it was sent)

    def on_message(msg: dict[str, Any]) -> None:
        if msg.get("type") != "prediction":
            return
        steps.append(int(msg["step"]))
        server_ms.append(msg["latency_ms"]["total"])
        end = msg["t_end_us"]
        for t_last, at in sent:  # the packet that completed this step: the first ending at or after it
            if t_last >= end:
                client_ms.append((time.perf_counter() - at) * 1e3)
                break
        while sent and sent[0][0] < end:
            sent.pop(0)

    errors: list[str] = []
    s = await StreamSession.connect(
        url, sensor=sensor, output={"top_k": 1, "layer_rates": False}, on_message=on_message, open_timeout=60
    )
    pacer = Pacer(1.0)
    try:
        for p in packets:
            delay = pacer.delay(p)
            if delay > 0:
                await asyncio.sleep(delay)
            if time.perf_counter() >= t_stop:
                break
            await s.send_events(p)
            sent.append((int(p["t"][-1]), time.perf_counter()))
        end = await s.stop(timeout=120)
        expected = int(end["steps"])
    except ServiceError as e:
        errors.append(f"{e.code}: {e}")
        expected = max(steps, default=-1) + 1
    finally:
        await s.close()
    lost = expected - len(set(steps))
    reordered = sum(1 for a, b in itertools.pairwise(steps) if b <= a)
    return {
        "expected": expected,
        "received": len(steps),
        "lost": lost,
        "reordered": reordered,
        "server_ms": server_ms,
        "client_ms": client_ms,
        "errors": errors,
    }


async def healthy_role(args: argparse.Namespace) -> dict[str, Any]:
    from service.client.api import http_base
    from service.client.wait import http_get

    models = json.loads(http_get(http_base(args.url) + "/v1/models")[1])
    card = next(m for m in models["models"] if m["name"] == models["default"])
    sensor = (card["sensor"]["width"], card["sensor"]["height"])
    packets, period = gestures(sensor, 4, int(args.packet_ms * 1000))
    t_stop = time.perf_counter() + args.seconds
    step = max(1, len(packets) // max(args.streams, 1))
    rs = await asyncio.gather(
        *(
            healthy_stream(
                args.url, replay(packets, period, (i * step + args.seed) % len(packets)), sensor, t_stop
            )
            for i in range(args.streams)
        )
    )
    return {"streams": rs, "dt_us": card["dt_us"]}


# ---- the hostile mix -------------------------------------------------------------------------------
def _tally(d: dict[str, int], key: str) -> None:
    d[key] = d.get(key, 0) + 1


async def _ws_try(
    url: str,
    first: str | None,
    then: list[bytes | str],
    tally: dict[str, int],
    name: str,
    read: bool = True,
    hold_s: float = 0.0,
) -> None:
    from websockets.asyncio.client import connect

    try:
        async with connect(url, ping_interval=None, max_size=2**24, open_timeout=30) as ws:
            if first is not None:
                await ws.send(first)
            for m in then:
                await ws.send(m)
            if hold_s:
                await asyncio.sleep(hold_s)
            while read:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if msg.get("type") == "error":
                    _tally(tally, f"{name}: {msg['code']}")
                    if msg.get("fatal"):
                        break
                elif msg.get("type") == "end":
                    _tally(tally, f"{name}: end")
                    break
    except Exception as e:  # noqa: BLE001 - the close is what these clients provoke; count how it ended
        code = getattr(getattr(e, "rcvd", None), "code", None)
        _tally(tally, f"{name}: closed {code}" if code else f"{name}: {type(e).__name__}")


def _uploads() -> dict[str, tuple[str, bytes]]:
    bomb = io.BytesIO()
    np.savez_compressed(bomb, events=np.zeros((40_000_000, 4), np.int64))
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<i8", "fortran_order": False, "shape": (10**12, 4)})
    return {
        "valid upload": ("ok.aedat4", (CORPUS / "valid.aedat4").read_bytes()),
        "hanging aedat4": ("bad.aedat4", (CORPUS / "hangs-one-flipped-byte.aedat4").read_bytes()),
        "npz bomb": ("bomb.npz", bomb.getvalue()),
        "huge npy header": ("huge.npy", head.getvalue()),
    }


async def hostile_role(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    from models.events import MAX_T_US, make_events
    from service.client.api import http_base

    rng = random.Random(args.seed)
    url, http_url = args.url, http_base(args.url)
    tally: dict[str, int] = {}
    uploads = _uploads()
    start = json.dumps({"type": "start", "sensor": {"width": 128, "height": 128}})
    ev = make_events(np.arange(20) * 500, np.arange(20) % 128, np.arange(20) % 128, np.arange(20) % 2)

    def flood() -> list[bytes | str]:
        t = np.arange(200_000, dtype=np.int64) * 50  # 10 s of stream time, as fast as the socket takes it
        big = make_events(t, t % 128, (t // 128) % 128, t % 2)
        return [big[i : i + 20_000].tobytes() for i in range(0, big.size, 20_000)] + [
            json.dumps({"type": "stop"})
        ]

    actions = {
        "misaligned packet": lambda: _ws_try(
            url, start, [ev.tobytes()[:-3], json.dumps({"type": "stop"})], tally, "misaligned packet"
        ),
        "outside sensor": lambda: _ws_try(
            url,
            start,
            [make_events([0], [4000], [1], [1]).tobytes(), json.dumps({"type": "stop"})],
            tally,
            "outside sensor",
        ),
        "day gap": lambda: _ws_try(
            url,
            start,
            [
                make_events([0, 86_400 * 10**6], [1, 1], [1, 1], [1, 0]).tobytes(),
                json.dumps({"type": "stop"}),
            ],
            tally,
            "day gap",
        ),
        "t near 2^62": lambda: _ws_try(
            url,
            start,
            [make_events([0, MAX_T_US], [1, 1], [1, 1], [1, 0]).tobytes(), json.dumps({"type": "stop"})],
            tally,
            "t near 2^62",
        ),
        "bad control": lambda: _ws_try(
            url,
            start,
            ['{"type": "advance", "t_us": 1e30}', "{not json", json.dumps({"type": "stop"})],
            tally,
            "bad control",
        ),
        "bad start": lambda: _ws_try(url, '{"type": "start", "version": true}', [], tally, "bad start"),
        "flood": lambda: _ws_try(url, start, flood(), tally, "flood"),
        "non-reader": lambda: _ws_try(url, start, flood()[:-1], tally, "non-reader", read=False, hold_s=20),
        "never starts": lambda: _ws_try(url, None, [], tally, "never starts"),
        "reconnect storm": lambda: asyncio.gather(
            *(_ws_try(url, start, [json.dumps({"type": "stop"})], tally, "reconnect") for _ in range(10))
        ),
    }

    async def upload(name: str) -> None:
        fname, data = uploads[name]
        form = {"sensor_width": "128", "sensor_height": "128"}
        async with httpx.AsyncClient(timeout=120) as http:
            try:
                r = await http.post(http_url + "/v1/classify", data=form, files={"file": (fname, data)})
                body = r.json()
                _tally(
                    tally,
                    f"{name}: {r.status_code} {body.get('detail', {}).get('code', 'ok') if r.status_code != 200 else 'ok'}",
                )
            except Exception as e:  # noqa: BLE001
                _tally(tally, f"{name}: {type(e).__name__}")

    names = [*actions, *uploads] if args.hostile == "all" else [n for n in args.hostile.split(",") if n != "none"]
    if not names:
        await asyncio.sleep(args.seconds)
        return {"actions": {}}
    t_stop = time.perf_counter() + args.seconds
    running: set[asyncio.Task[Any]] = set()
    while time.perf_counter() < t_stop:
        name = rng.choice(names)
        coro = upload(name) if name in uploads else actions[name]()
        task = asyncio.ensure_future(coro)
        running.add(task)
        task.add_done_callback(running.discard)
        await asyncio.sleep(rng.uniform(0.2, 1.0))
        while len(running) > 8:  # a few at a time, not a fork bomb of our own
            await asyncio.sleep(0.1)
    if running:
        await asyncio.wait(running, timeout=120)
    return {"actions": dict(sorted(tally.items()))}


# ---- the conductor -----------------------------------------------------------------------------------
def _proc_stats(pid: int) -> tuple[float, float]:
    """(RSS MiB, CPU seconds) of a process, from /proc."""
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return rss, cpu


def _pct(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    a = np.asarray(xs)
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "max": float(a.max())}


def conduct(args: argparse.Namespace) -> dict[str, Any]:
    seconds = args.minutes * 60
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = (
            Path(args.model_dir)
            if args.model_dir
            else (BUNDLED if (BUNDLED / "default" / "card.json").exists() else export_tiny(Path(tmp)))
        )
        with server(model_dir, args.env, Path(tmp) / "serve.log") as url:
            pid = _server_pid(url)
            me = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--url",
                url,
                "--seconds",
                str(seconds),
                "--packet-ms",
                str(args.packet_ms),
            ]
            per = [
                args.streams // args.healthy_procs + (i < args.streams % args.healthy_procs)
                for i in range(args.healthy_procs)
            ]
            roles = [("healthy", ["--streams", str(n), "--seed", str(97 * i)]) for i, n in enumerate(per) if n]
            roles.append(("hostile", ["--seed", "1", "--hostile", args.hostile]))
            outputs = [Path(tmp) / f"generator-{i}.json" for i in range(len(roles))]
            procs = [
                subprocess.Popen([*me, "--role", role, *extra, "--out", str(out)], cwd=REPO)
                for (role, extra), out in zip(roles, outputs)
            ]
            samples = []
            t0 = time.perf_counter()
            rss0, cpu0 = _proc_stats(pid)
            while any(p.poll() is None for p in procs):
                rss, cpu = _proc_stats(pid)
                samples.append(
                    {
                        "t_s": round(time.perf_counter() - t0, 1),
                        "rss_mb": round(rss, 1),
                        "cpu_s": round(cpu - cpu0, 2),
                    }
                )
                deadline = time.perf_counter() + args.sample_s
                while time.perf_counter() < deadline and any(p.poll() is None for p in procs):
                    time.sleep(0.2)
            outs = [json.loads(out.read_text()) for out in outputs]
            wall = time.perf_counter() - t0
            rss_end, cpu_end = _proc_stats(pid)
    healthy = [s for o in outs[:-1] for s in o["streams"]]
    after_1min = [s["rss_mb"] for s in samples if s["t_s"] >= 60] or [s["rss_mb"] for s in samples]
    return {
        "streams": args.streams,
        "minutes": args.minutes,
        "packet_ms": args.packet_ms,
        "dt_ms": outs[0]["dt_us"] / 1000 if healthy else None,
        "predictions": {
            "expected": sum(s["expected"] for s in healthy),
            "received": sum(s["received"] for s in healthy),
            "lost": sum(s["lost"] for s in healthy),
            "reordered": sum(s["reordered"] for s in healthy),
            "stream_errors": [e for s in healthy for e in s["errors"]][:10],
        },
        "e2e_server_ms": _pct([x for s in healthy for x in s["server_ms"]]),
        "e2e_client_ms": _pct([x for s in healthy for x in s["client_ms"]]),
        "server": {
            "rss_start_mb": rss0,
            "rss_end_mb": rss_end,
            "rss_min_after_1min_mb": min(after_1min),
            "rss_max_after_1min_mb": max(after_1min),
            "cpu_share": (cpu_end - cpu0) / wall,
            "samples": samples,
        },
        "generators": [
            {"role": "healthy" if i < len(outs) - 1 else "hostile", "cpu_share": o["cpu_s"] / o["wall_s"]}
            for i, o in enumerate(outs)
        ],
        "hostile": outs[-1]["actions"],
        "machine": {"cores": os.cpu_count(), "load_avg_at_end": os.getloadavg()[0]},
    }


def _server_pid(url: str) -> int:
    """The pid listening on the server's port (the ``asasnn serve`` child of this process)."""
    port = int(url.split(":")[2].split("/")[0])
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        if int(cols[1].split(":")[1], 16) == port and cols[3] == "0A":  # LISTEN
            inodes.add(cols[9])
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return int(pid)
    raise RuntimeError(f"no process listens on port {port}")


def report(r: dict[str, Any]) -> str:
    p, srv = r["predictions"], r["server"]
    lines = [
        (
            f"soak: {r['streams']} healthy streams ({r['packet_ms']:g} ms packets, dt {r['dt_ms']:g} ms) beside the "
            f"hostile mix, {r['minutes']:g} min"
        ),
        f"  predictions: {p['received']} received of {p['expected']} expected, lost {p['lost']}, "
        f"reordered {p['reordered']}"
        + (f", stream errors {p['stream_errors']}" if p["stream_errors"] else ""),
        "  e2e server  p50 {p50:.2f}  p99 {p99:.2f}  max {max:.2f} ms".format(**r["e2e_server_ms"]),
        "  e2e client  p50 {p50:.2f}  p99 {p99:.2f}  max {max:.2f} ms".format(**r["e2e_client_ms"]),
        (
            f"  server RSS {srv['rss_start_mb']:.0f} MiB at start, {srv['rss_min_after_1min_mb']:.0f}-"
            f"{srv['rss_max_after_1min_mb']:.0f} MiB after the first minute, {srv['rss_end_mb']:.0f} MiB at the end; "
            f"CPU {100 * srv['cpu_share']:.0f} % of a core"
        ),
        "  generators: " + ", ".join(f"{g['role']} {100 * g['cpu_share']:.0f} %" for g in r["generators"]),
        "  hostile actions and what they got:",
        *(f"    {k}: {v}" for k, v in r["hostile"].items()),
    ]
    return "\n".join(lines)


def main(args: argparse.Namespace | list[str] | None = None) -> int:
    if not isinstance(args, argparse.Namespace):
        p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        add_arguments(p)
        args = p.parse_args(args)
    if args.role is not None:  # a load generator: one JSON line with its results and its CPU
        t0, c0 = time.perf_counter(), _cpu_s()
        role = healthy_role if args.role == "healthy" else hostile_role
        out = asyncio.run(role(args))
        out |= {"cpu_s": _cpu_s() - c0, "wall_s": time.perf_counter() - t0}
        Path(args.out).write_text(json.dumps(out))
        return 0
    result = conduct(args)
    print(report(result), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
