"""DVS128 Gesture (Amir et al., CVPR 2017) in its original release layout.

``root`` is the directory that holds (the release's ``DvsGesture/`` folder; a ``root`` that only
contains ``DvsGesture/`` is followed into it):

* ``user01_fluorescent.aedat`` ...: AEDAT 3.1 recordings (see :mod:`training.data.aedat3`), 128x128;
* ``user01_fluorescent_labels.csv`` ... beside each: a header line ``class,startTime_usec,endTime_usec``
  then one row a gesture, ``class`` in 1..11, times in the recording's microsecond clock;
* ``trials_to_train.txt`` and ``trials_to_test.txt``: the ``.aedat`` names of each split, one a line.

A sample is one labelled row: the events with ``startTime_usec <= t < endTime_usec``, timestamps as in
the file, with label ``class - 1``. The index (recording, row, label, start, end) is built from the
list and CSV files only; recordings are decoded when a sample is asked for, one decoded recording kept
at a time. Parsing a recording takes a while, so for shuffled training give a ``cache_dir``: each
sample is then stored once as ``<cache_dir>/<recording>/<row>.npz`` (filled on first use, or all at
once by :func:`prepare_cache`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.events.types import SensorSize

from ._common import (
    DatasetError,
    MissingDataError,
    SampleCache,
    check_events,
    check_split,
    read_list_file,
    require_dir,
    require_file,
    slice_time,
)
from .aedat3 import read_aedat3

GESTURE_CLASSES = (
    "hand_clapping",
    "right_hand_wave",
    "left_hand_wave",
    "right_arm_clockwise",
    "right_arm_counter_clockwise",
    "left_arm_clockwise",
    "left_arm_counter_clockwise",
    "arm_roll",
    "air_drums",
    "air_guitar",
    "other_gestures",
)
GESTURE_SENSOR = SensorSize(128, 128)
LABELS_HEADER = ("class", "startTime_usec", "endTime_usec")


@dataclass(frozen=True)
class GestureSegment:
    """One labelled gesture: row ``row`` (0-based, header not counted) of ``recording``'s CSV."""

    recording: str
    row: int
    label: int
    start: int
    end: int


def read_gesture_labels(path: str | os.PathLike[str]) -> list[tuple[int, int, int]]:
    """Rows ``(label 0-based, start_us, end_us)`` of a ``*_labels.csv``; errors name the file and line."""
    path = require_file(Path(path), "labels file")
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    numbered = [(i + 1, line.strip()) for i, line in enumerate(lines) if line.strip()]
    if not numbered:
        raise DatasetError("bad_labels", path, "empty labels file")
    lineno, head = numbered[0]
    if tuple(h.strip() for h in head.split(",")) != LABELS_HEADER:
        raise DatasetError(
            "bad_labels", path, f"line {lineno}: header is {head!r}, expected {','.join(LABELS_HEADER)!r}"
        )
    rows = []
    for lineno, line in numbered[1:]:
        fields = [f.strip() for f in line.split(",")]
        try:
            cls, start, end = (int(f) for f in fields)
        except ValueError:
            raise DatasetError(
                "bad_labels", path, f"line {lineno}: expected 3 comma-separated integers, got {line!r}"
            ) from None
        if not 1 <= cls <= len(GESTURE_CLASSES):
            raise DatasetError(
                "bad_labels", path, f"line {lineno}: class {cls} outside 1..{len(GESTURE_CLASSES)}"
            )
        if end < start:
            raise DatasetError(
                "bad_labels", path, f"line {lineno}: endTime_usec {end} is before startTime_usec {start}"
            )
        rows.append((cls - 1, start, end))
    return rows


def _resolve_root(root: Path) -> Path:
    require_dir(root, "DVS128 Gesture")
    inner = root / "DvsGesture"
    if not (root / "trials_to_train.txt").exists() and (inner / "trials_to_train.txt").exists():
        return inner
    return root


class DVS128Gesture:
    """Labelled gesture segments of one split: ``ds[i] -> (events, label)``.

    ``split`` is ``"train"``, ``"test"`` or ``"all"`` (train then test).
    """

    classes = GESTURE_CLASSES
    sensor = GESTURE_SENSOR

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.root = _resolve_root(Path(root))
        self.split = check_split(split)
        self.cache = None if cache_dir is None else SampleCache(cache_dir)
        parts = ("train", "test") if split == "all" else (split,)
        self.segments: list[GestureSegment] = []
        for part in parts:
            trials = self.root / f"trials_to_{part}.txt"
            for name in read_list_file(trials):
                if not (self.root / name).is_file():
                    raise MissingDataError(
                        "missing_file", self.root / name, f"recording listed in {trials.name} not found"
                    )
                labels = self.root / f"{Path(name).stem}_labels.csv"
                for row, (label, start, end) in enumerate(read_gesture_labels(labels)):
                    self.segments.append(GestureSegment(name, row, label, start, end))
        self._decoded: tuple[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.segments)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        seg = self.segments[index]
        if self.cache is None:
            return self._cut(seg), seg.label
        key = self.cache_key(seg)
        events = self.cache.load(key, seg.label)
        if events is None:
            events = self._cut(seg)
            self.cache.store(key, events, seg.label)
        return events, seg.label

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.segments]

    @staticmethod
    def cache_key(seg: GestureSegment) -> str:
        return f"{Path(seg.recording).stem}/{seg.row:03d}"

    def recording(self, name: str) -> np.ndarray:
        """All events of one recording (the last one decoded is kept)."""
        if self._decoded is None or self._decoded[0] != name:
            self._decoded = None  # drop the old recording before decoding the next
            path = self.root / name
            self._decoded = (name, check_events(read_aedat3(path), self.sensor, path))
        return self._decoded[1]

    def _cut(self, seg: GestureSegment) -> np.ndarray:
        return slice_time(self.recording(seg.recording), seg.start, seg.end)


def prepare_cache(
    root: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    splits: tuple[str, ...] = ("train", "test"),
) -> int:
    """Decode every listed recording once and store each sample under ``cache_dir``; return the
    number of samples in the cache. Samples already cached are left alone."""
    total = 0
    for split in splits:
        ds = DVS128Gesture(root, split, cache_dir=cache_dir)
        assert ds.cache is not None
        for seg in ds.segments:  # grouped by recording, so each one is decoded once
            if not ds.cache.path(ds.cache_key(seg)).is_file():
                ds.cache.store(ds.cache_key(seg), ds._cut(seg), seg.label)
        total += len(ds)
    return total
