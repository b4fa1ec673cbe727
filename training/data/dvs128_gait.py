"""DVS128 Gait (Wang et al., "EV-Gait", CVPR 2019): gait recognition, 20 subjects, 128x128.

The public release's exact layout varies between copies, so this loader reads a documented layout
and is tolerant inside it. Point ``root`` at one condition (Gait-day or Gait-night)::

    root/<subject>/<recording>.txt   (or .csv)
    root/trials_to_train.txt         optional, with trials_to_test.txt
    root/trials_to_test.txt

* **Subjects**: the sub-directories of ``root`` (hidden ones skipped), sorted by name; the label is the
  subject's index in that order (0..19 for the release). ``.classes`` holds the directory names.
* **Recordings**: the ``.txt`` / ``.csv`` files of a subject directory, in natural order
  (``rec2`` before ``rec10``); each file is one sample.
* **Event files**: one event a line, ``t x y p`` by default (``columns`` reorders them, e.g.
  ``"xytp"``); fields separated by blanks, tabs, commas or semicolons; ``t`` in microseconds
  (``time_unit`` ``"ms"`` or ``"s"`` scales it and rounds to whole microseconds); ``x``, ``y`` whole
  numbers on the 128x128 sensor; ``p`` one of ``0``, ``1`` or ``-1`` (``1`` is ON; ``0`` and ``-1``
  OFF). Empty lines, lines starting with ``#`` and a first line that is not numeric (a column header)
  are skipped. Events are returned sorted by ``t`` (stable), timestamps as in the file.
* **Split**: without list files, the first ``floor(n * train_fraction)`` recordings of each subject
  (``train_count`` instead, when given) in natural order are ``train``, the rest ``test``. With
  ``trials_to_train.txt`` and ``trials_to_test.txt`` in ``root`` (both, or it is an error), those lists
  decide: one ``<subject>/<recording file>`` path a line, relative to ``root``.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np

from models.events.types import EVENT_DTYPE, SensorSize

from ._common import (
    DatasetError,
    MissingDataError,
    SampleCache,
    check_events,
    check_split,
    natural_key,
    read_list_file,
    require_dir,
    sort_by_time,
)

GAIT_SENSOR = SensorSize(128, 128)
RECORDING_SUFFIXES = (".txt", ".csv")
TIME_UNITS = {"us": 1, "ms": 1_000, "s": 1_000_000}

_COMMENT = re.compile(rb"(?m)^[ \t]*#[^\n]*")
_SEPARATORS = bytes.maketrans(b",;", b"  ")
_IS_BLANK = np.zeros(256, bool)
_IS_BLANK[list(b" \t\r\n\v\f")] = True


def _is_number(token: bytes) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def read_event_text(path: str | os.PathLike[str], columns: str = "txyp", time_unit: str = "us") -> np.ndarray:
    """Events of a text file in the layout above (not yet checked against a sensor), sorted by ``t``."""
    path = Path(path)
    if sorted(columns) != sorted("txyp"):
        raise ValueError(f"columns must name t, x, y and p once each, got {columns!r}")
    if time_unit not in TIME_UNITS:
        raise ValueError(f"time_unit must be one of {sorted(TIME_UNITS)}, got {time_unit!r}")
    if not path.is_file():
        raise MissingDataError("missing_file", path, "event file not found")
    raw = path.read_bytes()
    if b"#" in raw:
        raw = _COMMENT.sub(b"", raw)  # the newline stays, so line numbers are kept
    raw = raw.translate(_SEPARATORS)
    first_nl = raw.find(b"\n")
    first = raw if first_nl < 0 else raw[:first_nl]
    if first.strip() and not all(_is_number(tok) for tok in first.split()):
        raw = raw[len(first) :]  # a column header; the newline stays, so line numbers still match

    # Fields a line, counted vectorised over the bytes, so a short or long line is found exactly.
    b = np.frombuffer(raw, np.uint8)
    ws = _IS_BLANK[b]
    starts = ~ws
    starts[1:] &= ws[:-1]
    line_of = np.cumsum(b == ord("\n"))
    per_line = np.bincount(line_of[starts], minlength=int(line_of[-1]) + 1 if b.size else 1)
    bad = np.flatnonzero((per_line != 0) & (per_line != len(columns)))
    if bad.size:
        i = int(bad[0])
        raise DatasetError(
            "bad_line", path, f"line {i + 1}: {int(per_line[i])} fields, expected {len(columns)} ({columns})"
        )
    try:
        with warnings.catch_warnings():  # numpy < 2.3 warns and stops early instead of raising
            warnings.simplefilter("ignore", DeprecationWarning)
            values = np.fromstring(raw.decode("ascii"), dtype=np.float64, sep=" ")
    except (ValueError, UnicodeDecodeError):
        values = None
    if values is None or values.size != int(per_line.sum()):
        for lineno, line in enumerate(raw.split(b"\n"), start=1):
            for tok in line.split():
                if not _is_number(tok):
                    raise DatasetError("bad_line", path, f"line {lineno}: {tok[:40]!r} is not a number")
        raise DatasetError("bad_line", path, "could not parse the events")
    table = values.reshape(-1, len(columns))
    col = {name: table[:, i] for i, name in enumerate(columns)}
    lines = np.flatnonzero(per_line) + 1  # file line of each event, for errors

    def fail(mask: np.ndarray, what: str) -> None:
        if mask.any():
            i = int(np.flatnonzero(mask)[0])
            raise DatasetError("bad_value", path, f"line {int(lines[i])}: {what}, got {table[i].tolist()}")

    fail(~np.isfinite(table).all(axis=1), "values must be finite")
    for name in "xy":
        fail(
            (col[name] != np.round(col[name])) | (col[name] < 0) | (col[name] > 65535),
            f"{name} must be a whole number in 0..65535",
        )
    fail(~np.isin(col["p"], (-1.0, 0.0, 1.0)), "p must be 0, 1 or -1")
    t = np.round(col["t"] * TIME_UNITS[time_unit])
    fail(np.abs(t) >= 2.0**62, "t out of range")
    events = np.empty(table.shape[0], EVENT_DTYPE)
    events["t"] = t.astype(np.int64)
    events["x"] = col["x"].astype(np.uint16)
    events["y"] = col["y"].astype(np.uint16)
    events["p"] = col["p"] > 0
    return sort_by_time(events)


class DVS128Gait:
    """Gait recordings of one split: ``ds[i] -> (events, subject index)``.

    ``split`` is ``"train"``, ``"test"`` or ``"all"``. ``cache_dir`` stores each parsed recording as
    ``<cache_dir>/<subject>/<recording>.npz`` on first use.
    """

    sensor = GAIT_SENSOR

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        *,
        train_fraction: float = 0.5,
        train_count: int | None = None,
        columns: str = "txyp",
        time_unit: str = "us",
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.root = require_dir(Path(root), "DVS128 Gait")
        self.split = check_split(split)
        if not 0.0 <= train_fraction <= 1.0:
            raise ValueError(f"train_fraction must be in [0, 1], got {train_fraction}")
        if train_count is not None and train_count < 0:
            raise ValueError(f"train_count must be >= 0, got {train_count}")
        self.columns, self.time_unit = columns, time_unit
        self.cache = None if cache_dir is None else SampleCache(cache_dir)

        subjects = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not subjects:
            raise DatasetError("no_subjects", self.root, "no subject directories")
        self.classes: tuple[str, ...] = tuple(subjects)
        label_of = {s: i for i, s in enumerate(subjects)}
        recordings: dict[str, list[str]] = {}
        for s in subjects:
            files = [
                p.name
                for p in (self.root / s).iterdir()
                if p.is_file() and p.suffix.lower() in RECORDING_SUFFIXES and not p.name.startswith(".")
            ]
            if not files:
                raise DatasetError(
                    "no_recordings",
                    self.root / s,
                    f"no {'/'.join(RECORDING_SUFFIXES)} recordings in subject directory",
                )
            recordings[s] = sorted(files, key=natural_key)

        lists = {part: self.root / f"trials_to_{part}.txt" for part in ("train", "test")}
        parts = ("train", "test") if split == "all" else (split,)
        chosen: list[str] = []
        if any(p.exists() for p in lists.values()):
            for part in ("train", "test"):
                if not lists[part].is_file():
                    other = lists["test" if part == "train" else "train"]
                    raise MissingDataError("missing_file", lists[part], f"needed because {other.name} exists")
            for part in parts:
                for rel in read_list_file(lists[part]):
                    subject = Path(rel).parts[0] if len(Path(rel).parts) == 2 else None
                    if subject not in label_of:
                        raise DatasetError(
                            "bad_list", lists[part], f"{rel!r} is not <subject directory>/<recording file>"
                        )
                    if not (self.root / rel).is_file():
                        raise MissingDataError(
                            "missing_file", self.root / rel, f"listed in {lists[part].name}, not found"
                        )
                    chosen.append(rel)
        else:
            for s in subjects:
                files = recordings[s]
                k = train_count if train_count is not None else int(len(files) * train_fraction)
                for part in parts:
                    chosen += [f"{s}/{f}" for f in (files[:k] if part == "train" else files[k:])]
        self.samples: list[tuple[str, int]] = [(rel, label_of[Path(rel).parts[0]]) for rel in chosen]

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.samples]

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        rel, label = self.samples[index]
        key = str(Path(rel).with_suffix(""))
        if self.cache is not None:
            events = self.cache.load(key, label)
            if events is not None:
                return events, label
        path = self.root / rel
        events = check_events(read_event_text(path, self.columns, self.time_unit), self.sensor, path)
        if self.cache is not None:
            self.cache.store(key, events, label)
        return events, label
