"""The event-camera model against hand-worked cases: ramps, a moving edge, refractory period, noise."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from models.events.types import SensorSize, validate_events
from models.synthetic.simulator import (
    NO_NOISE,
    DvsParams,
    NoiseParams,
    Source,
    Thresholds,
    dvs_step,
    noise_events,
    simulate,
)


@dataclass(frozen=True)
class Ramp:
    """Every pixel's log intensity is ``base + rate * t`` (whole sensor changing)."""

    sensor: SensorSize
    rate: float  # log units per second
    t_end: float = math.inf  # the ramp stops here

    def regions(self, t):
        return [(0, 0, self.sensor.width, self.sensor.height)], []

    def render(self, t, xs, ys):
        base = 0.01 * xs  # a different starting level per pixel; the change is what matters
        return (base[None, :] + self.rate * np.minimum(t, self.t_end)[:, None]).astype(np.float32)


@dataclass(frozen=True)
class MovingBar:
    """A bar ``width`` px wide, 1.0 log unit brighter than the background, moving right at ``v`` px/s
    from ``x = x0``; anti-aliased with the same one-pixel ramp as the gesture scenes."""

    sensor: SensorSize
    v: float = 40.0
    x0: float = 4.0
    width: float = 8.0

    def left(self, t):
        return self.x0 + self.v * t

    def regions(self, t):
        return [(0, 0, self.sensor.width, self.sensor.height)], []

    def render(self, t, xs, ys):
        lt = self.left(t)[:, None]
        cover = np.clip(xs[None, :] - lt + 0.5, 0, 1) * np.clip(lt + self.width - xs[None, :] + 0.5, 0, 1)
        return (0.3 + 1.0 * cover).astype(np.float32)


@dataclass(frozen=True)
class Still:
    """A textured but motionless scene."""

    sensor: SensorSize

    def regions(self, t):
        return [(0, 0, self.sensor.width, self.sensor.height)], []

    def render(self, t, xs, ys):
        return np.broadcast_to(np.sin(0.7 * xs) + np.cos(0.3 * ys), (len(t), len(xs))).astype(np.float32)


def exact(c_on: float, c_off: float, refractory_us: int = 0) -> DvsParams:
    return DvsParams(c_on=c_on, c_off=c_off, c_sigma=0.0, refractory_us=refractory_us)


def per_pixel(events, sensor):
    pix = events["y"].astype(np.int64) * sensor.width + events["x"]
    return np.bincount(pix, minlength=sensor.width * sensor.height)


def test_on_ramp_gives_change_over_threshold_events_per_pixel():
    # L rises by 1.0 over 1 s; c_on = c_off = 0.2. The initial reference sits uniformly in
    # (L0 - c_on, L0 + c_off), so L_end - ref0 is uniform in (0.8, 1.2) and a pixel emits
    # floor(that / 0.2) = 4 or 5 ON events, each half the time: mean 4.5, i.e. change / C - 1/2.
    sensor = SensorSize(16, 16)
    rec = simulate(Ramp(sensor, rate=1.0), 1_000_000, exact(0.2, 0.2), NO_NOISE, np.random.default_rng(0))
    counts = per_pixel(rec.events, sensor)
    assert set(np.unique(counts)) <= {4, 5}
    assert counts.mean() == pytest.approx(4.5, abs=0.15)
    assert np.all(rec.events["p"] == 1)
    assert np.all(rec.source == Source.GESTURE)
    # Consecutive events of a pixel are one threshold apart: 0.2 / (1.0 per s) = 200 ms (+-1 us floor).
    ev = rec.events[(rec.events["x"] == 3) & (rec.events["y"] == 5)]
    assert np.all(np.abs(np.diff(ev["t"]) - 200_000) <= 1)


def test_off_ramp_uses_the_off_threshold():
    # L falls by 1.2 over 1 s with c_off = 0.3, c_on = 0.2: ref0 - L0 is uniform in (-0.2, 0.3), so
    # ref0 - L_end is uniform in (1.0, 1.5): floor(/0.3) = 3 below 1.2 (40 %), 4 above (60 %): mean 3.6.
    sensor = SensorSize(16, 16)
    rec = simulate(Ramp(sensor, rate=-1.2), 1_000_000, exact(0.2, 0.3), NO_NOISE, np.random.default_rng(1))
    counts = per_pixel(rec.events, sensor)
    assert set(np.unique(counts)) <= {3, 4}
    assert counts.mean() == pytest.approx(3.6, abs=0.15)
    assert np.all(rec.events["p"] == 0)


