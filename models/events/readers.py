"""Event files in and out: AEDAT4 (through dv-processing), numpy ``.npy`` / ``.npz`` and the wire
format (``.evt`` / ``.bin`` / ``.events``: 13-byte :data:`EVENT_DTYPE` records back to back, the
binary packets of ``WS /ws/infer``).

:func:`read_events` reads a file, :func:`read_events_bytes` the same formats from memory (an upload):
numpy and wire records are decoded in memory; AEDAT4 goes through a temporary file, because
dv-processing opens only paths ending in ``.aedat4``. Before dv-processing sees an AEDAT4 file its
header is checked (``#!AER-DAT4.0\r\n``, the header size, an ``IOHE`` header that fits the file): a
file that is no AEDAT4 at all is refused at once, where dv-processing takes seconds to build the C++
stack trace of its error.

Every reader returns events in :data:`EVENT_DTYPE`, checked by :func:`validate_events` (sorted,
polarity 0/1, inside the sensor), so what comes out can go straight into a :class:`FrameBinner`.
Every failure is an :class:`EventError` whose message starts with the file name: a recording
uploaded to the service must produce an error a person can act on, never a traceback from numpy
or from C++.

numpy layouts accepted (integer or bool fields of any width; values must fit EVENT_DTYPE):

* ``.npy``: a structured array with fields ``t, x, y, p``, or an ``(N, 4)`` integer array with
  columns ``t, x, y, p``. A ``.npy`` cannot hold the sensor size.
* ``.npz``: key ``events`` holding either of the above, or keys ``t``, ``x``, ``y``, ``p``;
  optional key ``sensor`` = ``[width, height]``.

Pickled objects are refused (``allow_pickle=False``): these files may come from the network.
``max_events`` bounds what a reader may allocate: an array's size is checked from its ``.npy``
header (every member of an ``.npz``) before numpy allocates it, at 32 bytes an event (the widest
layout accepted), so a small compressed file cannot expand to gigabytes; AEDAT4 and wire recordings
are counted as they are read.
"""

from __future__ import annotations

import io
import math
import os
import re
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import dv_processing as dv
import numpy as np

from models.events.types import EVENT_BYTES, EVENT_DTYPE, EventError, SensorSize, make_events, validate_events

PathLike = str | os.PathLike[str]

_FIELDS = ("t", "x", "y", "p")
# Upper bounds of the EVENT_DTYPE fields, checked before casting so nothing wraps around.
_MAX = {"t": np.iinfo(np.int64).max, "x": 65535, "y": 65535, "p": 255}
# dv-processing stores coordinates as int16.
_DV_MAX_SIDE = 32767
_CPP_LOCATION = re.compile(r"^\S+\.[ch]pp\(\d+\): ")


def read_events(path: PathLike) -> tuple[np.ndarray, SensorSize | None]:
    """Read a recording; return ``(events, sensor)``, ``sensor`` None where the file has none."""
    p = Path(path)
    if not p.is_file():
        raise EventError("not_found", f"{p}: no such file")
    suffix = _suffix(p.suffix, str(p))
    if suffix == ".aedat4" and p.suffix != ".aedat4":
        raise EventError("unknown_format", f"{p}: dv-processing only opens names ending in '.aedat4'")
    if suffix == ".aedat4":
        with open(p, "rb") as f:
            _check_aedat4_header(f.read(_AEDAT4_HEAD), p.stat().st_size, str(p))
        events, sensor = _read_aedat4(p, str(p), _UNLIMITED)
    else:
        events, sensor = _READERS[suffix](p, str(p), _UNLIMITED)
    return _checked(events, sensor, str(p))


def read_events_bytes(
    data: bytes, suffix: str, name: str = "<bytes>", max_events: int | None = None
) -> tuple[np.ndarray, SensorSize | None]:
    """:func:`read_events` for a recording in memory: ``suffix`` names the format (``.aedat4``,
    ``.npy``, ``.npz``, ``.evt``/``.bin``/``.events``), ``name`` starts every error message,
    ``max_events`` bounds what is decoded (see the module docstring; ``too_many_events``).

    Only AEDAT4 touches the disk (a temporary file, deleted before returning).
    """
    suffix = _suffix(suffix, name)
    budget = _Budget(name, max_events)
    if suffix != ".aedat4":
        events, sensor = _READERS[suffix](io.BytesIO(data), name, budget)
        return _checked(events, sensor, name)
    _check_aedat4_header(data[:_AEDAT4_HEAD], len(data), name)
    with tempfile.TemporaryDirectory(prefix="asasnn-aedat4-") as tmp:
        path = Path(tmp) / "recording.aedat4"
        path.write_bytes(data)
        events, sensor = _read_aedat4(path, name, budget)
    return _checked(events, sensor, name)


