"""The event source and frame datasets a :class:`~training.config.TrainConfig` names.

``open_source(cfg, split)`` opens the recordings (the synthetic gestures or a real dataset loader in
:mod:`training.data`); ``frame_dataset(cfg, source, split, train)`` turns them into the
:class:`~training.frames.FrameDataset` of fixed-length windows that training, ``asasnn eval`` and
``asasnn analyze`` read, binned and cached the same way everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models.events import BinnerConfig
from training.config import TrainConfig
from training.frames import EventSource, FrameDataset, frame_cache_key, subset_indices


def open_source(cfg: TrainConfig, split: str) -> EventSource:
    """The event dataset named by the configuration (``synthetic`` or a real loader)."""
    if cfg.dataset == "synthetic":
        return synthetic_source(cfg.synthetic, split)
    import inspect

    from training.data import DATASETS, open_dataset

    opts: dict[str, Any] = {}
    if cfg.cache_dir and "cache_dir" in inspect.signature(DATASETS[cfg.dataset]).parameters:
        opts["cache_dir"] = str(Path(cfg.cache_dir) / f"events-{cfg.dataset}")
    return open_dataset(cfg.dataset, cfg.root, split, **opts)


def synthetic_source(options: dict[str, Any], split: str) -> EventSource:
    """The synthetic gesture source; ``options`` override :class:`models.synthetic.SyntheticConfig`
    (``sensor: [width, height]``, ``dvs: {...}`` for the nested ones)."""
    from models.events import SensorSize
    from models.synthetic import CLASSES, DvsParams, SyntheticConfig, SyntheticEventDataset

    kw = dict(options)
    if "sensor" in kw and not isinstance(kw["sensor"], SensorSize):
        kw["sensor"] = SensorSize(*kw["sensor"])
    if "dvs" in kw and isinstance(kw["dvs"], dict):
        kw["dvs"] = DvsParams(**kw["dvs"])
    syn = SyntheticConfig(**kw)
    ds = SyntheticEventDataset(syn, split, cache_size=0)  # frames are cached here, not events
    if not hasattr(ds, "classes"):
        ds.classes = CLASSES  # type: ignore[attr-defined]
    if not hasattr(ds, "sensor"):
        ds.sensor = syn.sensor  # type: ignore[attr-defined]
    return ds


def source_description(cfg: TrainConfig, split: str) -> dict[str, Any]:
    """What identifies a split's recordings (part of the frame cache key)."""
    if cfg.dataset == "synthetic":
        return {"dataset": "synthetic", "split": split, "options": cfg.synthetic}
    return {"dataset": cfg.dataset, "root": str(Path(cfg.root or ".").resolve()), "split": split}


def binner_for(cfg: TrainConfig, source: EventSource) -> BinnerConfig:
    return BinnerConfig(source.sensor, cfg.dt_us, cfg.ds)


def frame_dataset(cfg: TrainConfig, source: EventSource, split: str, train: bool) -> FrameDataset:
    """Training windows (``train``: random crops, event drop, ``limit_train``) or validation clips
    (``test_clips`` a recording, ``limit_val``) of ``source``, cached under ``cache_dir``."""
    binner = binner_for(cfg, source)
    limit = cfg.limit_train if train else cfg.limit_val
    return FrameDataset(
        source, binner, cfg.timesteps, train=train, clips=cfg.test_clips, crop=cfg.crop,
        event_drop=cfg.event_drop if train else 0.0, seed=cfg.seed,
        indices=subset_indices(len(source), limit, cfg.seed),
        cache_dir=cfg.cache_dir, cache_key=frame_cache_key(source_description(cfg, split), binner),
    )


__all__ = ["binner_for", "frame_dataset", "open_source", "source_description", "synthetic_source"]
