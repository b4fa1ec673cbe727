"""The dataset registry of training.data."""

import pytest

from models.events.types import make_events
from training.data import (
    DATASETS,
    GESTURE_CLASSES,
    DVS128Gait,
    DVS128Gesture,
    LabelledAedat4,
    open_dataset,
    write_aedat3,
)


def test_registry_names():
    assert DATASETS == {"dvs128-gesture": DVS128Gesture, "dvs128-gait": DVS128Gait, "aedat4": LabelledAedat4}


def test_open_dataset_passes_split_and_options(tmp_path):
    write_aedat3(tmp_path / "user01_lab.aedat", make_events([5, 15], [1, 2], [3, 4], [1, 0]))
    (tmp_path / "user01_lab_labels.csv").write_text("class,startTime_usec,endTime_usec\n3,0,10\n")
    (tmp_path / "trials_to_train.txt").write_text("")
    (tmp_path / "trials_to_test.txt").write_text("user01_lab.aedat\n")
    ds = open_dataset("dvs128-gesture", tmp_path, "test", cache_dir=tmp_path / "cache")
    assert isinstance(ds, DVS128Gesture) and ds.classes == GESTURE_CLASSES
    events, label = ds[0]
    assert events["t"].tolist() == [5] and label == 2
    assert len(open_dataset("dvs128-gesture", tmp_path, "train")) == 0


def test_unknown_name(tmp_path):
    with pytest.raises(
        ValueError, match="unknown dataset 'nmnist'; known: dvs128-gesture, dvs128-gait, aedat4"
    ):
        open_dataset("nmnist", tmp_path, "train")