class _Budget:
    """How many events (and bytes of decoded arrays, 32 an event) a read may produce."""

    BYTES_PER_EVENT = 32

    def __init__(self, name: str, max_events: int | None) -> None:
        self.name, self.max_events = name, max_events

    def events(self, n: int) -> None:
        if self.max_events is not None and n > self.max_events:
            raise EventError(
                "too_many_events", f"{self.name}: {n} events exceed the limit of {self.max_events} per recording"
            )

    def array(self, shape: tuple[int, ...], dtype: np.dtype, what: str) -> None:
        """Refuse an array by its header, before it is allocated."""
        if self.max_events is None:
            return
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > self.max_events * self.BYTES_PER_EVENT:
            raise EventError(
                "too_many_events",
                f"{self.name}: {what} declares {nbytes} bytes ({shape} of {dtype}), more than "
                f"{self.max_events} events can take",
            )


_UNLIMITED = _Budget("", None)


def _suffix(suffix: str, name: str) -> str:
    s = suffix.lower()
    if s not in _READERS and s != ".aedat4":
        known = " ".join(sorted([*_READERS, ".aedat4"]))
        raise EventError("unknown_format", f"{name}: unknown event file suffix {suffix!r} (known: {known})")
    return s


def _checked(
    events: np.ndarray, sensor: SensorSize | None, name: str
) -> tuple[np.ndarray, SensorSize | None]:
    try:
        # Without a sensor size only order and polarity can be checked: x, y fit by construction.
        validate_events(events, sensor or _bounding_sensor(events))
    except EventError as e:
        raise EventError(e.code, f"{name}: {e}") from None
    return events, sensor


# "#!AER-DAT4.0\r\n" (14 bytes), int32 size of the header that follows, then its FlatBuffers table,
# whose identifier "IOHE" sits at bytes 22..25 of the file.
_AEDAT4_MAGIC = b"#!AER-DAT4"
_AEDAT4_HEAD = 26


def _check_aedat4_header(head: bytes, size: int, name: str) -> None:
    """Refuse what cannot be an AEDAT4 file before dv-processing sees it: its error path builds a C++
    stack trace, which takes seconds."""
    n = int.from_bytes(head[14:18], "little", signed=True) if len(head) >= 18 else -1
    if not head.startswith(_AEDAT4_MAGIC) or len(head) < _AEDAT4_HEAD or head[22:26] != b"IOHE" or n <= 0:
        raise EventError("bad_file", f"{name}: not an AEDAT4 file (no AEDAT4 header)")
    if size < 18 + n:
        raise EventError("bad_file", f"{name}: not a readable AEDAT4 file (header cut short)")


def write_aedat4(
    path: PathLike, events: np.ndarray, sensor: SensorSize, *, packet_size: int = 100_000
) -> None:
    """Write events as an AEDAT4 file with dv-processing's own writer (one event stream).

    ``packet_size``: events per file packet, the unit dv-processing compresses and reads back.
    """
    p = Path(path)
    if p.suffix != ".aedat4":
        # dv-processing aborts the whole process (C++ terminate) on any other suffix.
        raise ValueError(f"{p}: an AEDAT4 file must end in lowercase '.aedat4'")
    validate_events(events, sensor)
    if sensor.width > _DV_MAX_SIDE or sensor.height > _DV_MAX_SIDE:
        raise ValueError(f"{p}: AEDAT4 stores coordinates as int16; sensor {sensor} is too large")
    cfg = dv.io.MonoCameraWriter.EventOnlyConfig("asasnn", (sensor.width, sensor.height))
    try:
        writer = dv.io.MonoCameraWriter(str(p), cfg)
    except RuntimeError as e:
        raise OSError(f"{p}: cannot write AEDAT4 ({_dv_reason(e)})") from None
    # dv-processing has no bulk constructor from numpy; one Event per record (~1 us each).
    for i in range(0, events.size, packet_size):
        chunk = events[i : i + packet_size]
        columns = (chunk["t"].tolist(), chunk["x"].tolist(), chunk["y"].tolist(), (chunk["p"] == 1).tolist())
        writer.writeEventPacket(dv.EventPacket(dv.EventPacket.EventVector(map(dv.Event, *columns))))
    # The file is completed and closed when the writer is destroyed.
    del writer


