"""Recordings for ``POST /v1/classify``: decode an upload, check its size in timesteps, classify it.

Formats, recognised by their first bytes first and the file name second:

* AEDAT4 (``#!AER-DAT4.0``), read by dv-processing through :func:`models.events.read_events`;
* numpy ``.npy`` (``\\x93NUMPY``) and ``.npz`` (a zip archive), same reader;
* the wire format: the binary WebSocket packets' 13-byte records back to back (``.evt`` / ``.bin``,
  or ``format=wire``).

Classification runs a :class:`~service.session.Session` without a socket, through the engine and the
same scheduler as live streams: the same binner, the same step runner, the same readout, so the
result equals what streaming the events gives.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import numpy as np

from models.events.binner import BinnerConfig
from models.events.readers import read_events
from models.events.types import EVENT_BYTES, EVENT_DTYPE, EventError, SensorSize
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
    path: str, filename: str | None, declared: str | None = None
) -> tuple[np.ndarray, SensorSize | None]:
    """Events (and the sensor size when the file holds one) of an uploaded file at ``path``."""
    with open(path, "rb") as f:
        head = f.read(16)
    fmt = sniff_format(head, filename, declared)
    name = filename or "upload"
    if fmt == "wire":
        size = os.path.getsize(path)
        if size % EVENT_BYTES:
            raise RecordingError(
                "misaligned_packet",
                f"{name}: {size} bytes is not a whole number of {EVENT_BYTES}-byte event records "
                f"({size // EVENT_BYTES} records + {size % EVENT_BYTES} stray bytes)",
            )
        return np.fromfile(path, dtype=EVENT_DTYPE), None
    if fmt == "aedat4":
        _check_aedat4_header(path, name)
    # The readers pick the decoder by suffix: give the temp file the detected one.
    suffix = "." + fmt
    if path.endswith(suffix):
        return _read(path, name)
    fd, tmp = tempfile.mkstemp(suffix=suffix)
    os.close(fd)
    try:
        shutil.copyfile(path, tmp)
        return _read(tmp, name)
    finally:
        os.unlink(tmp)


def _check_aedat4_header(path: str, name: str) -> None:
    """Refuse a file whose AEDAT4 header is cut short before dv-processing sees it: its error path
    builds a C++ stack trace, which takes seconds (``#!AER-DAT4.0\\r\\n``, int32 size, ``IOHE``...)."""
    with open(path, "rb") as f:
        head = f.read(26)
    size = int.from_bytes(head[14:18], "little", signed=True) if len(head) >= 18 else -1
    if len(head) < 26 or head[22:26] != b"IOHE" or size <= 0 or os.path.getsize(path) < 18 + size:
        raise RecordingError("bad_file", f"{name}: not a readable AEDAT4 file (header missing or cut short)")


def _read(path: str, name: str) -> tuple[np.ndarray, SensorSize | None]:
    try:
        return read_events(path)
    except EventError as e:
        # the reader names the temp file; name the upload instead
        raise RecordingError(e.code, str(e).replace(path, name)) from None


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
