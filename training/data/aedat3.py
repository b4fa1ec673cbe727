"""AEDAT 3.1 files (cAER / libcaer), as in the original DVS128 Gesture release: reader and writer.

What is implemented, exactly (iniVation's AEDAT 3.1 specification and libcaer ``events/common.h``,
``events/polarity.h``):

* **Header**: text lines, each starting with ``#`` and ending with ``\\r\\n`` (a bare ``\\n`` is also
  accepted). The first line must be ``#!AER-DAT3.1``; the header ends with the line
  ``#!END-HEADER``. Other lines (``#Format: RAW``, ``#Source 1: DVS128``, ``#Start-Time: ...``) are
  skipped. A line not starting with ``#`` before ``#!END-HEADER`` is an error.
* **Packets**, back to back up to the end of the file, each a 28-byte little-endian header

  ==============  =====  ======  ============================================================
  field           type   offset  meaning
  ==============  =====  ======  ============================================================
  eventType       int16  0       1 = polarity; every other type is skipped
  eventSource     int16  2       source id (ignored: all sources are merged)
  eventSize       int32  4       bytes per event (polarity: 8)
  eventTSOffset   int32  8       byte offset of the int32 timestamp inside an event (polarity: 4)
  eventTSOverflow int32  12      high part of the timestamps of this packet
  eventCapacity   int32  16      events the packet could hold (in files = eventNumber; ignored)
  eventNumber     int32  20      events stored, valid and invalid
  eventValid      int32  24      valid events among them (not trusted: the valid bits decide)
  ==============  =====  ======  ============================================================

  followed by ``eventNumber * eventSize`` bytes of events.
* **Polarity event** (8 bytes): ``uint32 data`` then ``int32 timestamp`` (microseconds). In ``data``:
  bit 0 = valid mark, bit 1 = polarity (1 = ON), bits 2-16 = y (15 bits), bits 17-31 = x (15 bits).
  Full timestamp = ``(eventTSOverflow << 31) | timestamp``. Events whose valid mark is 0 are dropped.
  A polarity packet with ``eventSize != 8`` or ``eventTSOffset != 4`` is an error.

:func:`read_aedat3` returns the valid polarity events as an ``EVENT_DTYPE`` array, sorted by ``t``
(a stable sort, which leaves a well-formed recording in file order), timestamps as in the file.
:func:`write_aedat3` lays the bytes out exactly as above (used by the tests to make real-format files).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from models.events.types import EVENT_DTYPE

from ._common import DatasetError, require_file, sort_by_time

MAGIC = b"#!AER-DAT3.1"
END_HEADER = b"#!END-HEADER"
PACKET_HEADER = struct.Struct("<hhiiiiii")  # 28 bytes
POLARITY_EVENT = 1
POLARITY_SIZE = 8
POLARITY_TS_OFFSET = 4
TS_OVERFLOW_SHIFT = 31
ADDR_MASK = 0x7FFF  # 15-bit addresses

_POLARITY_DTYPE = np.dtype([("data", "<u4"), ("ts", "<i4")])


def _header_end(data: bytes, path: Path) -> int:
    """Byte offset of the first packet."""
    nl = data.find(b"\n", 0, 256)
    first = data[: nl + 1] if nl >= 0 else data[:256]
    if first.rstrip(b"\r\n") != MAGIC:
        shown = first.rstrip(b"\r\n")[:40]
        raise DatasetError(
            "not_aedat3", path, f"not an AEDAT 3.1 file: first line is {shown!r}, expected {MAGIC!r}"
        )
    pos = len(first)
    while pos < len(data):
        nl = data.find(b"\n", pos)
        line = data[pos : len(data) if nl < 0 else nl + 1]
        if not line.startswith(b"#"):
            break
        pos += len(line)
        if line.startswith(END_HEADER):
            return pos
    raise DatasetError("bad_header", path, f"AEDAT 3.1 header has no {END_HEADER.decode()!r} line")


def read_aedat3(path: str | os.PathLike[str]) -> np.ndarray:
    """Valid polarity events of an AEDAT 3.1 file, ``EVENT_DTYPE``, sorted by ``t``."""
    path = require_file(Path(path), "AEDAT 3.1 file")
    data = path.read_bytes()
    pos = _header_end(data, path)
    chunks: list[np.ndarray] = []
    overflows: list[int] = []
    n = len(data)
    while pos < n:
        if n - pos < PACKET_HEADER.size:
            raise DatasetError(
                "truncated",
                path,
                f"truncated packet header at byte {pos}: {n - pos} bytes left, "
                f"a header has {PACKET_HEADER.size}",
            )
        etype, _source, esize, ts_offset, overflow, _capacity, number, _valid = PACKET_HEADER.unpack_from(
            data, pos
        )
        if esize <= 0 or number < 0:
            raise DatasetError(
                "bad_packet",
                path,
                f"bad packet header at byte {pos}: eventSize={esize}, eventNumber={number}",
            )
        body = pos + PACKET_HEADER.size
        end = body + number * esize
        if end > n:
            raise DatasetError(
                "truncated",
                path,
                f"truncated packet at byte {pos}: {number} events of {esize} bytes announced, "
                f"{n - body} bytes left",
            )
        if etype == POLARITY_EVENT and number:
            if esize != POLARITY_SIZE or ts_offset != POLARITY_TS_OFFSET:
                raise DatasetError(
                    "bad_packet",
                    path,
                    f"polarity packet at byte {pos} has eventSize={esize}, eventTSOffset={ts_offset} "
                    f"(expected {POLARITY_SIZE}, {POLARITY_TS_OFFSET})",
                )
            chunks.append(np.frombuffer(data, _POLARITY_DTYPE, count=number, offset=body))
            overflows.append(overflow)
        pos = end
    if not chunks:
        return np.empty(0, EVENT_DTYPE)
    raw = np.concatenate(chunks)
    high = np.repeat(np.asarray(overflows, np.int64), [c.size for c in chunks])
    keep = (raw["data"] & 1).astype(bool)
    raw, high = raw[keep], high[keep]
    word = raw["data"]
    events = np.empty(raw.size, EVENT_DTYPE)
    events["t"] = (high << TS_OVERFLOW_SHIFT) | raw["ts"].astype(np.int64)
    events["x"] = (word >> 17) & ADDR_MASK
    events["y"] = (word >> 2) & ADDR_MASK
    events["p"] = (word >> 1) & 1
    return sort_by_time(events)


def write_aedat3(
    path: str | os.PathLike[str],
    events: np.ndarray,
    packet_size: int = 4096,
    *,
    valid: np.ndarray | None = None,
    source_id: int = 1,
    source_name: str = "DVS128",
) -> Path:
    """Write ``events`` (``EVENT_DTYPE``, in the given order) as an AEDAT 3.1 file of polarity packets.

    A packet holds at most ``packet_size`` events and never mixes two values of ``t >> 31``.
    ``valid`` (bool a event, default all true) sets the valid marks, so that files with invalid
    events can be made. Returns the path.
    """
    if events.dtype != EVENT_DTYPE:
        raise ValueError(f"events must have dtype {EVENT_DTYPE}, got {events.dtype}")
    if packet_size < 1:
        raise ValueError(f"packet_size must be >= 1, got {packet_size}")
    t = events["t"]
    if t.size and (t.min() < 0 or t.max() >= 1 << 62):
        raise ValueError("timestamps must be in 0 .. 2**62 - 1 us")
    if t.size and (events["x"].max() > ADDR_MASK or events["y"].max() > ADDR_MASK):
        raise ValueError("x and y must fit in 15 bits")
    if t.size and events["p"].max() > 1:
        raise ValueError("polarity must be 0 or 1")
    mark = np.ones(t.size, bool) if valid is None else np.asarray(valid, bool)
    if mark.shape != t.shape:
        raise ValueError(f"valid must have shape {t.shape}, got {mark.shape}")

    records = np.empty(t.size, _POLARITY_DTYPE)
    records["data"] = (
        (events["x"].astype(np.uint32) << 17)
        | (events["y"].astype(np.uint32) << 2)
        | (events["p"].astype(np.uint32) << 1)
        | mark.astype(np.uint32)
    )
    records["ts"] = (t & 0x7FFFFFFF).astype(np.int32)
    high = t >> TS_OVERFLOW_SHIFT

    header = f"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source {source_id}: {source_name}\r\n#!END-HEADER\r\n"
    starts = np.flatnonzero(np.diff(high)) + 1
    runs = zip(np.r_[0, starts].astype(int), np.r_[starts, t.size].astype(int), strict=True)
    path = Path(path)
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        for lo, hi in runs:
            for a in range(lo, hi, packet_size):
                b = min(a + packet_size, hi)
                f.write(
                    PACKET_HEADER.pack(
                        POLARITY_EVENT,
                        source_id,
                        POLARITY_SIZE,
                        POLARITY_TS_OFFSET,
                        int(high[a]),
                        b - a,
                        b - a,
                        int(mark[a:b].sum()),
                    )
                )
                f.write(records[a:b].tobytes())
    return path
