"""Untrusted uploads decoded in a separate, killable process with a time and a memory limit.

dv-processing's AEDAT4 decompressor can loop forever on a corrupt file while holding the GIL, and a
small compressed ``.npz`` can expand to gigabytes: neither may reach the process that runs the live
streams. :class:`Decoder` hands each upload to a fresh child interpreter (``python -m
service.decoding``; one is kept started and idle, so a decode does not wait for the imports) which

* lowers its own CPU priority to the lowest (``nice 19``) and sets address-space and CPU-time
  limits (``RLIMIT_AS``, ``RLIMIT_CPU``) before it reads a byte of the upload;
* decodes with :func:`models.events.readers.read_events_bytes`, which refuses any numpy member or
  header larger than the event budget before allocating it;
* checks the events against the sensor the session will use and counts the timesteps the recording
  bins to, so nothing proportional to the recording runs in the server but the binning itself;
* answers with a JSON header and the events' 13-byte records (the parent never unpickles what a
  child that parsed hostile bytes sends back).

A child that overruns ``timeout_s`` is killed and the upload answered with ``decode_timeout``; one
that runs out of memory or dies is answered with ``decode_too_large`` / ``bad_file``. A child
decodes one upload and exits, so nothing of a hostile file outlives its request. At most
``workers`` decodes run at once; more wait for a turn, at most ``timeout_s`` (then
``decoders_busy``, 503), so a stream of hostile files cannot hold legitimate uploads forever.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.events.readers import read_events_bytes
from models.events.types import EVENT_DTYPE, EventError, SensorSize, validate_events


class RecordingError(ValueError):
    """An upload that is not a usable recording; ``status`` is the HTTP status to answer with."""

    def __init__(self, code: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


@dataclass(frozen=True)
class DecodeLimits:
    """What a decode may use. ``max_events`` also bounds every decoded numpy array (32 bytes per
    event, the widest layout accepted)."""

    timeout_s: float = 20.0
    memory_bytes: int = 2 << 30
    max_events: int = 10_000_000


@dataclass(frozen=True)
class Binning:
    """What the child needs to count a recording's timesteps (see :func:`count_steps`)."""

    dt_us: int
    t_start_us: int | None
    max_gap_steps: int


@dataclass(frozen=True)
class Decoded:
    events: np.ndarray  # EVENT_DTYPE, checked against ``sensor``
    sensor: SensorSize | None  # the file's own sensor size, where it holds one
    steps: int  # timesteps the events bin to (see count_steps)


def count_steps(t: np.ndarray, binning: Binning) -> int:
    """Exactly how many timesteps binning events with sorted timestamps ``t`` (then flushing) emits:
    one per non-empty bin and, between them, at most ``max_gap_steps`` empty ones. O(n), no sort."""
    if t.size == 0:
        return 0
    t0 = int(t[0]) if binning.t_start_us is None else binning.t_start_us
    t = t[int(np.searchsorted(t, t0, side="left")) :]
    if t.size == 0:
        return 0
    k = (t - t0) // binning.dt_us
    bins = k[np.concatenate(([True], k[1:] != k[:-1]))]
    gaps = np.diff(bins, prepend=-1) - 1
    return int(bins.size + np.minimum(gaps, binning.max_gap_steps).sum())


# ---- the child ---------------------------------------------------------------------------------
def _limit(memory_bytes: int, cpu_s: float) -> None:
    # The lowest CPU priority: a decoder spinning on a hostile file until its timeout gets only the
    # cycles the server leaves (measured: at normal priority, two spinning decoders on 2 cores pushed
    # the healthy streams' p99 from tens of ms to over a second).
    os.nice(19)
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    cpu = int(cpu_s) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # a backstop if the parent cannot kill


