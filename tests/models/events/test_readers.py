"""Event files: exact round trips through our writers (AEDAT4 through dv-processing's real writer)
and a clear, file-naming EventError for every kind of bad file; the same from bytes."""


import dv_processing as dv
import numpy as np
import pytest

from models.events import (
    EVENT_DTYPE,
    EventError,
    SensorSize,
    make_events,
    read_events,
    read_events_bytes,
    write_aedat4,
    write_numpy,
)

SENSOR = SensorSize(width=346, height=260)  # DAVIS346


@pytest.fixture
def events():
    rng = np.random.default_rng(0)
    n = 2500  # within 2 ms of a Unix-epoch start: many timestamps repeat
    t = 1_700_000_000_000_000 + np.sort(rng.integers(0, 2_000, n))
    return make_events(t, rng.integers(0, 346, n), rng.integers(0, 260, n), rng.integers(0, 2, n))


@pytest.mark.parametrize("packet_size", [100_000, 1000])
def test_aedat4_round_trip_is_exact(tmp_path, events, packet_size):
    path = tmp_path / "rec.aedat4"
    write_aedat4(path, events, SENSOR, packet_size=packet_size)
    back, sensor = read_events(path)
    assert back.dtype == EVENT_DTYPE
    np.testing.assert_array_equal(back, events)
    assert sensor == SENSOR


def test_aedat4_without_events_keeps_the_sensor(tmp_path):
    path = tmp_path / "empty.aedat4"
    write_aedat4(path, make_events([], [], [], []), SensorSize(128, 128))
    back, sensor = read_events(path)
    assert back.size == 0 and back.dtype == EVENT_DTYPE and sensor == SensorSize(128, 128)


@pytest.mark.parametrize("name, sensor", [("rec.npy", None), ("rec.npz", None), ("rec.npz", SENSOR)])
def test_numpy_round_trip_is_exact(tmp_path, events, name, sensor):
    write_numpy(tmp_path / name, events, sensor)
    back, got = read_events(str(tmp_path / name))
    np.testing.assert_array_equal(back, events)
    assert back.dtype == EVENT_DTYPE and got == sensor


def test_npy_with_other_integer_fields_is_converted(tmp_path):
    arr = np.zeros(3, dtype=[("p", "?"), ("y", "<i4"), ("extra", "<f4"), ("x", ">i8"), ("t", "<u4")])
    arr["t"], arr["x"], arr["y"], arr["p"] = [10, 10, 30], [0, 5, 345], [259, 1, 0], [True, False, True]
    np.save(tmp_path / "a.npy", arr)
    back, sensor = read_events(tmp_path / "a.npy")
    np.testing.assert_array_equal(back, make_events([10, 10, 30], [0, 5, 345], [259, 1, 0], [1, 0, 1]))
    assert sensor is None


def test_npy_n_by_4_columns_are_t_x_y_p(tmp_path):
    np.save(tmp_path / "a.npy", np.array([[7, 1, 2, 1], [9, 3, 4, 0]], dtype=np.int32))
    back, _ = read_events(tmp_path / "a.npy")
    np.testing.assert_array_equal(back, make_events([7, 9], [1, 3], [2, 4], [1, 0]))


def test_npz_with_separate_keys_and_sensor(tmp_path):
    np.savez(tmp_path / "a.npz", t=np.array([1, 2]), x=np.array([3, 4], np.int16),
             y=np.array([5, 6], np.uint8), p=np.array([0, 1]), sensor=np.array([64, 48]))
    back, sensor = read_events(tmp_path / "a.npz")
    np.testing.assert_array_equal(back, make_events([1, 2], [3, 4], [5, 6], [0, 1]))
    assert sensor == SensorSize(64, 48)


def test_npz_events_as_n_by_4(tmp_path):
    np.savez(tmp_path / "a.npz", events=np.array([[7, 1, 2, 1]], dtype=np.uint64))
    back, sensor = read_events(tmp_path / "a.npz")
    np.testing.assert_array_equal(back, make_events([7], [1], [2], [1]))
    assert sensor is None


