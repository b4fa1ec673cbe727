"""Labelled AEDAT4 recordings, written with dv-processing's own writer."""

import numpy as np
import pytest

from models.events.readers import write_aedat4, write_numpy
from models.events.types import SensorSize, make_events
from training.data import DatasetError, LabelledAedat4, MissingDataError

T0 = 1_700_000_000_000_000  # AEDAT4 clocks are microseconds since the epoch
SENSOR = SensorSize(64, 48)


def recording(seed, n=300):
    rng = np.random.default_rng(seed)
    t = T0 + np.sort(rng.integers(0, 100_000, n))
    return make_events(t, rng.integers(0, 64, n), rng.integers(0, 48, n), rng.integers(0, 2, n))


@pytest.fixture
def labelled(tmp_path):
    root = tmp_path / "rec"
    (root / "sub").mkdir(parents=True)
    events = {"a.aedat4": recording(1), "sub/b.aedat4": recording(2)}
    for name, ev in events.items():
        write_aedat4(root / name, ev, SENSOR)
    (root / "labels.csv").write_text(
        "file,class,start_us,end_us,split\n"
        f"a.aedat4,wave,{T0 + 1000},{T0 + 40_000},train\n"
        f"a.aedat4,clap,{T0 + 40_000},,test\n"
        "sub/b.aedat4,wave,,,train\n"
        f'"sub/b.aedat4","zoom, in",{T0},{T0 + 50_000},test\n'
    )
    return root, events


def cut(ev, start=None, end=None):
    t = ev["t"]
    keep = np.ones(t.size, bool)
    if start is not None:
        keep &= t >= start
    if end is not None:
        keep &= t < end
    return ev[keep]


def test_dv_writer_round_trip_keeps_timestamps(labelled):
    root, events = labelled
    ds = LabelledAedat4(root, "all")
    np.testing.assert_array_equal(ds.recording("a.aedat4"), events["a.aedat4"])
    assert ds.sensor == SENSOR


def test_rows_labels_and_splits(labelled):
    root, events = labelled
    ds = LabelledAedat4(root, "all")
    assert ds.classes == ("clap", "wave", "zoom, in")
    assert ds.labels == [1, 0, 1, 2]
    want = [
        cut(events["a.aedat4"], T0 + 1000, T0 + 40_000),
        cut(events["a.aedat4"], T0 + 40_000),
        events["sub/b.aedat4"],
        cut(events["sub/b.aedat4"], T0, T0 + 50_000),
    ]
    for i, w in enumerate(want):
        ev, label = ds[i]
        assert ev.size > 0
        np.testing.assert_array_equal(ev, w)
        assert label == ds.labels[i]
    train, test = LabelledAedat4(root, "train"), LabelledAedat4(root, "test")
    assert train.labels == [1, 1] and test.labels == [0, 2]
    assert train.classes == test.classes == ds.classes


def test_classes_file_fixes_order(labelled):
    root, _ = labelled
    (root / "classes.txt").write_text("zoom, in\nwave\nclap\nunused\n")
    ds = LabelledAedat4(root, "all")
    assert ds.classes == ("zoom, in", "wave", "clap", "unused")
    assert ds.labels == [1, 2, 1, 0]
    (root / "classes.txt").write_text("wave\nclap\n")
    with pytest.raises(DatasetError, match=r"labels\.csv: line 5: class 'zoom, in' not in classes\.txt"):
        LabelledAedat4(root, "all")


def test_relative_times(labelled):
    root, events = labelled
    (root / "labels.csv").write_text("file,class,start_us,end_us\na.aedat4,wave,1000,40000\n")
    ds = LabelledAedat4(root, "all", relative_times=True)
    first = int(events["a.aedat4"]["t"][0])
    np.testing.assert_array_equal(ds[0][0], cut(events["a.aedat4"], first + 1000, first + 40_000))


def test_no_split_column(labelled):
    root, _ = labelled
    (root / "labels.csv").write_text("class,file\nwave,a.aedat4\n")
    assert len(LabelledAedat4(root, "all")) == 1
    with pytest.raises(DatasetError, match=r"labels\.csv: no 'split' column"):
        LabelledAedat4(root, "train")


def test_npz_recording_needs_sensor(labelled):
    root, events = labelled
    write_numpy(root / "c.npy", events["a.aedat4"])
    (root / "labels.csv").write_text("file,class\nc.npy,wave\n")
    with pytest.raises(DatasetError, match=r"c\.npy: file holds no sensor size"):
        LabelledAedat4(root)[0]
    np.testing.assert_array_equal(LabelledAedat4(root, sensor=SENSOR)[0][0], events["a.aedat4"])


def test_sensor_mismatch(labelled):
    root, _ = labelled
    write_aedat4(root / "big.aedat4", recording(3), SensorSize(128, 128))
    (root / "labels.csv").write_text("file,class\na.aedat4,x\nbig.aedat4,y\n")
    ds = LabelledAedat4(root)
    ds[0]
    with pytest.raises(DatasetError, match=r"big\.aedat4: sensor 128x128, expected 64x48"):
        ds[1]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file,class,start\na.aedat4,w,1\n", r"line 1: header 'file,class,start' must name columns"),
        ("file,start_us\na.aedat4,1\n", r"line 1: header .* including file, class"),
        ("file,class\na.aedat4\n", r"line 2: 1 fields, expected 2"),
        ("file,class,start_us\na.aedat4,w,soon\n", r"line 2: start_us 'soon' is not an integer"),
        ("file,class,start_us,end_us\na.aedat4,w,10,5\n", r"line 2: end_us is before start_us"),
        ("file,class,split\na.aedat4,w,val\n", r"line 2: split 'val' is not 'train' or 'test'"),
        ("file,class\n\n", r"no samples"),
        ("", r"empty labels file"),
    ],
)
def test_bad_labels(labelled, text, message):
    root, _ = labelled
    (root / "labels.csv").write_text(text)
    with pytest.raises(DatasetError, match=r"labels\.csv: " + message):
        LabelledAedat4(root, "all")


def test_missing_things(labelled, tmp_path):
    root, _ = labelled
    with pytest.raises(MissingDataError, match="absent"):
        LabelledAedat4(tmp_path / "absent")
    (root / "labels.csv").write_text("file,class\na.aedat4,w\nnope.aedat4,w\n")
    with pytest.raises(MissingDataError, match=r"nope\.aedat4: recording named on line 3 of labels\.csv"):
        LabelledAedat4(root)
    (root / "labels.csv").unlink()
    with pytest.raises(MissingDataError, match=r"labels\.csv: labels file not found"):
        LabelledAedat4(root)


def test_corrupt_recording_named(labelled):
    root, _ = labelled
    (root / "a.aedat4").write_bytes(b"junk")
    with pytest.raises(DatasetError, match=r"a\.aedat4: ") as info:
        LabelledAedat4(root)[0]
    assert str(info.value).count("a.aedat4: ") == 1
