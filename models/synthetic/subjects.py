"""Subjects and clips: the random choices that turn a (class, subject, seed) into a scene and a sensor.

A *subject* stands for one person recorded in one room with one camera setting: how fast and how big
they gesture, where they stand, how bright their hands are against the background, the room's
clutter (a flickering light, swaying texture: where, how strong, how fast), and the sensor's noise and
threshold setting. All of it is drawn from ``(dataset seed, subject id)`` alone, so a subject looks the
same in every clip and held-out subjects differ from the training ones in all of these at once. A
*clip* then jitters the subject's values a little and draws the gesture's phase, the clutter's phase,
the overall brightness and the sensor noise.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from models.events.types import SensorSize
from models.synthetic.scenes import (
    BASE_PERIOD_S,
    GESTURES,
    Box,
    DriftTexture,
    Flicker,
    GestureScene,
    Motion,
    smooth_field,
)
from models.synthetic.simulator import NoiseParams

_REFERENCE_SIDE = 128.0  # sizes below are in pixels of a 128x128 sensor and scale with the sensor


@dataclass(frozen=True)
class SubjectStyle:
    """Everything that varies between subjects (see the module docstring)."""

    speed: float  # gesture frequency multiplier
    size: float  # forearm length, px at 128x128
    dx: float  # offset of the gesture centre from the sensor centre, px at 128x128
    dy: float
    contrast: float  # hand log intensity above the background mean
    shading: float  # limbs are this much darker (log units) at their rim
    bg_texture: float  # amplitude of the static background texture (log units)
    threshold_scale: float  # camera bias: scales every contrast threshold
    ba_rate_hz: float
    hot_pixels: int
    hot_rate_hz: float
    flicker: bool
    flicker_hz: float
    flicker_amp: float
    texture: bool
    texture_amp: float


def subject_style(
    seed: int, subject: int, noise_scale: float = 1.0, clutter_scale: float = 1.0
) -> SubjectStyle:
    """The style of ``subject`` in the dataset with ``seed``; ``*_scale`` = 0 switches noise / clutter off."""
    rng = np.random.default_rng([seed, 1, subject])
    return SubjectStyle(
        speed=float(rng.uniform(0.75, 1.3)),
        size=float(rng.uniform(22.0, 32.0)),
        dx=float(rng.uniform(-10.0, 10.0)),
        dy=float(rng.uniform(-8.0, 10.0)),
        contrast=float(rng.uniform(0.7, 1.4)),
        shading=float(rng.uniform(0.2, 0.6)),
        bg_texture=float(rng.uniform(0.08, 0.3)),
        threshold_scale=float(rng.uniform(0.85, 1.2)),
        ba_rate_hz=float(noise_scale * np.exp(rng.uniform(np.log(0.1), np.log(0.8)))),
        hot_pixels=int(np.rint(noise_scale * rng.integers(2, 9))),
        hot_rate_hz=float(rng.uniform(20.0, 80.0)),
        flicker=bool(rng.random() < 0.6 and clutter_scale > 0),
        flicker_hz=float(rng.uniform(3.0, 12.0)),
        flicker_amp=float(clutter_scale * rng.uniform(0.25, 0.6)),
        texture=bool(rng.random() < 0.6 and clutter_scale > 0),
        texture_amp=float(clutter_scale * rng.uniform(0.2, 0.45)),
    )


def _border_box(rng: np.random.Generator, sensor: SensorSize, bw: int, bh: int) -> Box:
    """A ``bw x bh`` box against a random side of the sensor, away from where people gesture."""
    w, h = sensor.width, sensor.height
    bw, bh = min(bw, w), min(bh, h)
    side = int(rng.integers(4))
    if side < 2:  # left / right
        x0 = 0 if side == 0 else w - bw
        y0 = int(rng.integers(0, h - bh + 1))
    else:  # top / bottom
        y0 = 0 if side == 2 else h - bh
        x0 = int(rng.integers(0, w - bw + 1))
    return (x0, y0, x0 + bw, y0 + bh)


def _texture(rng: np.random.Generator, sensor: SensorSize, amp: float, k: float) -> DriftTexture:
    n = 3
    size = rng.uniform(20.0, 34.0, 2) * k
    ang = rng.uniform(0.0, np.pi, n)
    freq = rng.uniform(0.25, 0.6, n) / k
    return DriftTexture(
        box=_border_box(rng, sensor, int(size[0]), int(size[1])),
        k=np.stack([freq * np.cos(ang), freq * np.sin(ang)], axis=1),
        amp=amp * rng.uniform(0.5, 1.0, n) / np.sqrt(n),
        phi=rng.uniform(0.0, 2.0 * np.pi, n),
        sway_px=(float(rng.uniform(2.0, 6.0) * k), float(rng.uniform(-2.0, 2.0) * k)),
        sway_period_s=float(rng.uniform(1.0, 3.0)),
    )


def clip_scene(
    label: int, style: SubjectStyle, sensor: SensorSize, room: np.random.Generator, rng: np.random.Generator
) -> GestureScene:
    """The scene of one clip of class ``label``.

    ``room`` draws what belongs to the subject's room (background texture, where the clutter is; pass
    a generator seeded by dataset seed and subject), ``rng`` what changes from clip to clip (position
    and size jitter, gesture phase, clutter phase, brightness).
    """
    k = min(sensor.width, sensor.height) / _REFERENCE_SIDE
    bg = style.bg_texture * (smooth_field(room, sensor, 6) + 0.5 * smooth_field(room, sensor, 20))
    flicker_side = int(room.uniform(10.0, 20.0) * k)
    flicker_box = _border_box(room, sensor, flicker_side, flicker_side)
    texture = _texture(room, sensor, style.texture_amp, k) if style.texture else None
    gesture = GESTURES[label]
    motion = Motion(
        gesture=gesture,
        cx=sensor.width / 2 + (style.dx + rng.uniform(-4.0, 4.0)) * k,
        cy=sensor.height / 2 + (style.dy + rng.uniform(-4.0, 4.0)) * k,
        size=style.size * k * float(rng.uniform(0.92, 1.08)),
        period_s=BASE_PERIOD_S[gesture] / style.speed * float(rng.uniform(0.9, 1.1)),
        phase=float(rng.random()),
    )
    level = float(rng.uniform(-0.5, 0.5))
    contrast = style.contrast * float(rng.uniform(0.9, 1.1))
    # Drawn whether or not the subject has clutter, so that switching clutter off leaves every other
    # random choice of the clip (noise included) as it was.
    flicker_jitter = float(rng.uniform(0.95, 1.05))
    flicker_phase, sway_phase = rng.uniform(0.0, 2.0 * np.pi, 2)
    flicker = None
    if style.flicker:
        flicker = Flicker(
            flicker_box, style.flicker_hz * float(flicker_jitter), style.flicker_amp, float(flicker_phase)
        )
    if texture is not None:
        texture = replace(texture, sway_phase=float(sway_phase))
    return GestureScene(
        sensor, motion, (level + bg).astype(np.float32), level + contrast, style.shading, flicker, texture
    )


def clip_noise(style: SubjectStyle) -> NoiseParams:
    """Sensor noise of a subject's recordings."""
    return NoiseParams(
        ba_rate_hz=style.ba_rate_hz, hot_pixels=style.hot_pixels, hot_rate_hz=style.hot_rate_hz
    )