def _decode_job(job: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
    """The child's work: ``(header, records)`` for one upload (see the module docstring)."""
    name = job["name"]
    try:
        events, file_sensor = read_events_bytes(data, job["suffix"], name, max_events=job["max_events"])
        del data
        # the sensor the session will bin with: the client's, else the file's, else the model's
        fallback = SensorSize(*job["fallback_sensor"]) if job["fallback_sensor"] else None
        use = SensorSize(*job["sensor"]) if job["sensor"] else (file_sensor or fallback)
        if use is not None:
            try:
                validate_events(events, use)
            except EventError as e:
                raise EventError(e.code, f"{name}: {e}") from None
        binning = Binning(job["dt_us"], job["t_start_us"], job["max_gap_steps"])
        header = {
            "status": "ok",
            "events": int(events.size),
            "sensor": [file_sensor.width, file_sensor.height] if file_sensor else None,
            "steps": count_steps(events["t"], binning),
        }
        return header, np.ascontiguousarray(events).tobytes()
    except EventError as e:
        http = 413 if e.code == "too_many_events" else 422
        return {"status": "error", "code": e.code, "message": str(e), "http": http}, b""
    except MemoryError:
        message = f"{name}: decoding needs more than {job['memory_bytes'] >> 20} MiB"
        return {"status": "error", "code": "decode_too_large", "message": message, "http": 413}, b""
    except Exception as e:  # noqa: BLE001 - anything else a hostile file provokes is "unreadable"
        message = f"{name}: unreadable ({type(e).__name__}: {str(e)[:200]})"
        return {"status": "error", "code": "bad_file", "message": message, "http": 422}, b""


def _child_main() -> None:
    """``python -m service.decoding``: wait for one job on stdin, answer on stdout, exit."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    head = stdin.read(8)
    if len(head) < 8:
        return  # the parent went away (an idle spare at shutdown)
    job = json.loads(stdin.read(int.from_bytes(head, "little")))
    _limit(job["memory_bytes"], job["timeout_s"])
    data = stdin.read(job["size"])
    header, records = _decode_job(job, data)
    body = json.dumps(header).encode()
    stdout.write(len(body).to_bytes(8, "little") + body)
    stdout.write(records)
    stdout.flush()


# ---- the parent ----------------------------------------------------------------------------------
class Decoder:
    """Runs decodes in child processes (see the module docstring); thread-safe, blocking calls."""

    def __init__(self, limits: DecodeLimits, workers: int = 2) -> None:
        self.limits = limits
        self._turns = threading.BoundedSemaphore(workers)
        self._lock = threading.Lock()
        self._spare: subprocess.Popen[bytes] | None = None
        self._closed = False

    def _start(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        return subprocess.Popen(
            [sys.executable, "-m", "service.decoding"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=str(_ROOT),
        )

    def warm_up(self) -> None:
        """Start the idle child now, so the first upload does not wait for its imports."""
        with self._lock:
            if self._spare is None and not self._closed:
                self._spare = self._start()

    def _take(self) -> subprocess.Popen[bytes]:
        with self._lock:
            proc, self._spare = self._spare, None
        if proc is None or proc.poll() is not None:
            proc = self._start()
        threading.Thread(target=self.warm_up, daemon=True).start()  # the next upload's child
        return proc

    def close(self) -> None:
        with self._lock:
            self._closed = True
            proc, self._spare = self._spare, None
        if proc is not None:
            proc.kill()
            proc.wait()

    def decode(
        self,
        data: bytes,
        filename: str | None,
        fmt: str,
        binning: Binning,
        sensor: SensorSize | None = None,
        fallback_sensor: SensorSize | None = None,
    ) -> Decoded:
        """Decode an upload of format ``fmt`` (``aedat4``, ``npy``, ``npz``, ``wire``) and check its
        events against ``sensor``, else the file's own, else ``fallback_sensor``; blocking, meant for
        a worker thread. :class:`RecordingError` on anything wrong with the file, including
        overrunning the limits."""
        name = filename or "upload"
        lim = self.limits
        job = {
            "name": name,
            "suffix": ".evt" if fmt == "wire" else "." + fmt,
            "size": len(data),
            "sensor": [sensor.width, sensor.height] if sensor else None,
            "fallback_sensor": [fallback_sensor.width, fallback_sensor.height] if fallback_sensor else None,
            "dt_us": binning.dt_us,
            "t_start_us": binning.t_start_us,
            "max_gap_steps": binning.max_gap_steps,
            "max_events": lim.max_events,
            "memory_bytes": lim.memory_bytes,
            "timeout_s": lim.timeout_s,
        }
        head = json.dumps(job).encode()
        if not self._turns.acquire(timeout=lim.timeout_s):  # a bounded wait, even behind hostile files
            raise RecordingError(
                "decoders_busy",
                f"{name}: every decoder has been busy for {lim.timeout_s:g} s; retry later",
                503,
            )
        try:
            proc = self._take()
            try:
                out, _ = proc.communicate(len(head).to_bytes(8, "little") + head + data, timeout=lim.timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise RecordingError(
                    "decode_timeout",
                    f"{name}: decoding took longer than {lim.timeout_s:g} s (a corrupt or hostile file); refused",
                ) from None
        finally:
            self._turns.release()
        return _answer(out, name, proc.returncode)


def _answer(out: bytes, name: str, exit_code: int | None) -> Decoded:
    """Parse a child's answer: an 8-byte length, a JSON header, the records."""
    try:
        size = int.from_bytes(out[:8], "little")
        header = json.loads(out[8 : 8 + size])
        if not isinstance(header, dict):
            raise TypeError("header is not an object")
    except (ValueError, TypeError, UnicodeDecodeError):
        raise RecordingError("bad_file", f"{name}: the decoder died on this file (exit code {exit_code})") from None
    if header.get("status") != "ok":
        raise RecordingError(str(header.get("code")), str(header.get("message")), int(header.get("http", 422)))
    n = int(header["events"])
    records = out[8 + size :]
    if len(records) != n * EVENT_DTYPE.itemsize:
        raise RecordingError("bad_file", f"{name}: the decoder's answer was cut short (exit code {exit_code})")
    events = np.frombuffer(records, dtype=EVENT_DTYPE) if n else np.zeros(0, EVENT_DTYPE)
    sensor = SensorSize(*header["sensor"]) if header.get("sensor") else None
    return Decoded(events, sensor, int(header["steps"]))


_ROOT = Path(__file__).resolve().parents[1]  # the children import this package from here

__all__ = ["Binning", "DecodeLimits", "Decoded", "Decoder", "RecordingError", "count_steps"]

if __name__ == "__main__":
    _child_main()
