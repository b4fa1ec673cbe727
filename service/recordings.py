"""Recordings for ``POST /v1/classify``: recognise an upload's format, classify its events.

Formats, recognised by their first bytes first and the file name second:

* AEDAT4 (``#!AER-DAT4.0``), read by dv-processing;
* numpy ``.npy`` (``\\x93NUMPY``) and ``.npz`` (a zip archive);
* the wire format: the binary WebSocket packets' 13-byte records back to back (``.evt`` / ``.bin``,
  or ``format=wire``);

all decoded in a separate, killable process by :class:`service.decoding.Decoder` (which also checks
the events and counts their timesteps), never in the server process.

Classification runs a :class:`~service.session.Session` without a socket, through the engine and the
same scheduler as live streams: the same binner, the same step runner, the same readout, so the
result equals what streaming the events gives.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from service.decoding import RecordingError
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


async def classify_events(
    engine: Engine, worker: ModelWorker, cfg: SessionConfig, events: np.ndarray, keep_steps: bool = False
) -> dict[str, Any]:
    """Run a whole recording through a socket-less session; return its summary (+ steps if asked).
    ``events`` were checked against the session's sensor by the decoder."""
    session = Session(engine, worker, cfg, stream=False, keep_steps=keep_steps)
    await session.open()
    try:
        await session.feed(events, validated=True)
        result = await session.finish()
    finally:
        await session.close()
    if keep_steps:
        result["step_predictions"] = session.step_log
    return result
