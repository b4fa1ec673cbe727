"""Gesture scenes: moving limbs over a textured background, rendered as log intensity.

Every class is drawn with the same two primitives, a forearm (a capsule from elbow to hand) and a hand
(a disk), one limb or two. No single frame tells the classes apart (a hand on a forearm looks the same
mid-swipe, mid-wave or mid-rotation); only the trajectory does, so a classifier has to use time, and
the direction classes (``rotate_cw``/``rotate_ccw``, ``swipe_left``/``swipe_right``, ...) differ only
in the order of the same positions.

Coordinates: pixel centres at integer ``(x, y)``, ``x`` to the right, ``y`` down (so an angle that
grows is clockwise on screen). Time in seconds. Intensities are natural-log units: a scene is a
function ``L(t, x, y)``, which is what an event pixel responds to. Limbs are blended over the
background in the log domain with an anti-aliased coverage (a 1-pixel ramp), which gives
edges sub-pixel motion between render steps; the blend differs from a linear-intensity blend only
inside that 1-pixel ramp.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.events.types import SensorSize

GESTURES: tuple[str, ...] = (
    "rotate_cw",
    "rotate_ccw",
    "swipe_left",
    "swipe_right",
    "swipe_up",
    "swipe_down",
    "wave",
    "clap",
    "drum",
    "roll",
)

DESCRIPTIONS: dict[str, str] = {
    "rotate_cw": "one forearm turning clockwise about the elbow",
    "rotate_ccw": "one forearm turning counter-clockwise about the elbow",
    "swipe_left": "one hand sweeping fast to the left, then drifting back slowly",
    "swipe_right": "one hand sweeping fast to the right, then drifting back slowly",
    "swipe_up": "one hand sweeping fast upwards, then drifting back slowly",
    "swipe_down": "one hand sweeping fast downwards, then drifting back slowly",
    "wave": "one forearm swinging left-right like a pendulum about the elbow",
    "clap": "two hands meeting in the middle and parting, mirror-symmetric",
    "drum": "two hands beating up and down in alternation",
    "roll": "two hands circling around each other (arm roll)",
}

# Nominal period of one gesture cycle, before the subject's speed and the clip's jitter. They overlap
# once those are applied, so the period alone does not name the class.
BASE_PERIOD_S: dict[str, float] = {
    "rotate_cw": 0.8,
    "rotate_ccw": 0.8,
    "swipe_left": 0.8,
    "swipe_right": 0.8,
    "swipe_up": 0.8,
    "swipe_down": 0.8,
    "wave": 0.65,
    "clap": 0.6,
    "drum": 0.55,
    "roll": 0.65,
}

Box = tuple[int, int, int, int]  # x0, y0, x1, y1: half-open pixel rectangle

_SWIPE_DIR = {
    "swipe_left": (-1.0, 0.0),
    "swipe_right": (1.0, 0.0),
    "swipe_up": (0.0, -1.0),
    "swipe_down": (0.0, 1.0),
}
_STROKE = 0.35  # fraction of a swipe cycle spent on the fast stroke


@dataclass(frozen=True)
class Motion:
    """Where and how a gesture moves. ``size`` is the forearm length in pixels; ``phase`` in cycles."""

    gesture: str
    cx: float
    cy: float
    size: float
    period_s: float
    phase: float = 0.0

    def __post_init__(self) -> None:
        if self.gesture not in GESTURES:
            raise ValueError(f"unknown gesture {self.gesture!r}; known: {', '.join(GESTURES)}")
        if self.size <= 0 or self.period_s <= 0:
            raise ValueError("size and period_s must be positive")


def _smoothstep(x: np.ndarray) -> np.ndarray:
    return x * x * (3.0 - 2.0 * x)


def _swipe_profile(u: np.ndarray) -> np.ndarray:
    """Position in [-1, 1] over one cycle: a fast stroke from -1 to 1, then a slow return.

    The asymmetry is what makes a swipe directional: both halves cover the same pixels (and so give
    the same number of events), but the stroke packs them into a third of the time.
    """
    f = u - np.floor(u)
    stroke = -1.0 + 2.0 * _smoothstep(np.clip(f / _STROKE, 0.0, 1.0))
    back = 1.0 - 2.0 * _smoothstep(np.clip((f - _STROKE) / (1.0 - _STROKE), 0.0, 1.0))
    return np.where(f < _STROKE, stroke, back)


def limbs(m: Motion, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Elbow and hand positions, each ``[K, n_limbs, 2]`` (x, y), at times ``t`` (``[K]``, seconds)."""
    t = np.asarray(t, dtype=np.float64)
    u = t / m.period_s + m.phase
    a = 2.0 * np.pi * u
    s, cx, cy = m.size, m.cx, m.cy
    one = np.ones_like(t)

    def pt(x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray:
        return np.stack([x * one, y * one], axis=-1)

    g = m.gesture
    if g in ("rotate_cw", "rotate_ccw"):
        th = a if g == "rotate_cw" else -a
        elbows = [pt(cx, cy)]
        hands = [pt(cx + s * np.cos(th), cy + s * np.sin(th))]
    elif g in _SWIPE_DIR:
        dx, dy = _SWIPE_DIR[g]
        w = 0.9 * s * _swipe_profile(u)
        hx, hy = cx + w * dx, cy - 0.3 * s + w * dy
        hands = [pt(hx, hy)]
        elbows = [pt(hx + 0.25 * s, hy + 0.97 * s)]
    elif g == "wave":
        psi = 0.6 * np.sin(a)
        ex, ey = cx, cy + 0.5 * s
        elbows = [pt(ex, ey)]
        hands = [pt(ex + s * np.sin(psi), ey - s * np.cos(psi))]
    elif g == "clap":
        half = 0.3 * s + 0.7 * s * 0.5 * (1.0 - np.cos(a))
        hands = [pt(cx - half, cy), pt(cx + half, cy)]
        elbows = [pt(cx - half - 0.6 * s, cy + 0.8 * s), pt(cx + half + 0.6 * s, cy + 0.8 * s)]
    elif g == "drum":
        elbows = [pt(cx - 0.9 * s, cy + 0.6 * s), pt(cx + 0.9 * s, cy + 0.6 * s)]
        hands = [
            pt(cx - 0.5 * s, cy - 0.2 * s + 0.45 * s * np.sin(a)),
            pt(cx + 0.5 * s, cy - 0.2 * s - 0.45 * s * np.sin(a)),
        ]
    else:  # roll
        ox, oy = 0.38 * s * np.cos(a), 0.38 * s * np.sin(a)
        hands = [pt(cx + ox, cy + oy), pt(cx - ox, cy - oy)]
        elbows = [pt(cx - 1.0 * s, cy + 0.5 * s), pt(cx + 1.0 * s, cy + 0.5 * s)]
    return np.stack(elbows, axis=1), np.stack(hands, axis=1)


@dataclass(frozen=True)
class Flicker:
    """A flickering light (lamp, screen) in a fixed rectangle: log intensity modulated in time."""

    box: Box
    freq_hz: float
    amplitude: float
    phase: float = 0.0

    def value(self, t: np.ndarray) -> np.ndarray:
        """Log-intensity offset ``[K]``: a sine and its second harmonic (a lamp is not a pure tone)."""
        w = 2.0 * np.pi * self.freq_hz * t + self.phase
        return (self.amplitude * (np.sin(w) + 0.35 * np.sin(2.0 * w + 1.0)) / 1.35).astype(np.float32)


@dataclass(frozen=True, eq=False)
class DriftTexture:
    """A textured patch swaying slowly (foliage, a curtain): a sum of gratings shifted by ``o(t)``.

    ``L = sum_i a_i sin(k_i . (x - o(t)) + phi_i)``. With ``sin(A - B) = sin A cos B - cos A sin B``
    the pixel part and the time part separate, so a ``[K, P]`` patch costs two small matrix products.
    """

    box: Box
    k: np.ndarray  # [n, 2] wave vectors, rad / px
    amp: np.ndarray  # [n]
    phi: np.ndarray  # [n]
    sway_px: tuple[float, float]
    sway_period_s: float
    sway_phase: float = 0.0

    def value(self, t: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Log-intensity offset ``[K, P]`` at pixels ``(xs, ys)``."""
        s = np.sin(2.0 * np.pi * t / self.sway_period_s + self.sway_phase)
        o = np.stack([self.sway_px[0] * s, self.sway_px[1] * s], axis=-1)  # [K, 2]
        at = o @ self.k.T  # [K, n]
        ap = self.k @ np.stack([xs, ys]).astype(np.float64) + self.phi[:, None]  # [n, P]
        out = np.cos(at) @ (self.amp[:, None] * np.sin(ap)) - np.sin(at) @ (self.amp[:, None] * np.cos(ap))
        return out.astype(np.float32)


def smooth_field(rng: np.random.Generator, sensor: SensorSize, cells: int) -> np.ndarray:
    """A smooth random field ``[H, W]`` of about unit amplitude: a ``cells x cells`` random grid
    interpolated bilinearly (the static texture that a moving hand covers and uncovers)."""
    h, w = sensor.height, sensor.width
    grid = rng.standard_normal((cells + 1, cells + 1))
    gy = np.linspace(0.0, cells, h)
    gx = np.linspace(0.0, cells, w)
    iy = np.minimum(gy.astype(int), cells - 1)
    ix = np.minimum(gx.astype(int), cells - 1)
    fy = (gy - iy)[:, None]
    fx = (gx - ix)[None, :]
    g00, g01 = grid[iy][:, ix], grid[iy][:, ix + 1]
    g10, g11 = grid[iy + 1][:, ix], grid[iy + 1][:, ix + 1]
    return (1 - fy) * ((1 - fx) * g00 + fx * g01) + fy * ((1 - fx) * g10 + fx * g11)


def _box_of(xs0: np.ndarray, ys0: np.ndarray, r: float, sensor: SensorSize) -> Box:
    """Pixel box holding every pixel a shape of radius ``r`` around the given points can touch."""
    x0 = max(0, int(np.floor(xs0.min() - r - 1.0)))
    y0 = max(0, int(np.floor(ys0.min() - r - 1.0)))
    x1 = min(sensor.width, int(np.ceil(xs0.max() + r + 1.0)) + 1)
    y1 = min(sensor.height, int(np.ceil(ys0.max() + r + 1.0)) + 1)
    return (x0, y0, max(x0, x1), max(y0, y1))


def _in_box(xs: np.ndarray, ys: np.ndarray, b: Box) -> np.ndarray:
    return np.flatnonzero((xs >= b[0]) & (xs < b[2]) & (ys >= b[1]) & (ys < b[3]))


def capsule_depth(a: np.ndarray, b: np.ndarray, r: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Depth ``r + 0.5 - distance`` inside a capsule (segment ``a -> b``, ``[K, 2]`` each, radius ``r``)
    at pixels ``(xs, ys)`` (any shapes that broadcast together); the result is ``[K, *that shape]``.

    It is a signed distance: the union of shapes is the maximum of their depths, coverage is
    ``clip(depth, 0, 1)`` (a one-pixel anti-aliasing ramp at the rim), and shading can grow towards
    the rim. A disk is the capsule with ``a == b``.
    """
    shape = (a.shape[0],) + (1,) * max(np.ndim(xs), np.ndim(ys))
    ax, ay = a[:, 0].astype(np.float32).reshape(shape), a[:, 1].astype(np.float32).reshape(shape)
    vx = b[:, 0].astype(np.float32).reshape(shape) - ax
    vy = b[:, 1].astype(np.float32).reshape(shape) - ay
    len2 = np.maximum(vx * vx + vy * vy, np.float32(1e-6))
    qx = np.asarray(xs, dtype=np.float32)[None] - ax
    qy = np.asarray(ys, dtype=np.float32)[None] - ay
    h = np.clip((qx * vx + qy * vy) / len2, 0.0, 1.0)
    qx = qx - h * vx
    qy = qy - h * vy
    return np.float32(r + 0.5) - np.sqrt(qx * qx + qy * qy)


@dataclass(frozen=True, eq=False)
class GestureScene:
    """A complete scene: static background, optional clutter, and the gesture's limbs.

    Implements the :class:`models.synthetic.simulator.Scene` protocol: ``regions`` says which pixels
    may change during a span of time (so the simulator only renders those), ``render`` gives their
    log intensity.
    """

    sensor: SensorSize
    motion: Motion
    background: np.ndarray  # [H, W] float32 log intensity
    hand_level: float  # log intensity of the limbs along their centre lines
    shading: float = 0.0  # how much darker (log units) a limb is at its rim than deep inside
    flicker: Flicker | None = None
    texture: DriftTexture | None = None

    @property
    def r_hand(self) -> float:
        return 0.3 * self.motion.size

    @property
    def r_arm(self) -> float:
        return 0.14 * self.motion.size

    def _shapes(self, t: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, float, Box]]:
        elbow, hand = limbs(self.motion, t)
        shapes = []
        for i in range(hand.shape[1]):
            e, h = elbow[:, i], hand[:, i]
            pts = np.concatenate([e, h])
            shapes.append((e, h, self.r_arm, _box_of(pts[:, 0], pts[:, 1], self.r_arm, self.sensor)))
            shapes.append((h, h, self.r_hand, _box_of(h[:, 0], h[:, 1], self.r_hand, self.sensor)))
        return shapes

    def regions(self, t: np.ndarray) -> tuple[list[Box], list[Box]]:
        """(gesture boxes, clutter boxes): every pixel whose log intensity can change at times ``t``."""
        fg = [s[3] for s in self._shapes(np.asarray(t, dtype=np.float64))]
        clutter = [c.box for c in (self.flicker, self.texture) if c is not None]
        return fg, clutter

    def depth(self, t: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Depth inside the union of all limbs, ``[K, P]`` (negative outside; see :func:`capsule_depth`).

        Each shape is evaluated densely on its own box (a row of x broadcast against a column of y)
        into a buffer spanning all boxes; the requested pixels are gathered from it once. (Slicing
        the times to keep a moving limb's box tighter measured slower: numpy call overhead wins.)
        """
        t = np.asarray(t, dtype=np.float64)
        out = np.full((len(t), len(xs)), -1.0, dtype=np.float32)
        shapes = [s for s in self._shapes(t) if s[3][2] > s[3][0] and s[3][3] > s[3][1]]
        if not shapes:
            return out
        x0, y0 = min(s[3][0] for s in shapes), min(s[3][1] for s in shapes)
        x1, y1 = max(s[3][2] for s in shapes), max(s[3][3] for s in shapes)
        buf = np.full((len(t), y1 - y0, x1 - x0), -1.0, dtype=np.float32)
        for a, b, r, (bx0, by0, bx1, by1) in shapes:
            view = buf[:, by0 - y0 : by1 - y0, bx0 - x0 : bx1 - x0]
            np.maximum(
                view,
                capsule_depth(a, b, r, np.arange(bx0, bx1)[None, :], np.arange(by0, by1)[:, None]),
                out=view,
            )
        sel = _in_box(xs, ys, (x0, y0, x1, y1))
        flat = (ys[sel] - y0) * (x1 - x0) + (xs[sel] - x0)
        out[:, sel] = np.take(buf.reshape(len(t), -1), flat, axis=1)
        return out

    def render(self, t: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Log intensity ``[K, P]`` (float32) at times ``t`` (``[K]``, s) and pixels ``(xs, ys)``."""
        t = np.asarray(t, dtype=np.float64)
        out = np.empty((len(t), len(xs)), dtype=np.float32)
        out[:] = self.background[ys, xs]
        if self.flicker is not None:
            sel = _in_box(xs, ys, self.flicker.box)
            if sel.size:
                out[:, sel] += self.flicker.value(t)[:, None]
        if self.texture is not None:
            sel = _in_box(xs, ys, self.texture.box)
            if sel.size:
                out[:, sel] += self.texture.value(t, xs[sel], ys[sel])
        e = self.depth(t, xs, ys)
        cov = np.clip(e, 0.0, 1.0)
        rim = np.clip(1.0 - e / np.float32(self.r_hand + 0.5), 0.0, 1.0)
        limb = np.float32(self.hand_level) - np.float32(self.shading) * rim * rim
        out += cov * (limb - out)
        return out

    def frame(self, t_s: float) -> np.ndarray:
        """The whole log-intensity image ``[H, W]`` at one time (for pictures and checks)."""
        h, w = self.sensor.height, self.sensor.width
        ys, xs = np.divmod(np.arange(h * w), w)
        return self.render(np.array([t_s]), xs, ys)[0].reshape(h, w)
