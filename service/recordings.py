"""Recordings for ``POST /v1/classify``: decode an upload, check its size in timesteps, classify it.

Formats, recognised by their first bytes first and the file name second:

* AEDAT4 (``#!AER-DAT4.0``), read by dv-processing;
* numpy ``.npy`` (``\\x93NUMPY``) and ``.npz`` (a zip archive);
* the wire format: the binary WebSocket packets' 13-byte records back to back (``.evt`` / ``.bin``,
  or ``format=wire``);

all decoded from memory by :func:`models.events.readers.read_events_bytes`.

Classification runs a :class:`~service.session.Session` without a socket, through the engine and the
same scheduler as live streams: the same binner, the same step runner, the same readout, so the
result equals what streaming the events gives.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from models.events.binner import BinnerConfig
from models.events.readers import read_events_bytes
from models.events.types import EventError, SensorSize
from service.engine import Engine, ModelWorker
from service.session import Session, SessionConfig

FORMATS = ("aedat4", "npy", "npz", "wire")
_SUFFIX = {
    ".aedat4": "aedat4",
    ".npy": "npy",
    ".npz": "npz",
    ".evt": "wire",
    ".bin": "wire",
    ".events": "wire",
}


class RecordingError(ValueError):
    """An upload that is not a usable recording; ``status`` is the HTTP status to answer with."""

    def __init__(self, code: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def sniff_format(head: bytes, filename: str | None, declared: str | None = None) -> str:
    if declared is not None:
        if declared not in FORMATS:
            raise RecordingError("unknown_format", f"format {declared!r} is not one of {list(FORMATS)}")
        return declared
    if head.startswith(b"#!AER-DAT4"):
        return "aedat4"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"PK\x03\x04"):
        return "npz"
    suffix = os.path.splitext(filename or "")[1].lower()
    if suffix in _SUFFIX:
        return _SUFFIX[suffix]
    raise RecordingError(
        "unknown_format",
        f"{filename or 'upload'}: not an event recording (expected AEDAT4, numpy .npy/.npz, or the 13-byte "
        "wire format with a .evt/.bin name or format=wire)",
        415,
    )


def decode_recording(
    data: bytes, filename: str | None, declared: str | None = None
) -> tuple[np.ndarray, SensorSize | None]:
    """Events (and the sensor size when the recording holds one) of an uploaded recording."""
    fmt = sniff_format(data[:16], filename, declared)
    suffix = ".evt" if fmt == "wire" else "." + fmt
    try:
        return read_events_bytes(data, suffix, filename or "upload")
    except EventError as e:
        raise RecordingError(e.code, str(e)) from None


def count_steps(events: np.ndarray, cfg: BinnerConfig, t_start: int | None = None) -> int:
    """Exactly how many timesteps binning ``events`` (then flushing) emits, without binning them."""
    if events.size == 0:
        return 0
    t = events["t"]
    t0 = int(t[0]) if t_start is None else t_start
    t = t[t >= t0]
    if t.size == 0:
        return 0
    k = np.unique((t - t0) // cfg.dt_us)
    gaps = np.diff(np.concatenate(([-1], k))) - 1
    return int(k.size + np.minimum(gaps, cfg.max_gap_bins).sum())


async def classify_events(
    engine: Engine, worker: ModelWorker, cfg: SessionConfig, events: np.ndarray, keep_steps: bool = False
) -> dict[str, Any]:
    """Run a whole recording through a socket-less session; return its summary (+ steps if asked)."""
    session = Session(engine, worker, cfg, stream=False, keep_steps=keep_steps)
    await session.open()
    try:
        await session.feed(events)
        result = await session.finish()
    finally:
        await session.close()
    if keep_steps:
        result["step_predictions"] = session.step_log
    return result
