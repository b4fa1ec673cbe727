"""The event record: byte layout (it is the wire format) and validation codes."""

import numpy as np
import pytest

from models.events import EVENT_BYTES, EVENT_DTYPE, EventError, SensorSize, make_events, validate_events

SENSOR = SensorSize(width=4, height=3)


def test_record_is_13_packed_little_endian_bytes():
    ev = make_events([0x0102030405060708], [0x0A0B], [0x0C0D], [1])
    assert EVENT_BYTES == 13 == EVENT_DTYPE.itemsize
    assert ev.tobytes() == bytes.fromhex("0807060504030201" "0b0a" "0d0c" "01")
    back = np.frombuffer(ev.tobytes(), dtype=EVENT_DTYPE)
    assert (int(back["t"][0]), int(back["x"][0]), int(back["y"][0]), int(back["p"][0])) == (
        0x0102030405060708,
        0x0A0B,
        0x0C0D,
        1,
    )


@pytest.mark.parametrize("w, h", [(0, 10), (10, 0), (65536, 1), (-1, 5)])
def test_sensor_size_bounds(w, h):
    with pytest.raises(ValueError):
        SensorSize(w, h)


def test_valid_events_pass_and_equal_timestamps_are_allowed():
    ev = make_events([5, 5, 9], [0, 3, 1], [0, 2, 1], [0, 1, 1])
    validate_events(ev, SENSOR)
    validate_events(ev, SENSOR, last_t=5)  # a packet may start at the last accepted time
    validate_events(make_events([], [], [], []), SENSOR, last_t=100)


@pytest.mark.parametrize(
    "events, last_t, code",
    [
        (np.zeros(2, dtype=[("t", "<i8"), ("x", "<u2")]), None, "bad_dtype"),
        (make_events([1, 2], [0, 0], [0, 0], [0, 0]).reshape(2, 1), None, "bad_shape"),
        (make_events([1, 2], [4, 0], [0, 0], [0, 0]), None, "out_of_range"),  # x == width
        (make_events([1, 2], [0, 0], [0, 3], [0, 0]), None, "out_of_range"),  # y == height
        (make_events([1, 2], [0, 0], [0, 0], [0, 2]), None, "bad_polarity"),
        (make_events([-1, 2], [0, 0], [0, 0], [0, 0]), None, "negative_time"),
        (make_events([3, 2], [0, 0], [0, 0], [0, 0]), None, "unsorted"),
        (make_events([3, 4], [0, 0], [0, 0], [0, 0]), 5, "time_backwards"),
    ],
)
def test_validation_codes(events, last_t, code):
    with pytest.raises(EventError) as err:
        validate_events(events, SENSOR, last_t)
    assert err.value.code == code
