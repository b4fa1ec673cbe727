"""Real event-camera datasets: DVS128 Gesture (AEDAT 3.1), DVS128 Gait (text events), labelled AEDAT4.

Every dataset gives ``ds[i] -> (events, label)``: ``events`` an ``EVENT_DTYPE`` array sorted by ``t``
with timestamps as in the file, ``label`` an int; and has ``.classes`` (names) and ``.sensor``. No
torch here: frame encoding and batching wrap these elsewhere.
"""

from __future__ import annotations

import os
from typing import Any

from ._common import DatasetError, MissingDataError
from .aedat3 import read_aedat3, write_aedat3
from .dvs128_gait import DVS128Gait, read_event_text
from .dvs128_gesture import GESTURE_CLASSES, DVS128Gesture, prepare_cache, read_gesture_labels
from .labelled_aedat4 import LabelledAedat4

DATASETS: dict[str, type] = {
    "dvs128-gesture": DVS128Gesture,
    "dvs128-gait": DVS128Gait,
    "aedat4": LabelledAedat4,
}


def open_dataset(name: str, root: str | os.PathLike[str], split: str = "train", **options: Any):
    """Open a dataset by registry name (``dvs128-gesture``, ``dvs128-gait``, ``aedat4``); ``options``
    go to its constructor (e.g. ``cache_dir``)."""
    try:
        cls = DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None
    return cls(root, split, **options)


__all__ = [
    "DATASETS",
    "GESTURE_CLASSES",
    "DVS128Gait",
    "DVS128Gesture",
    "DatasetError",
    "LabelledAedat4",
    "MissingDataError",
    "open_dataset",
    "prepare_cache",
    "read_aedat3",
    "read_event_text",
    "read_gesture_labels",
    "write_aedat3",
]
