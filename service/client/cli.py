"""``asasnn stream SOURCE --url ws://HOST:PORT/ws/infer``: stream events, print live predictions and totals.

SOURCE: an event file (.aedat4 .npy .npz .evt), ``synthetic`` / ``synthetic:N`` (N gestures), a camera
(``camera`` / ``camera:SERIAL``) or a DV network stream (``tcp://HOST:PORT``). Files and the synthetic
source are paced at real time by their timestamps (``--speed`` to change, ``--fast`` for no pacing);
predictions do not depend on the pace, since the server bins by stream time. Ctrl-C stops cleanly and
still prints the totals.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import signal
import sys
import threading
import time
from typing import Any

from service.client.api import Reconnect, Resume, ServiceError, StreamSession
from service.client.sources import Pacer, Source, open_source


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="file, synthetic[:N], camera[:SERIAL] or tcp://HOST:PORT")
    p.add_argument("--url", default="ws://127.0.0.1:8000/ws/infer", help="server WebSocket URL")
    p.add_argument("--model", help="model name (default: the server's default)")
    p.add_argument("--api-key", help="API key (or set ASASNN_API_KEY)")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument(
        "--speed", type=float, default=1.0, help="pace at this many times real time (default 1)"
    )
    pace.add_argument("--fast", action="store_true", help="send as fast as the server takes it")
    p.add_argument(
        "--packet-ms", type=float, default=10.0, help="stream time per packet for files / synthetic"
    )
    p.add_argument("--readout", choices=["horizon", "ema"], help="label readout (default: the model's)")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument(
        "--every", type=int, default=10, help="print every Nth prediction (and every label change)"
    )
    p.add_argument("--json", action="store_true", help="print every server message as one JSON line")
    p.add_argument("--quiet", action="store_true", help="print only the totals")
    p.add_argument("--seed", type=int, default=0, help="synthetic source seed")
    p.add_argument("--max-seconds", type=float, help="stop after this many seconds of wall time")
    p.add_argument(
        "--reconnect",
        action="store_true",
        help="when the server drains or restarts (close 1012, 1001, connection lost), reconnect and go on "
        "in a new session (which starts from rest unless --resume)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="with --reconnect implied: keep the session's snapshot (every --snapshot-every seconds and at a "
        "drain) and the packets sent after it, and continue the same session on reconnection",
    )
    p.add_argument(
        "--snapshot-every", type=float, default=5.0, help="seconds between snapshots with --resume (default 5)"
    )


def _open(args: argparse.Namespace) -> Source:
    speed = None if args.fast else args.speed
    return open_source(
        args.source,
        packet_us=max(1, int(args.packet_ms * 1000)),
        realtime=speed is not None,
        speed=speed or 1.0,
        seed=args.seed,
    )


class Printer:
    """Live lines and the totals; knows the true labels when the source does."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.truth_t: list[int] = []
        self.truth_label: list[str] = []
        self.last_label: str | None = None
        self.correct = self.judged = 0
        self.latency: list[float] = []

    def truth(self, packet_t: int, label: str | None) -> None:
        if label is not None and (
            not self.truth_label or self.truth_label[-1] != label or packet_t < self.truth_t[-1]
        ):
            self.truth_t.append(packet_t)
            self.truth_label.append(label)

    def _true_at(self, t: int) -> str | None:
        i = bisect.bisect_right(self.truth_t, t) - 1
        return self.truth_label[i] if i >= 0 else None

    def __call__(self, msg: dict[str, Any]) -> None:
        a = self.args
        if a.json:
            print(json.dumps(msg), flush=True)
        kind = msg.get("type")
        if kind in ("warning", "error") and not a.json:
            print(f"[{kind}] {msg.get('code')}: {msg.get('message')}", file=sys.stderr, flush=True)
        if kind == "reconnected" and not a.json:
            print(
                f"[reconnected] session {msg['session']} after close code {msg['close_code']} "
                f"({msg['attempts']} attempt(s)); "
                + (f"resumed at step {msg['resumed']['step']}" if msg.get("resumed") else "it starts from rest"),
                file=sys.stderr,
                flush=True,
            )
        if kind != "prediction":
            return
        self.latency.append(msg["latency_ms"]["total"])
        true = self._true_at(msg["t_start_us"])
        if true is not None:
            self.judged += 1
            self.correct += msg["label"] == true
        changed = msg["label"] != self.last_label
        self.last_label = msg["label"]
        if a.quiet or a.json or not (changed or msg["step"] % max(a.every, 1) == 0):
            return
        top = msg["top_k"]
        rest = ", ".join(f"{x['label']} {x['p']:.2f}" for x in top[1:])
        truth = f"  [true: {true}]" if true is not None else ""
        print(
            f"step {msg['step']:6d}  t={msg['t_start_us'] / 1e6:9.3f}s  {top[0]['label']:<14} {top[0]['p']:.2f}"
            f"  ({rest})  nasfr {msg['nasfr']:.3f}  {msg['latency_ms']['total']:.1f} ms{truth}",
            flush=True,
        )

    def totals(self, s: StreamSession, wall_s: float, packets: int) -> None:
        end = s.end or {}
        steps = len(s.predictions)
        stream_s = end.get("duration_us", 0) / 1e6
        lines = [
            f"model {s.ready['model']['name']}  session {s.session_id}",
            (
                f"packets {packets}  events {end.get('events', 0)}  steps {steps}  stream {stream_s:.2f} s  "
                f"wall {wall_s:.2f} s  ({stream_s / wall_s if wall_s else 0:.1f}x real time)"
            ),
        ]
        if end.get("label") is not None:
            lines.append(
                f"final label {end['label']}  "
                + ", ".join(f"{x['label']} {x['p']:.2f}" for x in end["top_k"])
            )
            lines.append(
                f"NASFR {end['nasfr']:.4f}  spikes {end['spikes']}  SOPs {end['sops']:.3g}  "
                f"energy proxy {end['energy_j'] * 1e6:.3f} uJ"
            )
        if self.latency:
            lat = sorted(self.latency)
            lines.append(f"latency ms: median {lat[len(lat) // 2]:.2f}  p99 {lat[int(len(lat) * 0.99)]:.2f}")
        if self.judged:
            lines.append(
                f"per-step accuracy vs. true label {self.correct / self.judged:.1%} ({self.judged} steps)"
            )
        if s.reconnects:
            resumed = all(m.get("resumed") for m in s.messages if m.get("type") == "reconnected")
            whose = "the whole stream's (resumed)" if resumed else "the last session's"
            lines.append(f"reconnected {s.reconnects} time(s); totals are {whose}")
        if s.warnings or s.errors:
            lines.append(f"warnings {len(s.warnings)}  errors {len(s.errors)}")
        print("\n".join(lines), flush=True)


