"""Labelled event recordings: a directory of ``.aedat4`` files (dv-processing) and a ``labels.csv``.

Layout of ``root``:

* recordings, read with :func:`models.events.readers.read_events` (``.aedat4``; ``.npy`` / ``.npz``
  also work, given a ``sensor`` where the file holds none);
* ``labels.csv``: a header line, then one row a sample. Columns, by header name, in any order:

  ==========  ========  =====================================================================
  column      required  meaning
  ==========  ========  =====================================================================
  file        yes       recording path relative to ``root``
  class       yes       class name
  start_us    no        first timestamp of the sample (empty or absent: start of the file)
  end_us      no        end of the sample, exclusive (empty or absent: end of the file)
  split       no        ``train`` or ``test``
  ==========  ========  =====================================================================

  Times are in the recording's own clock (AEDAT4: microseconds since the epoch), or, with
  ``relative_times=True``, microseconds after the recording's first event. Other columns are an error
  (so a misspelt ``start_us`` is not silently ignored). Standard CSV quoting applies.
* ``classes.txt`` (optional): class names one a line, fixing the label order; without it the classes
  are the sorted unique names of all rows (all splits, so labels agree between splits).

``split`` ``"train"`` / ``"test"`` selects rows by the ``split`` column (an error without one);
``"all"`` takes every row. A sample is the events with ``start_us <= t < end_us``, timestamps kept.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.events.readers import read_events
from models.events.types import EventError, SensorSize

from ._common import (
    DatasetError,
    MissingDataError,
    check_events,
    check_split,
    read_list_file,
    require_dir,
    require_file,
    slice_time,
)

COLUMNS = ("file", "class", "start_us", "end_us", "split")
REQUIRED = ("file", "class")


@dataclass(frozen=True)
class LabelledSegment:
    file: str
    label: int
    start: int | None
    end: int | None
    split: str | None


class LabelledAedat4:
    """Labelled segments of recordings: ``ds[i] -> (events, label)``."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "all",
        *,
        relative_times: bool = False,
        sensor: SensorSize | None = None,
    ) -> None:
        self.root = require_dir(Path(root), "labelled recordings")
        self.split = check_split(split)
        self.relative_times = relative_times
        self._sensor = sensor
        labels_path = require_file(self.root / "labels.csv", "labels file")
        rows = self._read_rows(labels_path)

        classes_path = self.root / "classes.txt"
        if classes_path.exists():
            names = read_list_file(classes_path)
            if len(set(names)) != len(names):
                raise DatasetError("bad_classes", classes_path, "class names repeat")
            if not names:
                raise DatasetError("bad_classes", classes_path, "no class names")
            known = set(names)
            for lineno, row in rows:
                if row["class"] not in known:
                    raise DatasetError(
                        "bad_labels",
                        labels_path,
                        f"line {lineno}: class {row['class']!r} not in {classes_path.name}",
                    )
        else:
            names = sorted({row["class"] for _, row in rows})
        self.classes: tuple[str, ...] = tuple(names)
        index = {name: i for i, name in enumerate(names)}

        if split != "all" and not self._header_has_split:
            raise DatasetError(
                "no_split",
                labels_path,
                f"no 'split' column, so split={split!r} is undefined; use split='all'",
            )
        self.segments: list[LabelledSegment] = []
        for _, row in rows:
            seg = LabelledSegment(
                row["file"], index[row["class"]], row["start_us"], row["end_us"], row["split"]
            )
            if split == "all" or seg.split == split:
                self.segments.append(seg)
        self._decoded: tuple[str, np.ndarray] | None = None

    def _read_rows(self, path: Path) -> list[tuple[int, dict]]:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise DatasetError("bad_labels", path, "empty labels file")
            header = [h.strip() for h in header]
            unknown = [h for h in header if h not in COLUMNS]
            missing = [c for c in REQUIRED if c not in header]
            if unknown or missing or len(set(header)) != len(header):
                raise DatasetError(
                    "bad_labels",
                    path,
                    f"line 1: header {','.join(header)!r} must name columns from {', '.join(COLUMNS)} "
                    f"once each, including {', '.join(REQUIRED)}",
                )
            self._header_has_split = "split" in header
            rows = []
            for fields in reader:
                lineno = reader.line_num
                if not any(f.strip() for f in fields):
                    continue
                if len(fields) != len(header):
                    raise DatasetError(
                        "bad_labels", path, f"line {lineno}: {len(fields)} fields, expected {len(header)}"
                    )
                raw = {h: f.strip() for h, f in zip(header, fields, strict=True)}
                rows.append((lineno, self._parse_row(path, lineno, raw)))
        if not rows:
            raise DatasetError("bad_labels", path, "no samples")
        return rows

    def _parse_row(self, path: Path, lineno: int, raw: dict[str, str]) -> dict:
        if not raw["file"] or not raw["class"]:
            raise DatasetError("bad_labels", path, f"line {lineno}: empty file or class")
        if not (self.root / raw["file"]).is_file():
            raise MissingDataError(
                "missing_file",
                self.root / raw["file"],
                f"recording named on line {lineno} of {path.name} not found",
            )
        times = {}
        for key in ("start_us", "end_us"):
            value = raw.get(key, "")
            try:
                times[key] = int(value) if value else None
            except ValueError:
                raise DatasetError(
                    "bad_labels", path, f"line {lineno}: {key} {value!r} is not an integer"
                ) from None
        if (
            times["start_us"] is not None
            and times["end_us"] is not None
            and times["end_us"] < times["start_us"]
        ):
            raise DatasetError("bad_labels", path, f"line {lineno}: end_us is before start_us")
        split = raw.get("split") or None
        if split is not None and split not in ("train", "test"):
            raise DatasetError("bad_labels", path, f"line {lineno}: split {split!r} is not 'train' or 'test'")
        return {"file": raw["file"], "class": raw["class"], "split": split, **times}

    @property
    def sensor(self) -> SensorSize:
        """The sensor size: given, or read from the first recording."""
        if self._sensor is None:
            if not self.segments:
                raise DatasetError("no_sensor", self.root, "no samples to learn the sensor size from")
            self.recording(self.segments[0].file)
        assert self._sensor is not None
        return self._sensor

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.segments]

    def __len__(self) -> int:
        return len(self.segments)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        seg = self.segments[index]
        events = self.recording(seg.file)
        start, end = seg.start, seg.end
        if self.relative_times and events.size:
            t0 = int(events["t"][0])
            start = None if start is None else start + t0
            end = None if end is None else end + t0
        return slice_time(events, start, end), seg.label

    def recording(self, name: str) -> np.ndarray:
        """All events of one recording (the last one read is kept)."""
        if self._decoded is None or self._decoded[0] != name:
            self._decoded = None
            path = self.root / name
            try:
                events, sensor = read_events(path)
            except EventError as err:
                msg = str(err)
                raise DatasetError(
                    err.code, path, msg.split(": ", 1)[1] if msg.startswith(f"{path}: ") else msg
                ) from None
            if sensor is None and self._sensor is None:
                raise DatasetError(
                    "no_sensor", path, "file holds no sensor size; pass sensor=SensorSize(w, h)"
                )
            if self._sensor is None:
                self._sensor = sensor
            elif sensor is not None and sensor != self._sensor:
                raise DatasetError(
                    "sensor_mismatch",
                    path,
                    f"sensor {sensor.width}x{sensor.height}, "
                    f"expected {self._sensor.width}x{self._sensor.height}",
                )
            self._decoded = (name, check_events(events, self._sensor, path))
        return self._decoded[1]
