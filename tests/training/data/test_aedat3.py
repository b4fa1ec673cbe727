"""AEDAT 3.1: bit layout pinned by hand-packed bytes, writer/reader round trip, errors naming the file."""

import struct

import numpy as np
import pytest

from models.events.types import EVENT_DTYPE, make_events
from training.data import DatasetError, MissingDataError, read_aedat3, write_aedat3

HEADER = b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n#Start-Time: 2017-01-01\r\n#!END-HEADER\r\n"


def packet(etype, events, overflow=0, size=8, ts_offset=4, valid=None):
    """A packet by hand: 28-byte header (type, source, size, tsoffset, overflow, capacity, number, valid)."""
    n = len(events)
    head = struct.pack("<hhiiiiii", etype, 1, size, ts_offset, overflow, n, n, n if valid is None else valid)
    return head + b"".join(struct.pack("<Ii", data, ts) for data, ts in events)


def test_hand_packed_bytes_decode_to_pinned_events(tmp_path):
    # data words written out by hand: x << 17 | y << 2 | p << 1 | valid
    e1 = (0x000A_001F, 100)  # x=5 (0xA0000), y=7 (0x1C), p=1 (0x2), valid (0x1)
    e2 = (0x00FE_0001, 200)  # x=127 (0xFE0000), y=0, p=0, valid
    e3 = (0x0006_000E, 250)  # x=3, y=3, p=1, valid mark 0: dropped
    e4 = (0xFFFF_FFFF, 7)  # x=32767, y=32767, p=1, valid; in a packet with overflow 1
    special = (0x0000_0005, 150)  # a special event (type 0): skipped
    path = tmp_path / "hand.aedat"
    path.write_bytes(
        HEADER
        + packet(1, [e1, e2, e3], valid=2)
        + packet(0, [special, special])
        + packet(1, [e4], overflow=1)
    )
    ev = read_aedat3(path)
    assert ev.dtype == EVENT_DTYPE
    assert ev["t"].tolist() == [100, 200, 2**31 + 7]
    assert ev["x"].tolist() == [5, 127, 32767]
    assert ev["y"].tolist() == [7, 0, 32767]
    assert ev["p"].tolist() == [1, 0, 1]


def test_header_with_bare_newlines_and_empty_body(tmp_path):
    path = tmp_path / "empty.aedat"
    path.write_bytes(b"#!AER-DAT3.1\n#Format: RAW\n#!END-HEADER\n")
    ev = read_aedat3(path)
    assert ev.dtype == EVENT_DTYPE and ev.size == 0


def test_writer_lays_out_bytes_as_the_spec_says(tmp_path):
    path = tmp_path / "two.aedat"
    write_aedat3(path, make_events([10, 2**31 + 3], [5, 1], [7, 2], [1, 0]))
    raw = path.read_bytes()
    head, body = raw.split(b"#!END-HEADER\r\n")
    assert head.startswith(b"#!AER-DAT3.1\r\n")
    # the overflow changes between the two events, so there are two packets
    assert body == (
        struct.pack("<hhiiiiii", 1, 1, 8, 4, 0, 1, 1, 1)
        + struct.pack("<Ii", 0x000A_001F, 10)
        + struct.pack("<hhiiiiii", 1, 1, 8, 4, 1, 1, 1, 1)
        + struct.pack("<Ii", 0x0002_0009, 3)  # x=1 (0x20000), y=2 (0x8), p=0, valid
    )


def test_round_trip_across_overflow_and_packets(tmp_path):
    rng = np.random.default_rng(0)
    n = 5000
    t = np.sort(rng.integers(2**31 - 1000, 2**31 + 1000, n)) + np.arange(n)
    ev = make_events(t, rng.integers(0, 128, n), rng.integers(0, 128, n), rng.integers(0, 2, n))
    path = write_aedat3(tmp_path / "rt.aedat", ev, packet_size=333)
    np.testing.assert_array_equal(read_aedat3(path), ev)


def test_invalid_events_are_dropped_and_output_sorted(tmp_path):
    ev = make_events([30, 10, 20, 5], [1, 2, 3, 4], [0, 0, 0, 0], [1, 1, 0, 0])
    path = write_aedat3(tmp_path / "v.aedat", ev, packet_size=2, valid=[True, True, True, False])
    out = read_aedat3(path)
    assert out["t"].tolist() == [10, 20, 30]
    assert out["x"].tolist() == [2, 3, 1]


def test_missing_file(tmp_path):
    path = tmp_path / "nope.aedat"
    with pytest.raises(MissingDataError, match="nope.aedat") as info:
        read_aedat3(path)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("first", [b"#!AER-DAT2.0\r\n", b"\x01\x00\x08\x00", b""])
def test_not_aedat31(tmp_path, first):
    path = tmp_path / "old.aedat"
    path.write_bytes(first + b"#!END-HEADER\r\n")
    with pytest.raises(DatasetError, match=r"old\.aedat: not an AEDAT 3.1 file") as info:
        read_aedat3(path)
    assert info.value.code == "not_aedat3"


def test_header_without_end(tmp_path):
    path = tmp_path / "noend.aedat"
    path.write_bytes(b"#!AER-DAT3.1\r\n#Format: RAW\r\n" + packet(1, [(0x1F, 1)]))
    with pytest.raises(DatasetError, match=r"noend\.aedat: .*#!END-HEADER"):
        read_aedat3(path)


def test_truncated_packet_body(tmp_path):
    path = tmp_path / "cut.aedat"
    path.write_bytes(HEADER + packet(1, [(0x1F, 1), (0x1F, 2)])[:-3])
    with pytest.raises(
        DatasetError, match=r"cut\.aedat: truncated packet at byte \d+: 2 events of 8 bytes"
    ) as info:
        read_aedat3(path)
    assert info.value.code == "truncated"


def test_truncated_packet_header(tmp_path):
    path = tmp_path / "cuthead.aedat"
    path.write_bytes(HEADER + packet(1, [(0x1F, 1)]) + b"\x01\x00\x01\x00\x08")
    with pytest.raises(DatasetError, match=r"cuthead\.aedat: truncated packet header .*5 bytes left"):
        read_aedat3(path)


def test_polarity_packet_with_wrong_event_size(tmp_path):
    path = tmp_path / "size.aedat"
    path.write_bytes(HEADER + struct.pack("<hhiiiiii", 1, 1, 12, 4, 0, 1, 1, 1) + bytes(12))
    with pytest.raises(DatasetError, match=r"size\.aedat: polarity packet at byte \d+ has eventSize=12"):
        read_aedat3(path)


def test_writer_rejects_what_the_format_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="15 bits"):
        write_aedat3(tmp_path / "w.aedat", make_events([0], [40000], [0], [0]))
    with pytest.raises(ValueError, match="timestamps"):
        write_aedat3(tmp_path / "w.aedat", make_events([-1], [0], [0], [0]))