async def _stream(args: argparse.Namespace, source: Source) -> int:
    import os

    printer = Printer(args)
    sensor = (source.sensor.width, source.sensor.height) if source.sensor else None
    try:
        s = await StreamSession.connect(
            args.url,
            model=args.model,
            sensor=sensor,
            api_key=args.api_key or os.environ.get("ASASNN_API_KEY"),
            readout={"mode": args.readout} if args.readout else None,
            output={"top_k": args.top_k},
            on_message=printer,
            reconnect=Reconnect() if args.reconnect or args.resume else None,
            resume=Resume(snapshot_every_s=args.snapshot_every) if args.resume else None,
        )
    except (ServiceError, OSError) as e:
        print(f"asasnn stream: cannot start a session at {args.url}: {e}", file=sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, stop.set)
    pacer = Pacer(None if (args.fast or source.live) else args.speed)
    t0 = time.monotonic()
    packets = 0
    pump = Pump(source, loop)
    try:
        while not stop.is_set() and s.close_code is None:
            if args.max_seconds is not None and time.monotonic() - t0 > args.max_seconds:
                break
            try:
                item = await asyncio.wait_for(pump.get(), 0.25)
            except TimeoutError:
                continue
            if item is None:
                break
            events, label = item
            if events.size == 0:
                continue
            printer.truth(int(events["t"][0]), label)
            await asyncio.sleep(pacer.delay(events))
            await s.send_events(events)
            packets += 1
        await s.stop()
    except ServiceError as e:
        print(f"asasnn stream: {e}", file=sys.stderr)
        return 1
    finally:
        pump.close()
        await s.close()
        source.close()
    printer.totals(s, time.monotonic() - t0, packets)
    return 0 if len(s.errors) == s.errors_recovered else 1


class Pump:
    """Reads a source on a daemon thread into the event loop, at most ``depth`` packets ahead.

    Camera and network reads block; a daemon thread never holds up the exit after Ctrl-C or
    ``--max-seconds``, where an executor thread would. The thread hands packets over with
    ``call_soon_threadsafe`` (no coroutine is made on the thread, so none is left un-awaited when the
    loop ends first) and a semaphore keeps it ``depth`` packets ahead at most.
    """

    def __init__(self, source: Source, loop: asyncio.AbstractEventLoop, depth: int = 64) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._slots = threading.Semaphore(depth)
        self._stopped = threading.Event()
        threading.Thread(target=self._produce, args=(source,), name="asasnn-source", daemon=True).start()

    async def get(self) -> Any:
        """The next ``(events, label)`` packet; None at the end of the source."""
        item = await self._queue.get()
        self._slots.release()
        return item

    def close(self) -> None:
        self._stopped.set()

    def _put(self, item: Any) -> bool:
        while not self._slots.acquire(timeout=0.25):
            if self._stopped.is_set() or self._loop.is_closed():
                return False
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: the stream is over
            return False
        return True

    def _produce(self, source: Source) -> None:
        try:
            for item in source.packets:
                if self._stopped.is_set() or not self._put(item):
                    return
        except Exception as e:  # noqa: BLE001 - a camera or network failure ends the stream, not the client
            print(f"asasnn stream: source stopped: {e}", file=sys.stderr)
        self._put(None)


def run(args: argparse.Namespace) -> int:
    try:
        source = _open(args)
    except Exception as e:  # noqa: BLE001 - a bad spec, a missing file, no camera: say so, no traceback
        print(f"asasnn stream: cannot open source {args.source!r}: {e}", file=sys.stderr)
        return 2
    return asyncio.run(_stream(args, source))
