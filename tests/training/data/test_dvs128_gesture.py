"""DVS128 Gesture in the original layout, built in tmp_path from real-format AEDAT 3.1 files."""

import numpy as np
import pytest

from models.events.types import SensorSize, make_events
from training.data import (
    GESTURE_CLASSES,
    DatasetError,
    DVS128Gesture,
    MissingDataError,
    prepare_cache,
    write_aedat3,
)

HEADER = "class,startTime_usec,endTime_usec"
# recording -> (split, labels rows (class 1-based, start, end))
LAYOUT = {
    "user01_fluorescent": ("train", [(1, 1000, 3000), (11, 4000, 6000)]),
    "user01_led": ("train", [(5, 500, 2500)]),
    "user02_lab": ("test", [(8, 2000, 5000), (2, 6000, 9000), (10, 9000, 9500)]),
}


def recording(seed: int, n: int = 2000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, 10_000, n)) + 7_000_000  # timestamps not starting at 0, as in the release
    return make_events(t, rng.integers(0, 128, n), rng.integers(0, 128, n), rng.integers(0, 2, n))


def build(root, layout=LAYOUT):
    root.mkdir(parents=True, exist_ok=True)
    events = {}
    for i, (stem, (_, rows)) in enumerate(layout.items()):
        events[stem] = recording(i)
        write_aedat3(root / f"{stem}.aedat", events[stem], packet_size=256)
        lines = [HEADER] + [f"{c},{s + 7_000_000},{e + 7_000_000}" for c, s, e in rows]
        (root / f"{stem}_labels.csv").write_text("\r\n".join(lines) + "\r\n")
    for split in ("train", "test"):
        names = [f"{s}.aedat" for s, (sp, _) in layout.items() if sp == split]
        (root / f"trials_to_{split}.txt").write_text("\n".join(names) + "\n\n")
    return events


@pytest.fixture
def gesture(tmp_path):
    root = tmp_path / "DvsGesture"
    return root, build(root)


def expected(events, start, end):
    t = events["t"]
    return events[(t >= start + 7_000_000) & (t < end + 7_000_000)]


def test_classes_and_sensor():
    assert len(GESTURE_CLASSES) == 11
    assert GESTURE_CLASSES[0] == "hand_clapping" and GESTURE_CLASSES[-1] == "other_gestures"
    assert DVS128Gesture.sensor == SensorSize(128, 128)


def test_train_split_indexes_segments_and_cuts_events(gesture):
    root, events = gesture
    ds = DVS128Gesture(root, "train")
    assert len(ds) == 3
    assert ds.labels == [0, 10, 4]
    assert ds.classes == GESTURE_CLASSES
    want = [("user01_fluorescent", 1000, 3000), ("user01_fluorescent", 4000, 6000), ("user01_led", 500, 2500)]
    for i, (stem, start, end) in enumerate(want):
        ev, label = ds[i]
        np.testing.assert_array_equal(ev, expected(events[stem], start, end))
        assert ev.size > 0 and label == ds.labels[i]


def test_test_split_and_all(gesture):
    root, events = gesture
    test = DVS128Gesture(root, "test")
    assert test.labels == [7, 1, 9]
    ev, label = test[1]
    np.testing.assert_array_equal(ev, expected(events["user02_lab"], 6000, 9000))
    assert label == 1
    both = DVS128Gesture(root, "all")
    assert both.labels == [0, 10, 4, 7, 1, 9]


def test_switching_recordings_keeps_results(gesture):
    root, _ = gesture
    ds = DVS128Gesture(root, "all")
    order = [5, 0, 3, 2, 1, 4, 0]
    first = {i: ds[i][0] for i in order}
    fresh = DVS128Gesture(root, "all")
    for i in order:
        np.testing.assert_array_equal(first[i], fresh[i][0])
    # a sample is a copy: changing it does not change the decoded recording
    first[0]["x"][:] = 0
    np.testing.assert_array_equal(ds[0][0], fresh[0][0])


def test_root_above_dvsgesture_is_followed(gesture):
    root, _ = gesture
    assert len(DVS128Gesture(root.parent, "train")) == 3


