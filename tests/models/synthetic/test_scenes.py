"""Gesture geometry and rendering."""

from __future__ import annotations

import numpy as np
import pytest

from models.events.types import SensorSize
from models.synthetic.scenes import GESTURES, GestureScene, Motion, capsule_depth, limbs


def motion(g: str, **kw) -> Motion:
    return Motion(g, cx=64.0, cy=64.0, size=kw.pop("size", 20.0), period_s=kw.pop("period_s", 1.0), **kw)


def test_rotate_cw_turns_clockwise_on_screen():
    # y points down: from the right of the elbow (angle 0) a quarter turn clockwise is straight below.
    _, hand = limbs(motion("rotate_cw"), np.array([0.0, 0.25]))
    np.testing.assert_allclose(hand[:, 0], [[84.0, 64.0], [64.0, 84.0]], atol=1e-9)
    _, hand = limbs(motion("rotate_ccw"), np.array([0.25]))
    np.testing.assert_allclose(hand[0, 0], [64.0, 44.0], atol=1e-9)


@pytest.mark.parametrize(
    ("a", "b"), [("rotate_cw", "rotate_ccw"), ("swipe_left", "swipe_right"), ("swipe_up", "swipe_down")]
)
def test_direction_pairs_differ_only_in_time_or_mirror(a, b):
    # The clockwise rotation played backwards is the counter-clockwise one; a left swipe is a right
    # swipe mirrored about the middle of its path. Either way the two visit the same hand positions,
    # so no single frame names the direction.
    t = np.linspace(0.0, 2.0, 97)
    _, ha = limbs(motion(a), t)
    _, hb = limbs(motion(b), -t if a == "rotate_cw" else t)
    if a == "rotate_cw":
        np.testing.assert_allclose(ha, hb, atol=1e-9)
    else:
        axis, mid = (0, 64.0) if a == "swipe_left" else (1, 64.0 - 0.3 * 20.0)
        np.testing.assert_allclose(ha[..., axis] - mid, -(hb[..., axis] - mid), atol=1e-9)
        np.testing.assert_allclose(ha[..., 1 - axis], hb[..., 1 - axis], atol=1e-9)


def test_swipe_stroke_is_fast_and_return_slow():
    # The stroke covers -1 -> +1 of the path in 35 % of the cycle, the return in 65 %.
    t = np.linspace(0.0, 1.0, 1001)
    _, hand = limbs(motion("swipe_right"), t)
    x = hand[:, 0, 0]
    assert x[0] == pytest.approx(64.0 - 18.0)
    assert x[350] == pytest.approx(64.0 + 18.0)
    v = np.diff(x) / np.diff(t)
    assert v.max() > 1.5 * -v.min() > 0


def test_capsule_depth_is_signed_distance_to_rim():
    a = np.array([[0.0, 0.0]])
    b = np.array([[10.0, 0.0]])
    xs = np.array([5.0, 5.0, 13.0, -3.0])
    ys = np.array([0.0, 3.0, 0.0, 4.0])
    d = capsule_depth(a, b, 2.0, xs, ys)
    np.testing.assert_allclose(d[0], [2.5, -0.5, -0.5, -2.5], atol=1e-6)


def test_every_gesture_moves_and_stays_in_view():
    for g in GESTURES:
        _, h = limbs(motion(g, size=28.0, period_s=0.8), np.linspace(0.0, 1.5, 301))
        assert np.ptp(h, axis=0).max() > 10.0, g  # the hands travel
        assert h.min() > 64 - 2 * 28 and h.max() < 64 + 2 * 28, g


def scene(g: str) -> GestureScene:
    sensor = SensorSize(96, 96)
    bg = np.zeros((96, 96), dtype=np.float32)
    return GestureScene(sensor, Motion(g, 48.0, 48.0, 20.0, 0.5), bg, hand_level=1.0, shading=0.4)


def test_render_draws_the_limbs_with_shading():
    s = scene("rotate_cw")
    img = s.frame(0.0)  # elbow at (48, 48), hand (radius 6) at (68, 48), arm radius 2.8
    # level = 1.0 - 0.4 * (1 - depth / 6.5)^2 with depth = radius + 0.5 - distance
    assert img[48, 68] == pytest.approx(1.0)  # hand centre: depth 6.5, no shading
    assert img[48, 72] == pytest.approx(1.0 - 0.4 * (4.0 / 6.5) ** 2)  # 4 px off the hand centre
    assert img[48, 48] == pytest.approx(1.0 - 0.4 * (1.0 - 3.3 / 6.5) ** 2)  # arm centre line
    assert img[48, 75] == 0.0 and img[10, 10] == 0.0  # 7 px from the hand centre: background


@pytest.mark.parametrize("g", GESTURES)
def test_regions_hold_every_changing_pixel(g):
    # The simulator renders only the pixels inside `regions`; nothing may change outside them.
    s = scene(g)
    t = np.arange(0.0, 0.025, 0.001) + 0.137
    before = s.frame(0.136)
    changed = np.zeros((96, 96), dtype=bool)
    for ti in t:
        changed |= s.frame(ti) != before
    fg, clutter = s.regions(t)
    inside = np.zeros((96, 96), dtype=bool)
    for x0, y0, x1, y1 in fg + clutter:
        inside[y0:y1, x0:x1] = True
    assert changed.any()
    assert not (changed & ~inside).any()
