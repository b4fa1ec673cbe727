"""Events to frames: the one binning code shared by training (offline) and the live service.

A timestep is a fixed time bin of ``dt_us`` microseconds. Bin ``k`` covers
``[t0 + k*dt_us, t0 + (k+1)*dt_us)``; its frame counts the events per
``(polarity, y // ds, x // ds)``. Fixed-duration binning is the only form that works on a live
stream, and running the *same* :class:`FrameBinner` offline (:func:`encode_events`) is what makes
the same events give the same frames in training and in serving.

Frames are float32 arrays ``[2, H', W']`` with ``H' = ceil(H / ds)``, ``W' = ceil(W / ds)``:
channel 0 holds polarity 0 (OFF, brightness decrease), channel 1 polarity 1 (ON). The last row /
column of the frame gathers fewer sensor pixels when ``ds`` does not divide the sensor size.

Timeline rules (precise, because the live service depends on them):

* **Completion.** A bin is complete once an event with ``t >=`` its end has been pushed, or
  :meth:`FrameBinner.advance_to` was called with a time ``>=`` its end. Completed bins are emitted
  in order; the bin still open (the one the latest event fell into) is held back.
* **Gap cap.** Consecutive empty bins form a run. Of each run, only the first ``max_gap_bins`` are
  emitted (as zero frames); the rest are skipped and counted in ``skipped_bins``. The grid is never
  re-based: the next event still lands in its own bin ``(t - t0) // dt_us``, so a frame's time span
  is always on the ``t0`` grid. The run is counted across calls, so the same events give the same
  frames whether the gap was crossed by one packet or by many ``advance_to`` calls. Why a cap: a
  camera that goes quiet for an hour must not make the server allocate 240 000 frames; with
  ``beta = 0.3`` a LIF membrane is back at rest after a few dozen empty steps anyway.
* **Late events.** Events earlier than the open bin's start (before ``t_start``, or inside a bin
  already completed by ``advance_to``/``flush``) cannot be counted any more: they are dropped and
  counted in ``dropped_events``. Timestamps going backwards are an error (:class:`EventError`).
* **Flush.** :meth:`FrameBinner.flush` emits the open bin if and only if it holds at least one
  event, then moves the timeline one bin on (events later falling into the flushed span are late).
  With an empty open bin it does nothing: an empty partial bin carries no information.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np

from models.events.types import EVENT_DTYPE, MAX_T_US, SensorSize, validate_events

_CHUNK = 1 << 16  # events binned in one pass; larger packets are cut (see FrameBinner.push)


@dataclass(frozen=True)
class BinnerConfig:
    """How events become frames.

    ``dt_us``: bin width in microseconds. ``ds``: spatial downsampling, frame pixel
    ``(y // ds, x // ds)``. ``mode``: ``"count"`` (events per pixel) or ``"binary"`` (1 where any
    event fell). ``max_gap_bins``: most empty frames emitted per run of empty bins (see the module
    docstring); 0 never emits an empty frame.
    """

    sensor: SensorSize
    dt_us: int
    ds: int = 1
    mode: Literal["count", "binary"] = "count"
    max_gap_bins: int = 1000

    def __post_init__(self) -> None:
        if self.dt_us <= 0:
            raise ValueError(f"dt_us must be > 0, got {self.dt_us}")
        if self.ds < 1:
            raise ValueError(f"ds must be >= 1, got {self.ds}")
        if self.mode not in ("count", "binary"):
            raise ValueError(f"mode must be 'count' or 'binary', got {self.mode!r}")
        if self.max_gap_bins < 0:
            raise ValueError(f"max_gap_bins must be >= 0, got {self.max_gap_bins}")

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        """``(2, ceil(H / ds), ceil(W / ds))``."""
        return (2, -(-self.sensor.height // self.ds), -(-self.sensor.width // self.ds))


class TimedFrames(NamedTuple):
    """Frames with the stream time of each: ``frames[i]`` is the bin ``[t_start_us[i], t_start_us[i] + dt_us)``."""

    frames: np.ndarray  # [n, 2, H', W'] float32
    t_start_us: np.ndarray  # [n] int64


def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


class FrameBinner:
    """Stateful binner for one event stream; packets may be split anywhere.

    Attributes (read-only for callers): ``t0`` (grid origin, None until known), ``last_t``
    (timestamp of the last accepted event, the ``last_t`` of validation), ``bins_emitted``,
    ``skipped_bins`` (empty bins not emitted because of the gap cap), ``dropped_events`` (late
    events), ``open_bin_start`` (start of the open bin: everything before it has been emitted or
    skipped; None until ``t0`` is known).
    """

    def __init__(self, cfg: BinnerConfig, t_start: int | None = None) -> None:
        self.cfg = cfg
        self.t0: int | None = t_start
        self.last_t: int | None = None
        self.bins_emitted = 0
        self.skipped_bins = 0
        self.dropped_events = 0
        _, h, w = cfg.frame_shape
        self._hw = h * w
        self._lut_x = np.arange(cfg.sensor.width, dtype=np.intp) // cfg.ds
        self._lut_y = np.arange(cfg.sensor.height, dtype=np.intp) // cfg.ds * w
        self._lut_p = np.array([0, h * w], dtype=np.intp)
        self._check_pixels, self._count_into = _kernels()
        self._k_open = 0  # grid index of the open bin
        self._gap_run = 0  # empty frames emitted since the last non-empty bin
        self._acc = np.zeros(2 * h * w, dtype=np.int64)  # counts of the open bin, flat
        self._acc_n = 0  # events in the open bin
        shape = cfg.frame_shape
        self._no_frames = TimedFrames(_frozen(np.zeros((0, *shape), np.float32)), _frozen(np.zeros(0, np.int64)))

    def state_dict(self) -> dict[str, Any]:
        """Everything that makes this binner's future output: the grid, the open bin's counts, the
        gap run and the tallies (JSON scalars and one int64 array). :meth:`load_state_dict` of it
        gives a binner that continues identically (resumable sessions)."""
        return {
            "t0": self.t0,
            "last_t": self.last_t,
            "bins_emitted": self.bins_emitted,
            "skipped_bins": self.skipped_bins,
            "dropped_events": self.dropped_events,
            "k_open": self._k_open,
            "gap_run": self._gap_run,
            "acc_n": self._acc_n,
            "acc": self._acc.copy(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        acc = np.asarray(state["acc"])
        if acc.shape != self._acc.shape or acc.dtype != self._acc.dtype:
            raise ValueError(f"open-bin counts of shape {acc.shape} {acc.dtype}, this binner has {self._acc.shape}")
        ints = {k: state[k] for k in ("bins_emitted", "skipped_bins", "dropped_events", "k_open", "gap_run", "acc_n")}
        for k, v in (*ints.items(), ("t0", state["t0"]), ("last_t", state["last_t"])):
            if v is not None and (type(v) is not int or not 0 <= v <= MAX_T_US):
                raise ValueError(f"binner state {k}={v!r} is not an integer in 0..2^62")
        self.t0, self.last_t = state["t0"], state["last_t"]
        self.bins_emitted, self.skipped_bins = ints["bins_emitted"], ints["skipped_bins"]
        self.dropped_events = ints["dropped_events"]
        self._k_open, self._gap_run, self._acc_n = ints["k_open"], ints["gap_run"], ints["acc_n"]
        self._acc = acc.astype(np.int64, copy=True)

    @property
    def open_bin_start(self) -> int | None:
        """Start of the open bin: the stream time up to which frames are final."""
        return None if self.t0 is None else self.t0 + self._k_open * self.cfg.dt_us

    def push(self, events: np.ndarray) -> np.ndarray:
        """Add a packet; return the frames of every bin it completed, ``[n, 2, H', W']`` float32.

        Raises :class:`EventError` (from :func:`validate_events`) before touching any state, so a
        bad packet costs the stream nothing.
        """
        return self.push_timed(events).frames

    def push_timed(
        self, events: np.ndarray, *, validate: bool = True, pixels: np.ndarray | None = None
    ) -> TimedFrames:
        """:meth:`push`, also returning each frame's bin start (gap-cap skips make them non-consecutive).

        ``validate=False`` skips the validation, for a caller that has just checked these events
        against this binner (:meth:`check`, whose result it may pass as ``pixels``).
        """
        if validate:
            pixels = self.check(events)
        if events.size == 0:
            return self._empty()
        # Valid events cannot make anything below fail, so state may change from here on.
        if self.t0 is None:
            self.t0 = int(events["t"][0])
        self.last_t = int(events["t"][-1])
        if events.size <= _CHUNK:
            return self._timed(*self._add(events, pixels))
        # Cache-sized pieces run faster than one huge pass, and split invariance makes them equal.
        parts = [self._add(events[i : i + _CHUNK]) for i in range(0, events.size, _CHUNK)]
        return self._timed(np.concatenate([f for f, _ in parts]), np.concatenate([k for _, k in parts]))

    def check(self, events: np.ndarray) -> np.ndarray:
        """Validate a packet for this stream, as :func:`validate_events` with this binner's sensor and
        ``last_t`` does (raising the same :class:`EventError`, touching nothing), and return the flat
        frame index of each event (:meth:`push_timed`'s ``pixels``).

        The pixel look-up tables have the sensor's size, so looking an event up is its range check.
        One compiled pass (:func:`models.events.ingest.check_pixels`) checks and looks up every
        event; only a bad packet runs :func:`validate_events`, to name its fault.
        """
        if events.dtype == EVENT_DTYPE and events.ndim == 1 and events.size:
            pix = np.empty(events.size, dtype=np.intp)
            t_min = 0 if self.last_t is None else self.last_t
            if self._check_pixels(events, self._lut_x, self._lut_y, self._lut_p, t_min, MAX_T_US, pix):
                return pix
        validate_events(events, self.cfg.sensor, self.last_t)
        if events.size:  # validate_events and the checks above disagree: a bug, never a bad packet
            raise AssertionError("FrameBinner.check refused a packet that validate_events accepts")
        return np.zeros(0, dtype=np.intp)

    def _add(self, events: np.ndarray, pixels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Bin valid, non-empty events that do not go back in time; return the completed frames and
        their grid indices. ``pixels``: the events' flat frame indices, if known (:meth:`check`)."""
        cfg, t0 = self.cfg, self.t0
        assert t0 is not None
        t = events["t"]
        f, dt = self._acc.size, cfg.dt_us
        start = t0 + self._k_open * dt
        # t is sorted, so the late events are a prefix (none, in a live stream).
        first = 0 if int(t[0]) >= start else int(np.searchsorted(t, start, side="left"))
        self.dropped_events += first
        if first == t.size:
            return self._empty()
        ev = events[first:]
        pix = self._pixels(ev) if pixels is None else pixels[first:]
        k_last = (int(t[-1]) - t0) // dt
        if k_last == self._k_open:
            # The common live case, a packet shorter than a bin: it only adds to the open bin.
            self._count_into(pix, 0, pix.size, self._acc)
            self._acc_n += pix.size
            return self._empty()
        end = start + dt
        if k_last == self._k_open + 1 and (self._acc_n or int(t[first]) < end):
            # The other common live case: the packet completes the open bin (holding events, so no gap
            # rule applies) and ends in the next one. Same result as below, a third of the work.
            split = int(np.searchsorted(ev["t"], end, side="left"))
            acc = self._acc
            self._count_into(pix, 0, split, acc)
            frame = (acc > 0 if cfg.mode == "binary" else acc).astype(np.float32)
            ks = np.array([self._k_open], dtype=np.int64)
            acc.fill(0)  # the frame is a copy
            self._count_into(pix, split, pix.size, acc)
            self._acc_n = pix.size - split
            self._k_open = k_last
            self._gap_run = 0
            self.bins_emitted += 1
            return frame.reshape(1, *cfg.frame_shape), ks
        k = (ev["t"] - t0) // cfg.dt_us
        # Sorted bins: compact ids by counting changes, O(n) and no sort.
        change = k[1:] != k[:-1]
        j = np.concatenate(([0], np.cumsum(change)))
        bins = k[np.concatenate(([True], change))]
        pix += j * f
        counts = np.bincount(pix, minlength=bins.size * f).reshape(bins.size, f)
        if self._acc_n:
            if bins[0] == self._k_open:
                counts[0] += self._acc
            else:
                bins = np.concatenate(([self._k_open], bins))
                counts = np.concatenate((self._acc[None], counts))
        done = self._complete(int(bins[-1]), bins[:-1], counts[:-1])
        # bins[-1] > the old open bin here, so the new open bin holds only this packet's events.
        self._acc = counts[-1].copy()
        self._acc_n = ev.size - int(np.searchsorted(k, k[-1]))
        return done

    def advance_to(self, t_us: int) -> np.ndarray:
        """Complete every bin ending at or before ``t_us``: the stream promises no earlier events.

        Used by a live stream that has been silent for a while. Before ``t0`` is known there is no
        grid yet and nothing happens.
        """
        return self.advance_to_timed(t_us).frames

    def advance_to_timed(self, t_us: int) -> TimedFrames:
        """:meth:`advance_to`, also returning each frame's bin start."""
        if self.t0 is None:
            return self._empty()
        k_end = (int(t_us) - self.t0) // self.cfg.dt_us
        if k_end <= self._k_open:
            return self._empty()
        return self._timed(*self._complete_open(k_end))

    def flush(self) -> np.ndarray:
        """Emit the open bin if it holds any event and move on one bin; else do nothing."""
        return self.flush_timed().frames

    def flush_timed(self) -> TimedFrames:
        """:meth:`flush`, also returning the frame's bin start."""
        if not self._acc_n:
            return self._empty()
        return self._timed(*self._complete_open(self._k_open + 1))

    def _complete_open(self, k_end: int) -> tuple[np.ndarray, np.ndarray]:
        if self._acc_n:
            done = self._complete(k_end, np.array([self._k_open]), self._acc[None])
        else:
            done = self._complete(k_end, np.zeros(0, np.int64), self._acc[None][:0])
        self._acc = np.zeros_like(self._acc)
        self._acc_n = 0
        return done

    def _complete(self, k_end: int, bins: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Emit grid bins ``[k_open, k_end)``; ``bins`` (sorted) are the non-empty ones. Returns the
        frames ``[n, 2, H', W']`` and their grid indices ``[n]``.

        Gap arithmetic is per run of empty bins, not per bin, so a gap of a billion bins costs
        nothing.
        """
        cfg, m = self.cfg, bins.size
        edges = np.concatenate(([self._k_open - 1], bins, [k_end]))
        gaps = np.diff(edges) - 1  # empty bins before each non-empty bin, then trailing
        emit = np.minimum(gaps, cfg.max_gap_bins)
        emit[0] = min(int(gaps[0]), max(cfg.max_gap_bins - self._gap_run, 0))
        rows = np.cumsum(emit[:-1]) + np.arange(m)
        n = int(emit.sum()) + m
        out = np.zeros((n, self._acc.size), dtype=np.float32)
        if m:
            out[rows] = counts > 0 if cfg.mode == "binary" else counts
        # grid index of every row: the non-empty bins at ``rows``, each run's emitted empty bins right
        # after the bin before it
        ks = np.empty(n, dtype=np.int64)
        ks[rows] = bins
        if n > m:
            empty = np.ones(n, dtype=bool)
            empty[rows] = False
            run_start = np.repeat(edges[:-1] + 1, emit)
            ks[empty] = run_start + np.arange(n - m) - np.repeat(np.cumsum(emit) - emit, emit)
        self._gap_run = self._gap_run + int(emit[0]) if m == 0 else int(emit[-1])
        self.skipped_bins += int(gaps.sum() - emit.sum())
        self.bins_emitted += n
        self._k_open = k_end
        return out.reshape(n, *cfg.frame_shape), ks

    def _pixels(self, ev: np.ndarray) -> np.ndarray:
        """Flat frame index ``p*H'*W' + (y//ds)*W' + x//ds`` of each event, as intp."""
        # Table look-ups (take) beat casting and dividing three columns: fewer passes, no casts.
        pix = self._lut_y.take(ev["y"])
        pix += self._lut_x.take(ev["x"])
        pix += self._lut_p.take(ev["p"])
        return pix

    def _empty(self) -> TimedFrames:
        return self._no_frames

    def _timed(self, frames: np.ndarray, ks: np.ndarray) -> TimedFrames:
        if not len(ks):
            return self._no_frames
        assert self.t0 is not None
        return TimedFrames(frames, self.t0 + ks * self.cfg.dt_us)


@functools.cache
def _kernels() -> tuple[Any, Any]:
    """The compiled packet check and counter, imported with the first binner (numba is loaded only
    where a binner is used)."""
    from models.events.ingest import check_pixels, count_into

    return check_pixels, count_into


def split_by_bins(events: np.ndarray, t0: int, dt_us: int, bins: int) -> list[np.ndarray]:
    """Sorted ``events`` cut into consecutive pieces of at most ``bins`` non-empty bins each (bins
    counted on the grid ``t0 + k * dt_us``). The pieces follow the events, not the clock: a gap of
    any length between two events costs nothing here."""
    if events.size == 0:
        return []
    k = (events["t"] - t0) // dt_us  # timestamps are bounded (MAX_T_US), so this cannot overflow
    first_of_bin = np.flatnonzero(np.concatenate(([True], k[1:] != k[:-1])))
    return np.split(events, first_of_bin[bins::bins])


def encode_events(
    events: np.ndarray,
    cfg: BinnerConfig,
    t_start: int | None = None,
    t_end: int | None = None,
    num_bins: int | None = None,
) -> np.ndarray:
    """Encode a whole recording to ``[T, 2, H', W']`` float32 with :class:`FrameBinner`.

    Events outside ``[t_start, t_end)`` are left out. With ``t_end`` the output covers every bin
    that starts before ``t_end`` (the last one possibly cut short), empty or not, subject to the gap
    cap; without it, it ends with the bin of the last event. ``num_bins`` then cuts the result or
    pads it with zero frames at the end, so a dataset gets a fixed T.
    """
    binner = FrameBinner(cfg, t_start)
    if t_end is not None:
        validate_events(events, cfg.sensor)  # the cut below needs sorted timestamps
        events = events[: int(np.searchsorted(events["t"], t_end, side="left"))]
    parts = [binner.push(events)]
    if t_end is None:
        parts.append(binner.flush())
    elif binner.t0 is not None:
        # The bin holding t_end - 1 is complete too: the cut promised no more events.
        n_bins = -(-(t_end - binner.t0) // cfg.dt_us)
        parts.append(binner.advance_to(binner.t0 + n_bins * cfg.dt_us))
    frames = np.concatenate(parts)
    if num_bins is not None:
        if frames.shape[0] >= num_bins:
            frames = frames[:num_bins]
        else:
            pad = np.zeros((num_bins - frames.shape[0], *cfg.frame_shape), dtype=np.float32)
            frames = np.concatenate((frames, pad))
    return frames
