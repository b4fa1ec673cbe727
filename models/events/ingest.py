"""The live binner's per-packet check in one compiled pass (:meth:`FrameBinner.check`).

A live stream sends a packet every few milliseconds, and the service's event loop checks each one.
With numpy that is a dozen small array operations a packet (three field views, three look-ups, the
time-order test), each paying numpy's per-call cost on a few hundred events; one compiled pass does
the same checks and look-ups (docs/performance.md, "Service": what it changed end to end).
"""

from __future__ import annotations

import numpy as np

from models.events.types import EVENT_DTYPE, MAX_T_US
from models.jit import kernel


@kernel
def check_pixels(events, lut_x, lut_y, lut_p, t_min, t_max, pix):  # pragma: no cover - compiled
    """True when every event has ``t_min <= t <= t_max``, non-decreasing times and a column, row
    and polarity inside the look-up tables; then ``pix[i]`` is event ``i``'s flat frame index
    ``lut_y[y] + lut_x[x] + lut_p[p]``. False at the first event that fails (``pix`` partly written)."""
    prev = t_min
    for i in range(events.shape[0]):
        e = events[i]
        t = e.t
        if t < prev or t > t_max or e.x >= lut_x.shape[0] or e.y >= lut_y.shape[0] or e.p >= lut_p.shape[0]:
            return False
        prev = t
        pix[i] = lut_y[e.y] + lut_x[e.x] + lut_p[e.p]
    return True


@kernel
def count_into(pix, lo, hi, acc):  # pragma: no cover - compiled
    """``acc[pix[i]] += 1`` for ``lo <= i < hi``: a packet's events counted into the open bin."""
    for i in range(lo, hi):
        acc[pix[i]] += 1


def warm_up() -> None:
    """Compile (or load from the cache) both variants a service meets: packets decoded from bytes
    (read-only arrays) and arrays built in memory."""
    lut = np.zeros(2, np.intp)
    writable = np.zeros(1, EVENT_DTYPE)
    readonly = np.frombuffer(writable.tobytes(), EVENT_DTYPE)
    pix = np.zeros(1, np.intp)
    for ev in (writable, readonly):
        check_pixels(ev, lut, lut, lut, 0, MAX_T_US, pix)
    count_into(pix, 0, 1, np.zeros(2, np.int64))


__all__ = ["check_pixels", "count_into", "warm_up"]