def _save_bytes(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "make, code",
    [
        (lambda d: d / "missing.aedat4", "not_found"),
        (lambda d: _save_bytes(d / "rec.txt", b"1 2 3 4\n"), "unknown_format"),
        (lambda d: _save_bytes(d / "noise.aedat4", np.random.default_rng(1).bytes(4096)), "bad_file"),
        (lambda d: _save_bytes(d / "noise.npy", np.random.default_rng(2).bytes(4096)), "bad_file"),
        (lambda d: _save_bytes(d / "noise.npz", np.random.default_rng(3).bytes(4096)), "bad_file"),
    ],
)
def test_unreadable_files_name_the_file(tmp_path, make, code):
    path = make(tmp_path)
    with pytest.raises(EventError) as err:
        read_events(path)
    assert err.value.code == code
    assert str(path) in str(err.value)
    assert "Stacktrace" not in str(err.value)  # dv-processing's C++ trace is cut off


def test_aedat4_without_an_event_stream(tmp_path):
    path = tmp_path / "frames.aedat4"
    writer = dv.io.MonoCameraWriter(str(path), dv.io.MonoCameraWriter.FrameOnlyConfig("cam", (16, 8)))
    writer.writeFrame(dv.Frame(0, np.zeros((8, 16), np.uint8)))
    del writer
    with pytest.raises(EventError, match="no event stream") as err:
        read_events(path)
    assert err.value.code == "bad_file" and str(path) in str(err.value)


@pytest.mark.parametrize(
    "array, code, words",
    [
        (np.zeros(3, dtype=[("a", "<i8"), ("b", "<i8")]), "bad_file", "fields t, x, y, p"),
        (np.zeros((3, 3), np.int64), "bad_file", "(N, 4)"),
        (np.zeros((3, 4), np.float32), "bad_file", "must be integer"),
        (np.array([[1, -1, 0, 0]]), "out_of_range", "field x"),
        (np.array([[1, 70000, 0, 0]]), "out_of_range", "field x"),
        (np.array([[1, 0, 0, -1]]), "out_of_range", "field p"),
        (np.array([[1, 0, 0, 2]]), "bad_polarity", "polarity"),
        (np.array([[5, 0, 0, 0], [4, 0, 0, 0]]), "unsorted", "backwards"),
    ],
)
def test_npy_with_wrong_content(tmp_path, array, code, words):
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(EventError, match=words) as err:
        read_events(path)
    assert err.value.code == code and str(path) in str(err.value)


def test_npz_checks_keys_sensor_and_sensor_bounds(tmp_path):
    np.savez(tmp_path / "keys.npz", stamps=np.arange(3))
    with pytest.raises(EventError, match="key 'events' or keys t, x, y, p"):
        read_events(tmp_path / "keys.npz")
    np.savez(tmp_path / "sensor.npz", events=np.array([[1, 0, 0, 0]]), sensor=np.array([64]))
    with pytest.raises(EventError, match=r"\[width, height\]"):
        read_events(tmp_path / "sensor.npz")
    np.savez(tmp_path / "outside.npz", events=np.array([[1, 64, 0, 0]]), sensor=np.array([64, 48]))
    with pytest.raises(EventError, match="outside the 64x48 sensor") as err:
        read_events(tmp_path / "outside.npz")
    assert err.value.code == "out_of_range"


def test_npy_and_npz_contents_must_match_the_suffix(tmp_path):
    np.savez(tmp_path / "a.npz", events=np.array([[1, 0, 0, 0]]))
    (tmp_path / "a.npz").rename(tmp_path / "z.npy")
    with pytest.raises(EventError, match="npz archive"):
        read_events(tmp_path / "z.npy")
    np.save(tmp_path / "b.npy", np.array([[1, 0, 0, 0]]))
    (tmp_path / "b.npy").rename(tmp_path / "b.npz")
    with pytest.raises(EventError, match="single .npy array"):
        read_events(tmp_path / "b.npz")


def test_writers_refuse_what_they_cannot_store(tmp_path, events):
    with pytest.raises(ValueError, match="cannot hold the sensor size"):
        write_numpy(tmp_path / "a.npy", events, SENSOR)
    with pytest.raises(ValueError, match=".npy or .npz"):
        write_numpy(tmp_path / "a.csv", events)
    with pytest.raises(ValueError, match="int16"):
        write_aedat4(tmp_path / "a.aedat4", make_events([0], [40000], [0], [0]), SensorSize(40001, 10))
    with pytest.raises(EventError) as err:
        write_aedat4(tmp_path / "a.aedat4", events, SensorSize(100, 100))
    assert err.value.code == "out_of_range"
    assert not (tmp_path / "a.aedat4").exists()


