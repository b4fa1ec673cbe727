"""DVS128 Gait: text event files, subject labels, splits, errors naming file and line."""

import numpy as np
import pytest

from models.events.types import SensorSize, make_events
from training.data import DatasetError, DVS128Gait, MissingDataError, read_event_text


def write_txt(path, events, sep=" "):
    rows = [sep.join(map(str, (int(e["t"]), int(e["x"]), int(e["y"]), int(e["p"])))) for e in events]
    path.write_text("\n".join(rows) + "\n")


def recording(seed, n=50):
    rng = np.random.default_rng(seed)
    return make_events(
        np.sort(rng.integers(0, 10**6, n)),
        rng.integers(0, 128, n),
        rng.integers(0, 128, n),
        rng.integers(0, 2, n),
    )


@pytest.fixture
def gait(tmp_path):
    """Subjects s03, s01, s02 (label order s01, s02, s03), recordings rec1, rec2, rec10, rec3 each."""
    root = tmp_path / "gait_day"
    events = {}
    for i, subject in enumerate(["s03", "s01", "s02"]):
        (root / subject).mkdir(parents=True)
        for j, rec in enumerate(["rec1.txt", "rec2.csv", "rec10.txt", "rec3.txt"]):
            events[f"{subject}/{rec}"] = ev = recording(10 * i + j)
            write_txt(root / subject / rec, ev, sep="," if rec.endswith(".csv") else " ")
    (root / "s01" / "notes.md").write_text("ignored")
    (root / ".hidden").mkdir()
    return root, events


def test_read_event_text_formats(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("t,x,y,p\r\n# a comment\r\n30, 4, 5, 1\r\n\r\n10\t1\t2\t-1\r\n20;127;0;0\r\n")
    ev = read_event_text(path)
    assert ev["t"].tolist() == [10, 20, 30]
    assert ev["x"].tolist() == [1, 127, 4]
    assert ev["y"].tolist() == [2, 0, 5]
    assert ev["p"].tolist() == [0, 0, 1]


def test_read_event_text_columns_and_units(tmp_path):
    path = tmp_path / "b.txt"
    path.write_text("3 4 0.0015 1\n5 6 0.002 0\n")
    ev = read_event_text(path, columns="xytp", time_unit="s")
    assert ev["t"].tolist() == [1500, 2000]
    assert ev["x"].tolist() == [3, 5] and ev["y"].tolist() == [4, 6] and ev["p"].tolist() == [1, 0]
    with pytest.raises(ValueError, match="columns"):
        read_event_text(path, columns="xyts")
    with pytest.raises(ValueError, match="time_unit"):
        read_event_text(path, time_unit="ns")


def test_empty_file(tmp_path):
    path = tmp_path / "e.txt"
    path.write_text("")
    assert read_event_text(path).size == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 2 3 1\n4 5 6\n", r"line 2: 3 fields, expected 4"),
        ("1 2 3 1\n\n4 5 6 1 9\n", r"line 3: 5 fields, expected 4"),
        ("t x y p\n1 2 3 1\n4 five 6 1\n", r"line 3: b'five' is not a number"),
        ("1 2 3 1\n4 5.5 6 1\n", r"line 2: x must be a whole number"),
        ("1 2 3 2\n", r"line 1: p must be 0, 1 or -1"),
        ("1 2 nan 1\n", r"line 1: values must be finite"),
    ],
)
def test_read_event_text_errors(tmp_path, text, message):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(DatasetError, match=r"bad\.txt: " + message):
        read_event_text(path)


def test_split_by_recording_index(gait):
    root, events = gait
    train = DVS128Gait(root, "train")
    assert train.classes == ("s01", "s02", "s03")
    assert train.sensor == SensorSize(128, 128)
    # natural order rec1, rec2, rec3, rec10: the first half trains
    assert [rel for rel, _ in train.samples] == [
        f"{s}/{r}" for s in ("s01", "s02", "s03") for r in ("rec1.txt", "rec2.csv")
    ]
    assert train.labels == [0, 0, 1, 1, 2, 2]
    test = DVS128Gait(root, "test")
    assert [rel for rel, _ in test.samples][:2] == ["s01/rec3.txt", "s01/rec10.txt"]
    for ds in (train, test):
        for i, (rel, label) in enumerate(ds.samples):
            ev, got = ds[i]
            np.testing.assert_array_equal(ev, events[rel])
            assert got == label
    assert len(DVS128Gait(root, "all")) == 12
    assert len(DVS128Gait(root, "train", train_count=3)) == 9
    assert len(DVS128Gait(root, "test", train_fraction=0.8)) == 3


def test_trials_files_override(gait):
    root, events = gait
    (root / "trials_to_train.txt").write_text("s02/rec10.txt\ns03/rec1.txt\n")
    (root / "trials_to_test.txt").write_text("s01/rec2.csv\n")
    train = DVS128Gait(root, "train")
    assert train.samples == [("s02/rec10.txt", 1), ("s03/rec1.txt", 2)]
    np.testing.assert_array_equal(train[0][0], events["s02/rec10.txt"])
    assert DVS128Gait(root, "test").samples == [("s01/rec2.csv", 0)]


def test_trials_files_errors(gait):
    root, _ = gait
    (root / "trials_to_train.txt").write_text("s01/rec1.txt\n")
    with pytest.raises(MissingDataError, match=r"trials_to_test\.txt: needed because trials_to_train\.txt"):
        DVS128Gait(root, "train")
    (root / "trials_to_test.txt").write_text("s01/rec7.txt\n")
    with pytest.raises(MissingDataError, match=r"rec7\.txt: listed in trials_to_test\.txt"):
        DVS128Gait(root, "test")
    (root / "trials_to_test.txt").write_text("rec1.txt\n")
    with pytest.raises(DatasetError, match=r"trials_to_test\.txt: 'rec1\.txt' is not <subject"):
        DVS128Gait(root, "test")


def test_cache(gait, tmp_path):
    root, events = gait
    cache = tmp_path / "cache"
    ds = DVS128Gait(root, "train", cache_dir=cache)
    ds[0]
    assert (cache / "s01" / "rec1.npz").is_file()
    (root / "s01" / "rec1.txt").write_text("garbage\n")
    np.testing.assert_array_equal(ds[0][0], events["s01/rec1.txt"])


def test_missing_root_and_empty_layouts(tmp_path):
    with pytest.raises(MissingDataError, match="absent"):
        DVS128Gait(tmp_path / "absent")
    root = tmp_path / "g"
    root.mkdir()
    with pytest.raises(DatasetError, match=r"g: no subject directories"):
        DVS128Gait(root)
    (root / "s01").mkdir()
    with pytest.raises(DatasetError, match=r"s01: no .txt/.csv recordings"):
        DVS128Gait(root)


def test_event_outside_sensor_names_file(gait):
    root, _ = gait
    (root / "s01" / "rec1.txt").write_text("1 128 0 1\n")
    with pytest.raises(DatasetError, match=r"rec1\.txt: .*outside the 128x128 sensor"):
        DVS128Gait(root, "train")[0]
