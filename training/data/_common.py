"""Pieces shared by the dataset loaders: errors, split names, list files, a per-sample ``.npz`` cache.

Every error raised by the loaders is a :class:`DatasetError` (an :class:`~models.events.types.EventError`,
so a ``ValueError``) whose message starts with the file or directory at fault; a missing file or
directory is a :class:`MissingDataError`, which is also a ``FileNotFoundError``.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import numpy as np

from models.events.types import EVENT_DTYPE, EventError, SensorSize, validate_events

SPLITS = ("train", "test", "all")


class DatasetError(EventError):
    """A dataset file or directory that cannot be used. ``path`` names it; the message starts with it."""

    def __init__(self, code: str, path: str | os.PathLike[str], message: str) -> None:
        self.path = Path(path)
        super().__init__(code, f"{self.path}: {message}")


class MissingDataError(DatasetError, FileNotFoundError):
    """A file or directory the dataset needs is not there."""


def check_split(split: str, allowed: tuple[str, ...] = SPLITS) -> str:
    if split not in allowed:
        raise ValueError(f"split must be one of {', '.join(map(repr, allowed))}, got {split!r}")
    return split


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise MissingDataError("missing_dir", path, f"{what} directory not found")
    return path


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise MissingDataError("missing_file", path, f"{what} not found")
    return path


def read_list_file(path: Path) -> list[str]:
    """Names listed one a line; surrounding blanks and empty lines are ignored (the original files end
    with an empty line)."""
    require_file(path, "list file")
    names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    return [n for n in names if n]


def natural_key(name: str) -> tuple:
    """Sort key that orders ``rec2`` before ``rec10``."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def sort_by_time(events: np.ndarray) -> np.ndarray:
    """Events ordered by ``t`` (stable); the array itself when it is sorted already."""
    if events.size > 1 and np.any(np.diff(events["t"]) < 0):
        return events[np.argsort(events["t"], kind="stable")]
    return events


def check_events(events: np.ndarray, sensor: SensorSize, path: Path) -> np.ndarray:
    """``validate_events`` with the file named in the error."""
    try:
        validate_events(events, sensor)
    except EventError as err:
        raise DatasetError(err.code, path, str(err)) from None
    return events


def slice_time(events: np.ndarray, start: int | None, end: int | None) -> np.ndarray:
    """Copy of the events with ``start <= t < end`` from a time-sorted array (``None``: open end)."""
    t = events["t"]
    lo = 0 if start is None else int(np.searchsorted(t, start, side="left"))
    hi = t.size if end is None else int(np.searchsorted(t, end, side="left"))
    return events[lo : max(lo, hi)].copy()


class SampleCache:
    """One ``.npz`` file a sample, ``<cache_dir>/<key>.npz`` holding ``events`` and ``label``.

    Writes go to a temporary file that is renamed into place, so data-loader workers that fill the
    same cache at once never see half a file.
    """

    def __init__(self, cache_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(cache_dir)

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.npz"

    def load(self, key: str, label: int) -> np.ndarray | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                events, stored = z["events"], int(z["label"])
        except (OSError, ValueError, KeyError) as err:
            raise DatasetError("bad_cache", path, f"unreadable cache file ({err}); delete it") from None
        if events.dtype != EVENT_DTYPE:
            raise DatasetError("bad_cache", path, f"cached events have dtype {events.dtype}; delete it")
        if stored != label:
            raise DatasetError(
                "bad_cache", path, f"cached label {stored} but the dataset says {label}; delete the cache"
            )
        return events

    def store(self, key: str, events: np.ndarray, label: int) -> Path:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, events=events, label=np.int64(label))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path
