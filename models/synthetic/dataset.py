"""The synthetic DVS gesture dataset: a deterministic sample list split by subject, and a live camera.

Nothing is stored: a sample is ``(label, subject, clip, seed)`` and :func:`generate` simulates its
events on demand (about 0.13 s of CPU a clip), bit-identical every time. Training subjects are
``0 .. num_subjects_train - 1`` and test subjects the next ``num_subjects_test`` ids, so the test
split measures generalisation to unseen people, rooms and sensor settings, as the DVS128 Gesture
split does. :func:`live_packets` plays an endless sequence of gestures as timed packets, which is
what the service and the streaming client use when no camera is attached.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from models.events.types import SensorSize
from models.synthetic.scenes import GESTURES
from models.synthetic.simulator import DvsParams, Recording, Source, draw_thresholds, simulate
from models.synthetic.subjects import clip_noise, clip_scene, subject_style

CLASSES: tuple[str, ...] = GESTURES

Split = Literal["train", "test"]


@dataclass(frozen=True)
class SyntheticConfig:
    """The dataset. ``noise_scale`` multiplies background activity and hot pixels, ``clutter_scale``
    the flicker and moving-texture amplitudes; 0 switches either off."""

    sensor: SensorSize = field(default_factory=lambda: SensorSize(128, 128))
    duration_us: int = 1_500_000
    num_subjects_train: int = 20
    num_subjects_test: int = 6
    clips_per_class_per_subject: int = 3
    seed: int = 0
    noise_scale: float = 1.0
    clutter_scale: float = 1.0
    dvs: DvsParams = field(default_factory=DvsParams)

    def __post_init__(self) -> None:
        if self.duration_us <= 0:
            raise ValueError(f"duration_us must be positive, got {self.duration_us}")
        if self.num_subjects_train < 0 or self.num_subjects_test < 0 or self.clips_per_class_per_subject < 0:
            raise ValueError("subject and clip counts must be >= 0")
        if self.noise_scale < 0 or self.clutter_scale < 0:
            raise ValueError("noise_scale and clutter_scale must be >= 0")


@dataclass(frozen=True)
class SampleSpec:
    """One clip: class index, subject id, clip number within (subject, class), and its own seed."""

    label: int
    subject: int
    clip: int
    seed: int

    @property
    def class_name(self) -> str:
        return CLASSES[self.label]


def subjects(cfg: SyntheticConfig, split: Split) -> range:
    """Subject ids of a split; the two ranges never overlap."""
    if split == "train":
        return range(cfg.num_subjects_train)
    if split == "test":
        return range(cfg.num_subjects_train, cfg.num_subjects_train + cfg.num_subjects_test)
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def clip_seed(cfg: SyntheticConfig, label: int, subject: int, clip: int) -> int:
    """Seed of one clip, derived from the dataset seed so that specs are reproducible from ids alone."""
    return int(np.random.SeedSequence([cfg.seed, 5, subject, label, clip]).generate_state(1, np.uint64)[0])


def sample_list(cfg: SyntheticConfig, split: Split) -> list[SampleSpec]:
    """All clips of a split, ordered by subject, then class, then clip."""
    return [
        SampleSpec(label, s, c, clip_seed(cfg, label, s, c))
        for s in subjects(cfg, split)
        for label in range(len(CLASSES))
        for c in range(cfg.clips_per_class_per_subject)
    ]


def generate_recording(spec: SampleSpec, cfg: SyntheticConfig) -> Recording:
    """Events of one clip, sorted by time, with the :class:`Source` of every event."""
    if not 0 <= spec.label < len(CLASSES):
        raise ValueError(f"label must be in 0..{len(CLASSES) - 1}, got {spec.label}")
    style = subject_style(cfg.seed, spec.subject, cfg.noise_scale, cfg.clutter_scale)
    rng = np.random.default_rng(spec.seed)
    room = np.random.default_rng([cfg.seed, 2, spec.subject])
    scene = clip_scene(spec.label, style, cfg.sensor, room, rng)
    # Threshold mismatch is a property of the one sensor; the subject's bias setting scales it.
    thresholds = draw_thresholds(
        cfg.sensor, cfg.dvs, np.random.default_rng([cfg.seed, 3]), style.threshold_scale
    )
    return simulate(scene, cfg.duration_us, cfg.dvs, clip_noise(style), rng, thresholds)


def generate(spec: SampleSpec, cfg: SyntheticConfig) -> np.ndarray:
    """Events (``EVENT_DTYPE``, sorted by ``t``, ``0 <= t < duration_us``) of one clip; deterministic."""
    return generate_recording(spec, cfg).events


class SyntheticEventDataset:
    """``dataset[i] -> (events, label)`` over :func:`sample_list`. Keeps the ``cache_size`` most recently
    used clips in memory (about 1 MB each); 0 disables the cache. ``classes`` and ``sensor`` give what
    a consumer needs to build frames and name predictions, as the real-data loaders do."""

    def __init__(self, cfg: SyntheticConfig, split: Split, cache_size: int = 32) -> None:
        self.cfg = cfg
        self.split = split
        self.classes: tuple[str, ...] = CLASSES
        self.sensor: SensorSize = cfg.sensor
        self.samples = sample_list(cfg, split)
        self.cache_size = cache_size
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        i %= len(self)
        spec = self.samples[i]
        events = self._cache.get(i)
        if events is None:
            events = generate(spec, self.cfg)
            if self.cache_size > 0:
                self._cache[i] = events
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(i)
        return events, spec.label

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]


def _class_indices(classes: Sequence[str | int] | None) -> list[int]:
    if classes is None:
        return list(range(len(CLASSES)))
    out = [CLASSES.index(c) if isinstance(c, str) else int(c) for c in classes]
    if not out or any(not 0 <= c < len(CLASSES) for c in out):
        raise ValueError(f"classes must be non-empty names or indices of {CLASSES}")
    return out


def live_packets(
    cfg: SyntheticConfig,
    packet_us: int = 10_000,
    realtime: bool = True,
    speed: float = 1.0,
    seed: int = 0,
    classes: Sequence[str | int] | None = None,
    split: Split = "test",
) -> Iterator[tuple[np.ndarray, int]]:
    """An endless synthetic camera: ``(events, label)`` packets of ``packet_us`` each.

    Gestures of random classes (from ``classes``) and random subjects of ``split`` follow one another,
    each ``cfg.duration_us`` long, on one continuous clock starting at 0. Packets never straddle two
    gestures, so every packet has one true label; the last packet of a gesture is shorter when
    ``packet_us`` does not divide the duration. Packets may be empty. With ``realtime`` the generator
    sleeps until a packet's end time has passed on the wall clock (divided by ``speed``), and the next
    gesture is simulated in a background thread while the current one plays.
    """
    if packet_us <= 0 or speed <= 0:
        raise ValueError("packet_us and speed must be positive")
    labels = _class_indices(classes)
    pool = subjects(cfg, split)
    if len(pool) == 0:
        raise ValueError(f"split {split!r} has no subjects")
    rng = np.random.default_rng([cfg.seed, 6, seed])

    def next_spec() -> SampleSpec:
        label = labels[int(rng.integers(len(labels)))]
        return SampleSpec(label, int(pool[int(rng.integers(len(pool)))]), -1, int(rng.integers(2**63)))

    executor = ThreadPoolExecutor(max_workers=1) if realtime else None

    def start(spec: SampleSpec) -> Future[np.ndarray] | np.ndarray:
        return executor.submit(generate, spec, cfg) if executor is not None else generate(spec, cfg)

    try:
        spec = next_spec()
        pending = start(spec)
        offset = 0
        wall0 = time.monotonic()
        while True:
            events = pending.result() if isinstance(pending, Future) else pending
            label = spec.label
            spec = next_spec()
            pending = start(spec)
            events = events.copy()
            events["t"] += offset
            end = offset + cfg.duration_us
            starts = np.arange(offset, end, packet_us, dtype=np.int64)
            cuts = np.searchsorted(events["t"], np.append(starts, end))
            for i, t0 in enumerate(starts):
                if realtime:
                    due = wall0 + min(int(t0) + packet_us, end) * 1e-6 / speed
                    delay = due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                yield events[cuts[i] : cuts[i + 1]], label
            offset = end
    finally:
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True)
class ClassStats:
    """Mean over clips of one class: event rate (k events / s), ON share, share of each source."""

    name: str
    clips: int
    kev_per_s: float
    on_fraction: float
    gesture_fraction: float
    clutter_fraction: float
    noise_fraction: float


def statistics(cfg: SyntheticConfig, n: int, split: Split = "train") -> list[ClassStats]:
    """Per-class statistics over ``n`` clips of each class in ``split``: clip 0 of every subject, then
    clip 1 of every subject, ... so that a small ``n`` still spans many subjects."""
    specs = sorted(sample_list(cfg, split), key=lambda s: (s.clip, s.subject))
    rows = []
    for label, name in enumerate(CLASSES):
        chosen = [s for s in specs if s.label == label][:n]
        rate, on, frac = [], [], []
        for spec in chosen:
            rec = generate_recording(spec, cfg)
            m = max(rec.events.size, 1)
            rate.append(rec.events.size / (cfg.duration_us * 1e-6) / 1e3)
            on.append(float(rec.events["p"].sum()) / m)
            counts = np.bincount(rec.source, minlength=len(Source)) / m
            frac.append((counts[Source.GESTURE], counts[Source.CLUTTER], counts[2:].sum()))
        f = np.mean(frac, axis=0) if frac else np.zeros(3)
        rows.append(
            ClassStats(
                name, len(chosen), float(np.mean(rate or [0])), float(np.mean(on or [0])), *map(float, f)
            )
        )
    return rows


def format_statistics(rows: list[ClassStats]) -> str:
    """A markdown table of :func:`statistics`, with a mean row."""
    head = "| class | clips | k events/s | ON share | gesture | clutter | sensor noise |\n|---|---|---|---|---|---|---|"
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.clips} | {r.kev_per_s:.1f} | {r.on_fraction:.2f} | "
            f"{r.gesture_fraction:.0%} | {r.clutter_fraction:.0%} | {r.noise_fraction:.0%} |"
        )
    if rows:
        m = [
            float(np.mean([getattr(r, k) for r in rows]))
            for k in ("kev_per_s", "on_fraction", "gesture_fraction", "clutter_fraction", "noise_fraction")
        ]
        lines.append(
            f"| **mean** | {sum(r.clips for r in rows)} | {m[0]:.1f} | {m[1]:.2f} | {m[2]:.0%} | {m[3]:.0%} | {m[4]:.0%} |"
        )
    return "\n".join(lines)
