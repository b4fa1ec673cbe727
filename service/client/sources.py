"""Event sources for the streaming client: files, the synthetic camera, a live camera, a DV network stream.

``open_source(spec)`` understands:

* a file path: ``.aedat4`` (dv-processing), ``.npy`` / ``.npz``, or ``.evt`` / ``.bin`` (13-byte wire
  records); cut into packets of ``packet_us`` of stream time;
* ``synthetic`` (endless) or ``synthetic:N`` (N gestures): :func:`models.synthetic.live_packets`,
  which also says the true label of every packet;
* ``camera`` or ``camera:SERIAL``: a USB camera through dv-processing (``dv.io.camera.open``);
* ``tcp://HOST:PORT``: a DV network event stream (``dv.io.NetworkReader``, e.g. from DV's
  "Network TCP server" output module).

A :class:`Source` yields ``(events, label)`` packets; ``label`` is the true class name where the source
knows it (synthetic), else None. ``live`` sources are already paced by the world; files are paced
by :class:`Pacer` in the client.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from models.events.types import EVENT_DTYPE, SensorSize, make_events

Packet = tuple[np.ndarray, str | None]


@dataclass
class Source:
    name: str
    sensor: SensorSize | None
    packets: Iterator[Packet]
    live: bool = False  # paced by the world (camera, network, real-time synthetic)
    total_events: int | None = None
    _close: Callable[[], None] | None = field(default=None, repr=False)

    def close(self) -> None:
        if self._close is not None:
            with contextlib.suppress(Exception):  # e.g. a generator still running on another thread
                self._close()


def split_packets(events: np.ndarray, packet_us: int) -> Iterator[np.ndarray]:
    """Cut a recording into packets of ``packet_us`` stream time (empty spans are skipped)."""
    if events.size == 0:
        return
    t = events["t"]
    k = (t - t[0]) // packet_us
    cuts = np.flatnonzero(np.diff(k)) + 1
    yield from np.split(events, cuts)


def split_random(events: np.ndarray, rng: np.random.Generator, max_events: int) -> Iterator[np.ndarray]:
    """Cut anywhere: packet sizes drawn uniformly from 1..max_events (tests: arbitrary packet sizes)."""
    i = 0
    while i < events.size:
        n = int(rng.integers(1, max_events + 1))
        yield events[i : i + n]
        i += n


class Pacer:
    """Sleeps so that packets leave at the pace of their timestamps, ``speed`` times real time."""

    def __init__(self, speed: float | None) -> None:
        self.speed = speed
        self._t0: int | None = None
        self._wall0 = 0.0

    def delay(self, events: np.ndarray) -> float:
        """Seconds to wait before sending ``events`` (0 when unpaced or late)."""
        if not self.speed or math.isinf(self.speed) or events.size == 0:
            return 0.0
        t_last = int(events["t"][-1])
        if self._t0 is None:
            self._t0, self._wall0 = int(events["t"][0]), time.monotonic()
        due = self._wall0 + (t_last - self._t0) * 1e-6 / self.speed
        return max(0.0, due - time.monotonic())


def read_file(path: Path) -> tuple[np.ndarray, SensorSize | None]:
    """Events of a recording file (AEDAT4, numpy, or wire records)."""
    from models.events.readers import read_events

    return read_events(path)


def dv_batch_to_events(batch: Any) -> np.ndarray:
    """A dv-processing EventStore -> EVENT_DTYPE."""
    if batch is None or len(batch) == 0:
        return np.zeros(0, EVENT_DTYPE)
    raw = batch.numpy()
    return make_events(raw["timestamp"], raw["x"], raw["y"], raw["polarity"].astype(np.uint8))


def _dv_packets(reader: Any, poll_s: float = 0.001) -> Iterator[Packet]:
    while reader.isRunning():
        batch = reader.getNextEventBatch()
        if batch is None:
            time.sleep(poll_s)
            continue
        ev = dv_batch_to_events(batch)
        if ev.size:
            yield ev, None


def open_camera(name: str | None) -> Any:
    """Open a USB event camera (first found, or by serial number); dv-processing does the work."""
    import dv_processing as dv

    return dv.io.camera.open(name) if name else dv.io.camera.open()


def open_network(host: str, port: int) -> Any:
    import dv_processing as dv

    return dv.io.NetworkReader(host, port)


def _from_reader(name: str, reader: Any) -> Source:
    if not reader.isEventStreamAvailable():
        raise ValueError(f"{name}: no event stream available")
    res = reader.getEventResolution()
    sensor = SensorSize(int(res[0]), int(res[1])) if res is not None else None
    packets = _dv_packets(reader)
    del reader  # the generator holds the only reference: closing it releases the device / socket
    return Source(name, sensor, packets, live=True, _close=packets.close)


def parse_synthetic(spec: str) -> int | None:
    """``synthetic`` -> None (endless), ``synthetic:N`` / ``synthetic:N gestures`` -> N."""
    rest = spec.split(":", 1)[1].strip() if ":" in spec else ""
    if not rest:
        return None
    word = rest.split()[0]
    if not word.isdigit() or int(word) < 1:
        raise ValueError(f"{spec!r}: expected synthetic:N with N >= 1 gestures")
    return int(word)


def open_source(
    spec: str,
    *,
    packet_us: int = 10_000,
    realtime: bool = True,
    speed: float = 1.0,
    seed: int = 0,
    classes: list[str] | None = None,
) -> Source:
    """Open a source by its command-line spec (see the module docstring)."""
    if spec == "synthetic" or spec.startswith("synthetic:"):
        from models.synthetic import CLASSES, SyntheticConfig, live_packets

        n = parse_synthetic(spec)
        cfg = SyntheticConfig()
        gen = live_packets(cfg, packet_us, realtime=realtime, speed=speed, seed=seed, classes=classes)
        per_gesture = -(-cfg.duration_us // packet_us)
        packets = ((ev, CLASSES[label]) for ev, label in gen)
        if n is not None:
            packets = itertools.islice(packets, n * per_gesture)
        return Source(spec, cfg.sensor, packets, live=realtime, _close=gen.close)
    if spec == "camera" or spec.startswith("camera:"):
        name = spec.split(":", 1)[1] if ":" in spec else None
        return _from_reader(spec, open_camera(name or None))
    if spec.startswith("tcp://"):
        u = urlparse(spec)
        if not u.hostname or not u.port:
            raise ValueError(f"{spec!r}: expected tcp://HOST:PORT")
        return _from_reader(spec, open_network(u.hostname, u.port))
    path = Path(spec)
    if not path.is_file():
        raise ValueError(
            f"{spec!r}: no such file; a source is an event file (.aedat4 .npy .npz .evt), synthetic[:N], "
            "camera[:SERIAL] or tcp://HOST:PORT"
        )
    events, sensor = read_file(path)
    return Source(
        str(path),
        sensor,
        ((p, None) for p in split_packets(events, packet_us)),
        total_events=int(events.size),
    )