def write_numpy(path: PathLike, events: np.ndarray, sensor: SensorSize | None = None) -> None:
    """Write events as ``.npy`` (events only) or ``.npz`` (``events`` and optional ``sensor``)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise ValueError(f"{p}: write_numpy writes .npy or .npz, not {p.suffix!r}")
    validate_events(events, sensor or _bounding_sensor(events))
    if suffix == ".npy" and sensor is not None:
        raise ValueError(f"{p}: a .npy file cannot hold the sensor size; write .npz instead")
    # A file object stops numpy from appending its own suffix.
    with open(p, "wb") as f:
        if suffix == ".npy":
            np.save(f, events, allow_pickle=False)
        elif sensor is None:
            np.savez(f, events=events)
        else:
            np.savez(f, events=events, sensor=np.array([sensor.width, sensor.height], dtype=np.int64))


def _read_aedat4(p: Path, name: str, budget: _Budget) -> tuple[np.ndarray, SensorSize | None]:
    try:
        rec = dv.io.MonoCameraRecording(str(p))
        if not rec.isEventStreamAvailable():
            streams = ", ".join(rec.getStreamNames())
            raise EventError("bad_file", f"{name}: AEDAT4 file has no event stream (streams: {streams})")
        resolution = rec.getEventResolution()
        batches, n = [], 0
        while (batch := rec.getNextEventBatch()) is not None:
            batches.append(batch.numpy())
            n += batches[-1].size
            budget.events(n)
    except RuntimeError as e:
        raise EventError("bad_file", f"{name}: not a readable AEDAT4 file ({_dv_reason(e)})") from None
    sensor = SensorSize(*resolution) if resolution is not None else None
    if not batches:
        return np.zeros(0, EVENT_DTYPE), sensor
    raw = np.concatenate(batches)
    return _from_columns(name, raw["timestamp"], raw["x"], raw["y"], raw["polarity"]), sensor


Source = Path | IO[bytes]


def _read_npy(src: Source, name: str, budget: _Budget) -> tuple[np.ndarray, SensorSize | None]:
    arr = _np_load(src, name, ".npy", budget)
    if not isinstance(arr, np.ndarray):
        arr.close()
        raise EventError("bad_file", f"{name}: holds an .npz archive, not a .npy array")
    return _from_array(name, arr), None


def _read_npz(src: Source, name: str, budget: _Budget) -> tuple[np.ndarray, SensorSize | None]:
    arr = _np_load(src, name, ".npz", budget)
    if isinstance(arr, np.ndarray):
        raise EventError("bad_file", f"{name}: holds a single .npy array, not an .npz archive")
    with arr as z:
        keys = set(z.files)
        if "events" in keys:
            events = _from_array(name, _npz_entry(name, z, "events"))
        elif keys.issuperset(_FIELDS):
            events = _from_columns(name, *(_npz_entry(name, z, k) for k in _FIELDS))
        else:
            found = ", ".join(sorted(keys))
            raise EventError("bad_file", f"{name}: .npz needs key 'events' or keys t, x, y, p; found {found}")
        sensor = _sensor(name, _npz_entry(name, z, "sensor")) if "sensor" in keys else None
    return events, sensor


def _read_wire(src: Source, name: str, budget: _Budget) -> tuple[np.ndarray, SensorSize | None]:
    data = src.read_bytes() if isinstance(src, Path) else src.read()
    whole, rest = divmod(len(data), EVENT_BYTES)
    budget.events(whole)
    if rest:
        raise EventError(
            "misaligned_packet",
            f"{name}: {len(data)} bytes is not a whole number of {EVENT_BYTES}-byte event records "
            f"({whole} records + {rest} stray bytes)",
        )
    return np.frombuffer(data, dtype=EVENT_DTYPE).copy(), None


def _npz_entry(name: str, z: np.lib.npyio.NpzFile, key: str) -> np.ndarray:
    # Entries are read lazily, so a damaged or pickled entry only fails here.
    try:
        return z[key]
    except Exception as e:  # noqa: BLE001 - as in _np_load: a damaged member fails in many ways
        raise EventError("bad_file", f"{name}: unreadable .npz entry {key!r} ({type(e).__name__}: {e})") from None


def _np_load(src: Source, name: str, suffix: str, budget: _Budget) -> np.ndarray | np.lib.npyio.NpzFile:
    try:
        if budget.max_events is not None:
            _check_sizes(src, budget)
        return np.load(src, allow_pickle=False)
    except EventError:
        raise
    except Exception as e:  # noqa: BLE001 - numpy's header parser raises almost anything on a damaged header
        raise EventError("bad_file", f"{name}: not a numpy {suffix} file ({type(e).__name__}: {e})") from None


def _check_sizes(src: Source, budget: _Budget) -> None:
    """Every array in ``src`` (a ``.npy``, or each ``.npy`` member of a zip) within the budget, read
    from the headers alone; ``src`` is left at its start."""
    f = open(src, "rb") if isinstance(src, Path) else src  # noqa: SIM115 - closed below when opened here
    try:
        start = f.tell()
        head = f.read(4)
        f.seek(start)
        if head == b"PK\x03\x04":
            with zipfile.ZipFile(f) as z:
                for info in z.infolist():
                    with z.open(info) as member:
                        _check_npy_header(member, budget, f"member {info.filename!r}")
        else:
            _check_npy_header(f, budget, "the array")
        f.seek(start)
    finally:
        if f is not src:
            f.close()


def _check_npy_header(f: IO[bytes], budget: _Budget, what: str) -> None:
    fmt = np.lib.format
    version = fmt.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = fmt.read_array_header_1_0(f)
    elif version in ((2, 0), (3, 0)):
        shape, _, dtype = fmt.read_array_header_2_0(f)
    else:
        raise ValueError(f"{what}: unsupported .npy version {version}")
    budget.array(tuple(int(n) for n in shape), dtype, what)


def _from_array(p: str, arr: np.ndarray) -> np.ndarray:
    if arr.dtype == EVENT_DTYPE and arr.ndim == 1:
        return arr
    if arr.dtype.names is not None:
        if arr.ndim != 1 or not set(_FIELDS).issubset(arr.dtype.names):
            got = f"{arr.dtype}, shape {arr.shape}"
            raise EventError("bad_file", f"{p}: structured array needs 1-D with fields t, x, y, p; got {got}")
        return _from_columns(p, *(arr[k] for k in _FIELDS))
    if arr.ndim != 2 or arr.shape[1] != 4:
        got = f"shape {arr.shape}"
        raise EventError("bad_file", f"{p}: expected fields t, x, y, p or an (N, 4) array; got {got}")
    return _from_columns(p, *arr.T)


def _from_columns(p: str, *cols: np.ndarray) -> np.ndarray:
    """Check kinds and ranges of ``t, x, y, p`` and build an EVENT_DTYPE array."""
    n = cols[0].shape
    for name, c in zip(_FIELDS, cols):
        if c.dtype.kind not in "iub":
            raise EventError("bad_file", f"{p}: field {name} must be integer, got {c.dtype}")
        if c.ndim != 1 or c.shape != n:
            got = f"{name} has shape {c.shape}"
            raise EventError("bad_file", f"{p}: t, x, y, p must be 1-D of equal length; {got}")
        if c.size and c.dtype.kind != "b":
            lo, hi = int(c.min()), int(c.max())
            if lo < 0 or hi > _MAX[name]:
                got = f"spans {lo}..{hi}, outside 0..{_MAX[name]}"
                raise EventError("out_of_range", f"{p}: field {name} {got}")
    return make_events(*cols)


def _sensor(p: str, value: np.ndarray) -> SensorSize:
    if value.shape != (2,) or value.dtype.kind not in "iu":
        raise EventError("bad_file", f"{p}: 'sensor' must be [width, height] integers, got {value!r}")
    try:
        return SensorSize(int(value[0]), int(value[1]))
    except ValueError as e:
        raise EventError("bad_file", f"{p}: {e}") from None


def _bounding_sensor(events: np.ndarray) -> SensorSize:
    """The smallest sensor holding every event: lets validate_events check what it can."""
    if events.dtype != EVENT_DTYPE or events.ndim != 1 or events.size == 0:
        return SensorSize(1, 1)
    # 65535 is the widest SensorSize, so x = 65535 is reported as out of range.
    x, y = int(events["x"].max()), int(events["y"].max())
    return SensorSize(min(x + 1, 65535), min(y + 1, 65535))


def _dv_reason(e: Exception) -> str:
    """The reason in a dv-processing error, without its C++ source location and stack trace."""
    lines = str(e).split("Stacktrace:")[0].strip().splitlines()
    reason = " ".join(ln.strip() for ln in lines if not _CPP_LOCATION.match(ln))
    return reason or type(e).__name__


# Readers of the formats that need no file on disk (AEDAT4 is read from a path, see read_events).
_READERS: dict[str, Callable[[Source, str, _Budget], tuple[np.ndarray, SensorSize | None]]] = {
    ".npy": _read_npy,
    ".npz": _read_npz,
    ".evt": _read_wire,
    ".bin": _read_wire,
    ".events": _read_wire,
}