def test_several_events_in_one_render_step_get_interpolated_times():
    # 0.5 log units per 1 ms step: two or three crossings per step, 0.2 / 500 per s = 400 us apart.
    sensor = SensorSize(4, 4)
    rec = simulate(
        Ramp(sensor, rate=500.0, t_end=0.004), 10_000, exact(0.2, 0.2), NO_NOISE, np.random.default_rng(2)
    )
    counts = per_pixel(rec.events, sensor)
    assert set(np.unique(counts)) <= {9, 10}  # 2.0 log units: (1.8, 2.2) / 0.2
    for pix in range(16):
        ev = rec.events[rec.events["y"].astype(int) * 4 + rec.events["x"] == pix]
        assert np.all(np.abs(np.diff(ev["t"]) - 400) <= 1)
        assert ev["t"].max() < 4000


def test_refractory_period_thins_fast_crossings():
    # Same 400 us spacing, refractory 1000 us: the pixel keeps every third crossing.
    sensor = SensorSize(4, 4)
    rec = simulate(
        Ramp(sensor, rate=500.0, t_end=0.004),
        10_000,
        exact(0.2, 0.2, 1000),
        NO_NOISE,
        np.random.default_rng(2),
    )
    counts = per_pixel(rec.events, sensor)
    assert set(np.unique(counts)) <= {3, 4}  # ceil(9 / 3), ceil(10 / 3)
    for pix in range(16):
        ev = rec.events[rec.events["y"].astype(int) * 4 + rec.events["x"] == pix]
        assert np.all(np.diff(ev["t"]) >= 1000)
        assert np.all(np.abs(np.diff(ev["t"]) - 1200) <= 1)


def test_moving_bright_bar_gives_on_ahead_and_off_behind():
    # A bar 1.0 log unit brighter moving right at 40 px/s: pixels it enters brighten (ON) at its right
    # edge, pixels it leaves darken (OFF) at its left edge; 1.0 / 0.2 -> 4-5 events of each per pixel.
    sensor = SensorSize(48, 4)
    bar = MovingBar(sensor)
    rec = simulate(bar, 1_000_000, exact(0.2, 0.2), NO_NOISE, np.random.default_rng(3))
    ev = rec.events
    t = ev["t"] * 1e-6
    on, off = ev["p"] == 1, ev["p"] == 0
    right_edge = bar.left(t) + bar.width
    assert np.all(np.abs(ev["x"][on] - right_edge[on]) <= 1.0)
    assert np.all(np.abs(ev["x"][off] - bar.left(t)[off]) <= 1.0)
    # Pixels fully crossed by both edges: x from 13 (entered after t = 0) to 43 (left before t = 1 s).
    swept = (ev["x"] >= 14) & (ev["x"] <= 43)
    n_on = np.bincount(ev["x"][swept & on], minlength=48)[14:44]
    n_off = np.bincount(ev["x"][swept & off], minlength=48)[14:44]
    assert n_on.min() >= 4 * 4 and n_on.max() <= 5 * 4  # 4 rows
    assert n_off.min() >= 4 * 4 and n_off.max() <= 5 * 4


def test_static_scene_without_noise_gives_no_events():
    rec = simulate(Still(SensorSize(32, 32)), 500_000, DvsParams(), NO_NOISE, np.random.default_rng(4))
    assert rec.events.size == 0


def test_background_activity_rate_and_polarity():
    # 2 Hz per pixel over 64 x 64 pixels for 1 s: 8192 events expected, Poisson sd ~ 91.
    sensor = SensorSize(64, 64)
    noise = NoiseParams(ba_rate_hz=2.0, ba_on_fraction=0.6, hot_pixels=0)
    rec = simulate(Still(sensor), 1_000_000, DvsParams(), noise, np.random.default_rng(5))
    validate_events(rec.events, sensor)
    assert abs(rec.events.size - 8192) < 4 * 91
    assert rec.events["p"].mean() == pytest.approx(0.6, abs=0.03)
    assert np.all(rec.source == Source.BACKGROUND_ACTIVITY)
    halves = (
        np.bincount((rec.events["x"] >= 32).astype(int)),
        np.bincount((rec.events["t"] >= 500_000).astype(int)),
    )
    for h in halves:
        assert abs(int(h[0]) - int(h[1])) < 4 * math.sqrt(8192)


