"""The event record and its validation.

An event is ``(t, x, y, p)``: timestamp in microseconds (int64), pixel column ``x`` and row ``y``
(uint16), polarity ``p`` (uint8, 1 = brightness increase, 0 = decrease). The numpy dtype is packed and
little-endian, 13 bytes a record, so the same bytes serve as the wire format of ``WS /ws/infer``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EVENT_DTYPE = np.dtype([("t", "<i8"), ("x", "<u2"), ("y", "<u2"), ("p", "u1")])
EVENT_BYTES = EVENT_DTYPE.itemsize  # 13
# Latest timestamp accepted (about 146,000 years): differences of two stream times, and a grid origin
# plus a timestep count times dt, then stay inside int64.
MAX_T_US = 1 << 62


@dataclass(frozen=True)
class SensorSize:
    """Sensor resolution in pixels."""

    width: int
    height: int

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0 or self.width > 65535 or self.height > 65535:
            raise ValueError(f"sensor size must be in 1..65535, got {self.width}x{self.height}")


class EventError(ValueError):
    """Events that cannot be accepted. ``code`` is a short machine-readable reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def make_events(t, x, y, p) -> np.ndarray:
    """Build an event array from four equally long sequences."""
    t = np.asarray(t)
    ev = np.empty(t.shape[0], dtype=EVENT_DTYPE)
    ev["t"], ev["x"], ev["y"], ev["p"] = t, x, y, p
    return ev


def validate_events(events: np.ndarray, sensor: SensorSize, last_t: int | None = None) -> None:
    """Raise :class:`EventError` naming the first thing wrong with ``events``.

    ``last_t`` is the timestamp of the last event already accepted on this stream; timestamps must
    not go below it and must be non-decreasing inside the array.
    """
    if events.dtype != EVENT_DTYPE:
        raise EventError("bad_dtype", f"events must have dtype {EVENT_DTYPE}, got {events.dtype}")
    if events.ndim != 1:
        raise EventError("bad_shape", f"events must be a 1-D record array, got shape {events.shape}")
    if events.size == 0:
        return
    x, y, p, t = events["x"], events["y"], events["p"], events["t"]
    # Fast path for the common case; the searches below only run to name what is wrong.
    if (
        int(x.max()) < sensor.width
        and int(y.max()) < sensor.height
        and int(p.max()) <= 1
        and t[0] >= 0
        and t[-1] <= MAX_T_US
        and (last_t is None or t[0] >= last_t)
        and (t.size == 1 or bool((t[1:] >= t[:-1]).all()))
    ):
        return
    bad = np.flatnonzero((x >= sensor.width) | (y >= sensor.height))
    if bad.size:
        i = int(bad[0])
        raise EventError(
            "out_of_range",
            f"{bad.size} event(s) outside the {sensor.width}x{sensor.height} sensor, "
            f"first at index {i}: x={int(x[i])}, y={int(y[i])}",
        )
    bad = np.flatnonzero(p > 1)
    if bad.size:
        raise EventError("bad_polarity", f"polarity must be 0 or 1, got {int(p[bad[0]])} at index {int(bad[0])}")
    if t[0] < 0:
        raise EventError("negative_time", f"timestamps must be >= 0, got {int(t[0])}")
    back = np.flatnonzero(np.diff(t) < 0)
    if not back.size and t[-1] > MAX_T_US:
        raise EventError("time_out_of_range", f"timestamps must be <= {MAX_T_US} us (2^62), got {int(t[-1])}")
    if back.size:
        i = int(back[0])
        raise EventError(
            "unsorted",
            f"timestamps go backwards inside the packet at index {i + 1}: {int(t[i])} -> {int(t[i + 1])} us",
        )
    if last_t is not None and t[0] < last_t:
        raise EventError(
            "time_backwards",
            f"packet starts at {int(t[0])} us, before the last accepted event at {last_t} us",
        )
