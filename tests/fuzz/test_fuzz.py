"""Fuzz targets: every way bytes or text from a client enter the service, fed mutated copies of a
corpus kept in the repository (tests/fuzz/corpus) and generated inputs. The property is always
the same: a specific, documented error (:class:`ProtocolError`, :class:`EventError`,
:class:`RecordingError`) or a valid result within its bounds; never another exception, never a
hang, never output in proportion to a time gap.

Hypothesis runs derandomized, so CI sees the same cases every time, in a bounded budget;
``ASASNN_FUZZ_EXAMPLES=5000`` (say) runs the same targets for longer, with a new seed each run when
``ASASNN_FUZZ_RANDOM=1``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.events import MAX_T_US, BinnerConfig, EventError, FrameBinner, SensorSize, validate_events
from models.events.binner import split_by_bins
from models.events.readers import read_events_bytes
from service.decoding import Binning, DecodeLimits, Decoder, RecordingError
from service.protocol import ProtocolError, decode_packet, parse_control, parse_start
from service.schemas import StartMessage

CORPUS = Path(__file__).parent / "corpus"
EXAMPLES = int(os.environ.get("ASASNN_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("ASASNN_FUZZ_RANDOM") != "1",
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _seeds(kind: str, suffix: str = "") -> list[bytes]:
    return [p.read_bytes() for p in sorted((CORPUS / kind).glob(f"*{suffix}"))]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A corpus entry with up to four mutations: flipped, cut, inserted or duplicated bytes."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 4))):
        if not data:
            data += draw(st.binary(min_size=1, max_size=13))
            continue
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(("flip", "cut", "insert", "duplicate")))
        if op == "flip":
            data[i] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[i : i + draw(st.integers(1, 64))]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        else:
            data[i:i] = data[i : i + draw(st.integers(1, 64))]
    return bytes(data)


# ---- binary packets: decode, validate, bin -----------------------------------------------------------
SENSOR = SensorSize(128, 128)
BINNER = BinnerConfig(SENSOR, 50_000, 4, max_gap_bins=32)
CHUNK = 8


@FUZZ
@given(st.lists(st.one_of(mutated(_seeds("packet")), st.binary(max_size=200)), min_size=1, max_size=4))
def test_packets_give_frames_or_a_specific_error(packets: list[bytes]) -> None:
    """What the WebSocket route and a session do with binary messages, packet after packet."""
    binner = FrameBinner(BINNER)
    for data in packets:
        try:
            events = decode_packet(data, 4 * 1024 * 1024)
            validate_events(events, SENSOR, binner.last_t)
        except (ProtocolError, EventError):
            continue  # refused whole: the binner is untouched
        t0 = binner.t0 if binner.t0 is not None else (int(events["t"][0]) if events.size else 0)
        pieces = split_by_bins(events, t0, BINNER.dt_us, CHUNK)
        assert sum(p.size for p in pieces) == events.size
        for part in pieces:
            frames, starts = binner.push_timed(part, validate=False)
            # bounded whatever the timestamps: CHUNK non-empty bins and, per gap, the gap cap
            assert frames.shape[0] <= CHUNK + CHUNK * BINNER.max_gap_bins + 1
            assert (starts >= 0).all() and (starts <= MAX_T_US).all()
            assert np.isfinite(frames).all() and (frames >= 0).all()


@FUZZ
@given(st.lists(st.integers(0, MAX_T_US), min_size=1, max_size=50))
def test_any_timestamps_bin_in_bounded_work(ts: list[int]) -> None:
    """Sorted timestamps anywhere in 0..2^62: the pieces and frames stay bounded (no O(gap) work)."""
    t = np.sort(np.array(ts, dtype=np.int64))
    events = np.zeros(t.size, dtype=[("t", "<i8"), ("x", "<u2"), ("y", "<u2"), ("p", "u1")])
    events["t"] = t
    binner = FrameBinner(BINNER)
    total = 0
    for part in split_by_bins(events, int(t[0]), BINNER.dt_us, CHUNK):
        total += binner.push_timed(part, validate=False).frames.shape[0]
    total += binner.flush_timed().frames.shape[0]
    assert total <= t.size * (1 + BINNER.max_gap_bins)


# ---- text messages -----------------------------------------------------------------------------------
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=12,
)


@st.composite
def messages(draw: st.DrawFn) -> str:
    """Mutated corpus messages, corpus messages with fields replaced by any JSON, and any text."""
    kind = draw(st.integers(0, 2))
    if kind == 0:
        return draw(mutated(_seeds("message", ".json"))).decode("utf-8", "replace")
    if kind == 1:
        msg = json.loads(draw(st.sampled_from(_seeds("message", ".json"))))
        for key in draw(st.lists(st.sampled_from(["type", "version", "t_start_us", "t_us", "dt_us", "ds", "sensor",
                                                  "readout", "output", "model", "extra"]), max_size=3)):
            msg[key] = draw(JSON)
        return json.dumps(msg)
    return draw(st.text(max_size=60))


@FUZZ
@given(messages())
def test_text_messages_parse_or_give_a_specific_error(text: str) -> None:
    try:
        start = parse_start(text)
    except ProtocolError as e:
        assert e.fatal and e.code and e.message
    else:
        assert isinstance(start, StartMessage) and start.version == 1
        assert start.t_start_us is None or 0 <= start.t_start_us <= MAX_T_US
    try:
        parse_control(text)
    except ProtocolError as e:
        assert not e.fatal and e.code and e.message


# ---- uploads -----------------------------------------------------------------------------------------
@FUZZ
@given(mutated(_seeds("upload", ".npz") + _seeds("upload", ".npy") + _seeds("upload", ".evt")))
def test_numpy_and_wire_uploads_decode_or_give_a_specific_error(data: bytes) -> None:
    """In-process, as the decoder child runs them (with the event budget that stops bombs)."""
    for suffix in (".npz", ".npy", ".evt"):
        try:
            events, _ = read_events_bytes(data, suffix, "upload", max_events=100_000)
        except EventError as e:
            assert e.code and str(e).startswith("upload")
        else:
            assert events.size <= 100_000


@pytest.fixture(scope="module")
def decoder():
    d = Decoder(DecodeLimits(timeout_s=2.0, memory_bytes=1 << 30, max_events=1_000_000), workers=1)
    yield d
    d.close()


@settings(max_examples=max(6, EXAMPLES // 40), deadline=None, derandomize=FUZZ.derandomize, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(mutated(_seeds("upload", ".aedat4")))
def test_aedat4_uploads_decode_or_are_refused_in_bounded_time(decoder, data: bytes) -> None:
    """AEDAT4 only through the isolated decoder: dv-processing may spin forever on these."""
    try:
        decoded = decoder.decode(data, "upload.aedat4", "aedat4", Binning(50_000, None, 32), SensorSize(128, 128))
    except RecordingError as e:
        assert e.code in {"bad_file", "decode_timeout", "decode_too_large", "too_many_events", "out_of_range",
                          "unsorted", "bad_polarity", "negative_time", "time_out_of_range"}, (e.code, e.message)
    else:
        assert decoded.events.size <= 1_000_000 and decoded.steps >= 0


# ---- session snapshots -------------------------------------------------------------------------------
def _a_snapshot() -> bytes:
    from service.snapshot import Snapshot, encode

    arrays = {"state.conv1.h": np.linspace(-1, 1, 64, dtype=np.float32).reshape(4, 4, 4), "binner.acc": np.arange(8)}
    return encode(Snapshot({"model": {"name": "m", "version": "1", "fingerprint": "f"}, "created_s": 0.0}, arrays), b"k")


@FUZZ
@given(st.one_of(mutated([_a_snapshot()]), st.binary(max_size=300)))
def test_snapshots_decode_or_are_refused_with_a_code(data: bytes) -> None:
    """Random and mutated snapshot bytes: always a SnapshotError with a code, never another exception;
    a mutation the signature covers is never accepted."""
    from service.snapshot import SnapshotError, decode

    try:
        snap = decode(data, b"k")
    except SnapshotError as e:
        assert e.code.startswith("snapshot_") and e.message
    else:
        assert data == _a_snapshot() and set(snap.arrays) == {"state.conv1.h", "binner.acc"}