def test_cache_fills_and_is_used(gesture, tmp_path):
    root, events = gesture
    cache = tmp_path / "cache"
    assert prepare_cache(root, cache) == 6
    assert (cache / "user02_lab" / "002.npz").is_file()
    # with the recordings destroyed, only the cache can answer
    for stem in LAYOUT:
        (root / f"{stem}.aedat").write_bytes(b"#!AER-DAT3.1\r\n#!END-HEADER\r\n")
    ds = DVS128Gesture(root, "test", cache_dir=cache)
    ev, label = ds[2]
    np.testing.assert_array_equal(ev, expected(events["user02_lab"], 9000, 9500))
    assert label == 9
    assert DVS128Gesture(root, "test")[2][0].size == 0  # without the cache: the destroyed file


def test_cache_fills_on_first_use(gesture, tmp_path):
    root, _ = gesture
    cache = tmp_path / "lazy"
    ds = DVS128Gesture(root, "train", cache_dir=cache)
    ev, _ = ds[2]
    assert (cache / "user01_led" / "000.npz").is_file()
    np.testing.assert_array_equal(ds[2][0], ev)


def test_cache_with_wrong_label_is_an_error(gesture, tmp_path):
    root, _ = gesture
    cache = tmp_path / "c"
    ds = DVS128Gesture(root, "train", cache_dir=cache)
    ds.cache.store(ds.cache_key(ds.segments[0]), ds[1][0], 3)
    with pytest.raises(DatasetError, match=r"000\.npz: cached label 3"):
        ds[0]


def test_missing_directory(tmp_path):
    with pytest.raises(MissingDataError, match="nowhere"):
        DVS128Gesture(tmp_path / "nowhere", "train")


def test_missing_trials_file(gesture):
    root, _ = gesture
    (root / "trials_to_test.txt").unlink()
    assert len(DVS128Gesture(root, "train")) == 3
    with pytest.raises(MissingDataError, match=r"trials_to_test\.txt: list file not found"):
        DVS128Gesture(root, "test")


def test_listed_recording_missing(gesture):
    root, _ = gesture
    (root / "user01_led.aedat").unlink()
    with pytest.raises(
        MissingDataError, match=r"user01_led\.aedat: recording listed in trials_to_train\.txt"
    ):
        DVS128Gesture(root, "train")


def test_labels_file_missing(gesture):
    root, _ = gesture
    (root / "user02_lab_labels.csv").unlink()
    with pytest.raises(MissingDataError, match=r"user02_lab_labels\.csv: labels file not found"):
        DVS128Gesture(root, "test")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cls,start,end\n1,0,10\n", r"line 1: header is 'cls,start,end'"),
        (f"{HEADER}\n1,0,10\n3,abc,20\n", r"line 3: expected 3 comma-separated integers"),
        (f"{HEADER}\n1,0,10,4\n", r"line 2: expected 3 comma-separated integers"),
        (f"{HEADER}\n\n12,0,10\n", r"line 3: class 12 outside 1\.\.11"),
        (f"{HEADER}\n0,0,10\n", r"line 2: class 0 outside 1\.\.11"),
        (f"{HEADER}\n1,50,10\n", r"line 2: endTime_usec 10 is before startTime_usec 50"),
        ("", r"empty labels file"),
    ],
)
def test_bad_labels_csv(gesture, text, message):
    root, _ = gesture
    (root / "user01_led_labels.csv").write_text(text)
    with pytest.raises(DatasetError, match=r"user01_led_labels\.csv: " + message) as info:
        DVS128Gesture(root, "train")
    assert info.value.code == "bad_labels"


def test_corrupt_recording_named_on_access(gesture):
    root, _ = gesture
    (root / "user01_led.aedat").write_bytes(b"not aedat\n")
    ds = DVS128Gesture(root, "train")
    ds[0]
    with pytest.raises(DatasetError, match=r"user01_led\.aedat: not an AEDAT 3.1 file"):
        ds[2]


def test_events_outside_sensor_named(gesture):
    root, _ = gesture
    write_aedat3(root / "user01_led.aedat", make_events([7_000_600], [200], [3], [1]))
    with pytest.raises(DatasetError, match=r"user01_led\.aedat: .*outside the 128x128 sensor"):
        DVS128Gesture(root, "train")[2]


def test_bad_split(gesture):
    root, _ = gesture
    with pytest.raises(ValueError, match="split must be one of"):
        DVS128Gesture(root, "val")