def test_truncated_aedat4_is_a_bad_file(tmp_path, events):
    path = tmp_path / "cut.aedat4"
    write_aedat4(path, events, SENSOR)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(EventError, match="truncated") as err:
        read_events(path)
    assert err.value.code == "bad_file"


def test_upper_case_aedat4_suffix_is_refused_not_fatal(tmp_path, events):
    # dv-processing aborts the process when asked to write any other suffix; we must refuse first.
    with pytest.raises(ValueError, match="lowercase"):
        write_aedat4(tmp_path / "a.AEDAT4", events, SENSOR)
    write_aedat4(tmp_path / "a.aedat4", events, SENSOR)
    (tmp_path / "a.aedat4").rename(tmp_path / "b.AEDAT4")
    with pytest.raises(EventError, match="only opens names ending in '.aedat4'") as err:
        read_events(tmp_path / "b.AEDAT4")
    assert err.value.code == "unknown_format"


def test_aedat4_into_a_missing_folder_is_an_os_error(tmp_path, events):
    with pytest.raises(OSError, match="No such file or directory") as err:
        write_aedat4(tmp_path / "nope" / "a.aedat4", events, SENSOR)
    assert "Stacktrace" not in str(err.value)


@pytest.mark.parametrize("name", ["a.aedat4", "a.npy", "a.npz", "a.evt"])
def test_bytes_give_what_the_file_gives(tmp_path, events, name, monkeypatch):
    path = tmp_path / name
    if name.endswith(".aedat4"):
        write_aedat4(path, events, SENSOR)
    elif name.endswith(".evt"):
        path.write_bytes(events.tobytes())
    else:
        write_numpy(path, events, SENSOR if name.endswith(".npz") else None)
    from_file = read_events(path)
    if not name.endswith(".aedat4"):  # numpy and wire records never touch the disk
        monkeypatch.setattr("models.events.readers.tempfile", None)
    ev, sensor = read_events_bytes(path.read_bytes(), path.suffix.upper(), "upload.bin")
    np.testing.assert_array_equal(ev, from_file[0])
    assert sensor == from_file[1] and ev.dtype == EVENT_DTYPE and ev.flags.writeable


@pytest.mark.parametrize(
    "data, suffix, code, words",
    [
        (b"\x00" * 14, ".evt", "misaligned_packet", r"1 records \+ 1 stray bytes"),
        (b"garbage", ".npy", "bad_file", "not a numpy .npy file"),
        (b"PK\x03\x04garbage", ".npz", "bad_file", "not a numpy .npz file"),
        (b"1 2 3 4", ".txt", "unknown_format", "unknown event file suffix"),
        (b"#!AER-DAT4.0\r\nnothing else", ".aedat4", "bad_file", "no AEDAT4 header"),
    ],
)
def test_bad_bytes_name_the_upload(data, suffix, code, words):
    with pytest.raises(EventError, match=words) as err:
        read_events_bytes(data, suffix, "upload")
    assert err.value.code == code and str(err.value).startswith("upload: ")


def test_not_an_aedat4_file_is_refused_before_dv_processing(tmp_path, events, monkeypatch):
    """dv-processing takes seconds to reject garbage (it builds a C++ stack trace); the header check
    answers at once, for files and bytes alike."""
    good = tmp_path / "good.aedat4"
    write_aedat4(good, events, SENSOR)
    head = good.read_bytes()[:40]
    cases = {
        "noise.aedat4": np.random.default_rng(1).bytes(100_000),
        "text.aedat4": b"#!AER-DAT4.0\r\n" + b"x" * 100_000,
        "cut.aedat4": head,  # the header claims more bytes than there are
    }
    from models.events import readers

    def never(*a, **kw):  # dv-processing takes seconds to build the stack trace of its error
        raise AssertionError("dv-processing was handed a file the header check should refuse")

    monkeypatch.setattr(readers.dv.io, "MonoCameraRecording", never)
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(EventError) as err:
            read_events(tmp_path / name)
        with pytest.raises(EventError):
            read_events_bytes(data, ".aedat4", name)
        assert err.value.code == "bad_file" and str(tmp_path / name) in str(err.value)
