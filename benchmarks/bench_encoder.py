"""Throughput of FrameBinner against a plain ``np.add.at`` loop, measured side by side in one run.

The floor is the least a correct encoder could get away with: it is told the number of bins in
advance, keeps no state between packets and validates nothing, and scatters each packet straight
into the output with ``np.add.at``. FrameBinner does more per packet (validation, the open bin,
the gap rule), so the ratio shows what the streaming machinery costs, packet size by packet size.

Run: ``python benchmarks/bench_encoder.py [num_events]``. Not a test.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

# Run as a script, Python puts benchmarks/ on the path, not the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.events import BinnerConfig, FrameBinner, SensorSize, make_events

PACKET_SIZES = (256, 4096, 65536, None)  # None: the whole recording as one packet
RATE_EV_PER_S = 1_000_000  # a busy DVS128 scene
REPEATS = 5


def synthetic_recording(num_events: int, sensor: SensorSize, seed: int = 0) -> np.ndarray:
    """Uniform random events at RATE_EV_PER_S: the binner's cost does not depend on the scene."""
    rng = np.random.default_rng(seed)
    duration_us = max(num_events * 1_000_000 // RATE_EV_PER_S, 1)
    t = np.sort(rng.integers(0, duration_us, num_events))
    return make_events(
        t, rng.integers(0, sensor.width, num_events), rng.integers(0, sensor.height, num_events),
        rng.integers(0, 2, num_events),
    )


def _packets(events: np.ndarray, size: int | None) -> list[np.ndarray]:
    size = size or events.size
    return [events[i : i + size] for i in range(0, events.size, size)]


def _binner(packets: list[np.ndarray], cfg: BinnerConfig) -> np.ndarray:
    b = FrameBinner(cfg)
    out = [b.push(p) for p in packets]
    out.append(b.flush())
    return np.concatenate(out)


def _add_at(packets: list[np.ndarray], cfg: BinnerConfig, num_bins: int, t0: int) -> np.ndarray:
    frames = np.zeros((num_bins, *cfg.frame_shape), dtype=np.float32)
    for p in packets:
        k = (p["t"] - t0) // cfg.dt_us
        np.add.at(frames, (k, p["p"], p["y"] // cfg.ds, p["x"] // cfg.ds), 1)
    return frames


def _best_of(fns: list[Callable[[], np.ndarray]]) -> list[tuple[float, np.ndarray]]:
    """Best wall time of each function, the functions taking turns so that drift in machine load
    hits both sides of the ratio alike."""
    best = [(float("inf"), np.zeros(0))] * len(fns)
    for _ in range(REPEATS):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            out = fn()
            best[i] = min(best[i], (time.perf_counter() - start, out), key=lambda r: r[0])
    return best


def run(num_events: int = 2_000_000) -> dict:
    """Time both encoders; return ``{(frame_shape, packet_size): {binner_ev_s, add_at_ev_s, ratio}}``."""
    sensor = SensorSize(128, 128)
    events = synthetic_recording(num_events, sensor)
    t0 = int(events["t"][0])
    results = {}
    for ds in (4, 1):  # the 3-conv nets' 2x32x32 input and the Five net's 2x128x128
        cfg = BinnerConfig(sensor, dt_us=15_000, ds=ds)
        num_bins = int((events["t"][-1] - t0) // cfg.dt_us) + 1
        for size in PACKET_SIZES:
            packets = _packets(events, size)
            (tb, fb), (ta, fa) = _best_of(
                [partial(_binner, packets, cfg), partial(_add_at, packets, cfg, num_bins, t0)]
            )
            # Same frames, or the timing means nothing (no empty bins here, so no gap rule).
            np.testing.assert_array_equal(fb, fa)
            results[(cfg.frame_shape, size or events.size)] = {
                "binner_ev_s": events.size / tb,
                "add_at_ev_s": events.size / ta,
                "ratio": ta / tb,
            }
    return results


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="FrameBinner throughput against a plain np.add.at loop")
    parser.add_argument("num_events", nargs="?", type=int, default=2_000_000)
    num_events = parser.parse_args().num_events
    results = run(num_events)
    print(f"{num_events} events, best of {REPEATS}; ratio = add.at time / FrameBinner time")
    print(f"{'frame':>12} {'packet':>8} {'FrameBinner Mev/s':>18} {'np.add.at Mev/s':>16} {'ratio':>6}")
    for (shape, size), r in results.items():
        print(
            f"{'x'.join(map(str, shape)):>12} {size:>8} {r['binner_ev_s'] / 1e6:>18.1f} "
            f"{r['add_at_ev_s'] / 1e6:>16.1f} {r['ratio']:>6.2f}"
        )


if __name__ == "__main__":
    main()