def test_hot_pixels_are_few_and_busy():
    sensor = SensorSize(32, 32)
    rec = noise_events(
        sensor,
        1_000_000,
        NoiseParams(ba_rate_hz=0.0, hot_pixels=3, hot_rate_hz=100.0),
        np.random.default_rng(6),
    )
    pix = np.unique(rec.events["y"].astype(int) * 32 + rec.events["x"])
    assert pix.size == 3
    assert rec.events.size > 3 * 20  # each rate is log-normal around 100 Hz; 20 Hz is > 3 sd below
    assert np.all(rec.source == Source.HOT_PIXEL)


def test_refractory_holds_across_signal_and_noise():
    sensor = SensorSize(48, 4)
    dvs = DvsParams(refractory_us=2000)
    noise = NoiseParams(ba_rate_hz=50.0, hot_pixels=2, hot_rate_hz=400.0)
    rec = simulate(MovingBar(sensor), 1_000_000, dvs, noise, np.random.default_rng(7))
    pix = rec.events["y"].astype(np.int64) * 48 + rec.events["x"]
    order = np.lexsort((rec.events["t"], pix))
    same = np.diff(pix[order]) == 0
    assert np.all(np.diff(rec.events["t"][order])[same] >= 2000)
    assert np.all(np.diff(rec.events["t"]) >= 0)


def test_thresholds_mismatch_changes_counts_per_pixel():
    sensor = SensorSize(16, 16)
    th = Thresholds(np.full(256, 0.1), np.full(256, 0.1))
    th.on[:128] = 0.25  # top half of the sensor: a less sensitive pixel
    rec = simulate(Ramp(sensor, rate=1.0), 1_000_000, exact(0.2, 0.2), NO_NOISE, np.random.default_rng(8), th)
    counts = per_pixel(rec.events, sensor)
    assert set(np.unique(counts[:128])) <= {3, 4}  # L_end - ref0 in (1.0 - c_off, 1.0 + c_on) = (0.9, 1.25)
    assert set(np.unique(counts[128:])) <= {9, 10, 11}  # (0.9, 1.1) / 0.1


def greedy_reference(lp, lc, ref, last, c, t_prev, dt, refr):
    """Crossing by crossing, the rule in words: a crossing at time t is kept iff t >= last kept + R."""
    sgn = 1.0 if lc >= ref else -1.0
    kept = []
    j = 1
    while sgn * (lc - (ref + sgn * j * c)) >= -1e-12:
        level = ref + sgn * j * c
        t = t_prev + dt * (level - lp) / (lc - lp)
        if t >= last + refr - 1e-6:
            kept.append(t)
            last = t
        j += 1
    return kept


def test_dvs_step_closed_form_matches_greedy_rule():
    rng = np.random.default_rng(9)
    n = 400
    ref = rng.normal(0, 1, n)
    c_on, c_off = rng.uniform(0.1, 0.3, n), rng.uniform(0.1, 0.3, n)
    lp = ref + rng.uniform(-c_off * 0.99, c_on * 0.99)  # inside the band, as the simulator guarantees
    lc = lp + rng.normal(0, 1.5, n)
    last = np.where(rng.random(n) < 0.5, -np.inf, rng.uniform(0, 1000, n))
    idx, t, p, new_ref, _ = dvs_step(lp, lc, ref, last, c_on, c_off, 1000.0, 1000.0, 300.0)
    for i in range(n):
        c = c_on[i] if lc[i] >= ref[i] else c_off[i]
        want = greedy_reference(lp[i], lc[i], ref[i], last[i], c, 1000.0, 1000.0, 300.0)
        np.testing.assert_allclose(t[idx == i], want, atol=1e-6)
        assert np.all(p[idx == i] == (lc[i] >= ref[i]))
        assert -c_off[i] - 1e-9 < lc[i] - new_ref[i] < c_on[i] + 1e-9  # back inside the band
