"""Recordings of events -> fixed-length frame windows for training and testing.

Every recording is encoded once, whole, with :func:`models.events.encode_events` (the binner the
service runs on live streams) and kept as sparse frames (non-zero ``(bin, pixel, count)`` triples) in
memory and, with a cache directory, on disk. Windows are cut from those:

* **train**: one item per recording, a window of ``T`` bins at a random start (new every epoch,
  reproducible from ``(seed, epoch, index)``), with optional event drop. Dropping each event
  independently with probability ``p`` is the same, in distribution, as binomial thinning of every
  bin's count, so event drop is applied to the cached counts.
* **test**: ``clips`` items per recording, windows at evenly spaced starts from the first bin to the
  last full window (the paper's protocol: 10 clips per recording, majority vote over them). A
  recording shorter than ``T`` bins is padded with empty frames at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from models.events import BinnerConfig, SensorSize, encode_events


class EventSource(Protocol):
    """What a dataset of recordings provides: ``source[i] -> (events, label)``."""

    classes: tuple[str, ...] | list[str]
    sensor: SensorSize

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]: ...


class SparseFrames(NamedTuple):
    """A recording's frames ``[n_bins, 2, H, W]`` as the non-zero counts, ordered by bin."""

    n_bins: int
    ptr: np.ndarray  # [n_bins + 1] int64: entries of bin k are ptr[k]:ptr[k + 1]
    pix: np.ndarray  # flat index into one frame (2*H*W), int32
    count: np.ndarray  # float32
    label: int

    @classmethod
    def from_dense(cls, frames: np.ndarray, label: int) -> SparseFrames:
        flat = frames.reshape(frames.shape[0], -1)
        b, p = np.nonzero(flat)
        ptr = np.searchsorted(b, np.arange(frames.shape[0] + 1)).astype(np.int64)
        return cls(frames.shape[0], ptr, p.astype(np.int32), flat[b, p].astype(np.float32), int(label))

    def window(self, start: int, length: int, frame_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(bin within the window, pixel, count) of bins ``[start, start + length)``."""
        lo, hi = self.ptr[min(start, self.n_bins)], self.ptr[min(start + length, self.n_bins)]
        bins = np.searchsorted(self.ptr, np.arange(lo, hi), side="right") - 1 - start
        return bins, self.pix[lo:hi], self.count[lo:hi]


def clip_starts(n_bins: int, timesteps: int, clips: int) -> np.ndarray:
    """Start bins of ``clips`` windows of ``timesteps`` bins spread evenly over ``n_bins`` bins."""
    last = max(n_bins - timesteps, 0)
    return np.rint(np.linspace(0, last, clips)).astype(np.int64)


def subset_indices(n: int, limit: int | None, seed: int = 0) -> np.ndarray:
    """All of ``range(n)``, or a fixed random subset of ``limit`` of them (sorted)."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:limit])


class FrameDataset(Dataset):
    """``(frames [T, 2, H, W] float32, label)`` windows of an event source (see the module docstring).

    ``cache_key`` names the source and binning for the disk cache (``cache_dir/cache_key/i.npz``); use
    :func:`frame_cache_key`. :meth:`warm` encodes everything up front, in the main process, so data
    loader workers start with a full memory cache.
    """

    def __init__(
        self,
        source: EventSource,
        binner: BinnerConfig,
        timesteps: int,
        train: bool,
        clips: int = 10,
        crop: bool = True,
        event_drop: float = 0.0,
        seed: int = 0,
        indices: np.ndarray | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        cache_key: str | None = None,
    ) -> None:
        self.source, self.binner, self.timesteps, self.train = source, binner, timesteps, train
        self.clips = 1 if train else clips
        self.crop, self.event_drop, self.seed = crop, event_drop, seed
        self.indices = np.arange(len(source)) if indices is None else np.asarray(indices)
        self.cache_path = Path(cache_dir) / cache_key if cache_dir and cache_key else None
        self.epoch = 0
        self.frame_shape = binner.frame_shape
        self._frame_size = int(np.prod(self.frame_shape))
        self._memory: dict[int, SparseFrames] = {}

    @property
    def classes(self) -> list[str]:
        return list(self.source.classes)

    @property
    def num_recordings(self) -> int:
        return len(self.indices)

    def set_epoch(self, epoch: int) -> None:
        """Makes the random crops and drops of ``epoch`` (reproducible, independent of workers)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_recordings * self.clips

    def recording_of(self, item: int) -> int:
        """The recording (0 .. num_recordings-1) an item belongs to."""
        return item // self.clips

    def labels(self) -> np.ndarray:
        """Label of every item (encodes the recordings not yet cached)."""
        return np.array([self.frames(self.recording_of(i)).label for i in range(len(self))], dtype=np.int64)

    # ---- encoding and caching ---------------------------------------------------------------------
    def frames(self, rec: int) -> SparseFrames:
        """The encoded frames of recording ``rec`` (position in ``indices``)."""
        hit = self._memory.get(rec)
        if hit is not None:
            return hit
        src = int(self.indices[rec])
        sf = self._load(src)
        if sf is None:
            events, label = self.source[src]
            dense = encode_events(events, self.binner)
            sf = SparseFrames.from_dense(dense, label)
            self._store(src, sf)
        self._memory[rec] = sf
        return sf

    def warm(self, progress: bool = False, desc: str = "encode") -> None:
        from tqdm import tqdm

        for rec in tqdm(range(self.num_recordings), desc=desc, disable=not progress, leave=False):
            self.frames(rec)

    def _file(self, src: int) -> Path | None:
        return None if self.cache_path is None else self.cache_path / f"{src}.npz"

    def _load(self, src: int) -> SparseFrames | None:
        path = self._file(src)
        if path is None or not path.is_file():
            return None
        with np.load(path) as z:
            return SparseFrames(int(z["n_bins"]), z["ptr"], z["pix"], z["count"], int(z["label"]))

    def _store(self, src: int, sf: SparseFrames) -> None:
        path = self._file(src)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{src}.", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, n_bins=sf.n_bins, ptr=sf.ptr, pix=sf.pix, count=sf.count, label=sf.label)
            os.replace(tmp, path)  # atomic: concurrent workers / ranks never read half a file
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # ---- items ------------------------------------------------------------------------------------
    def window_start(self, item: int) -> int:
        rec = self.recording_of(item)
        sf = self.frames(rec)
        if not self.train:
            return int(clip_starts(sf.n_bins, self.timesteps, self.clips)[item % self.clips])
        if not self.crop or sf.n_bins <= self.timesteps:
            return 0
        return int(self._rng(item).integers(0, sf.n_bins - self.timesteps + 1))

    def _rng(self, item: int, stream: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, item, stream])

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int]:
        if not 0 <= item < len(self):
            raise IndexError(item)
        sf = self.frames(self.recording_of(item))
        start = self.window_start(item)
        bins, pix, count = sf.window(start, self.timesteps, self._frame_size)
        if self.train and self.event_drop > 0 and count.size:
            rng = self._rng(item, stream=1)  # independent of the crop draw
            count = rng.binomial(count.astype(np.int64), 1.0 - self.event_drop).astype(np.float32)
        out = np.zeros(self.timesteps * self._frame_size, dtype=np.float32)
        out[bins * self._frame_size + pix] = count
        return torch.from_numpy(out.reshape(self.timesteps, *self.frame_shape)), sf.label


def frame_cache_key(source_desc: dict[str, Any], binner: BinnerConfig) -> str:
    """A directory name that changes whenever the recordings or the binning change."""
    desc = {"source": source_desc, "sensor": [binner.sensor.width, binner.sensor.height],
            "dt_us": binner.dt_us, "ds": binner.ds, "mode": binner.mode, "max_gap": binner.max_gap_bins}
    digest = hashlib.sha1(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"frames-{digest}"


__all__ = ["EventSource", "FrameDataset", "SparseFrames", "clip_starts", "frame_cache_key", "subset_indices"]
