"""Sample list, split, determinism, the dataset object and the live packet stream."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from models.events.types import SensorSize, validate_events
from models.synthetic.dataset import (
    CLASSES,
    SampleSpec,
    SyntheticConfig,
    SyntheticEventDataset,
    format_statistics,
    generate,
    generate_recording,
    live_packets,
    sample_list,
    statistics,
    subjects,
)
from models.synthetic.simulator import Source

SMALL = SyntheticConfig(
    sensor=SensorSize(64, 64),
    duration_us=300_000,
    num_subjects_train=3,
    num_subjects_test=2,
    clips_per_class_per_subject=2,
    seed=7,
)


def test_sample_list_sizes_and_disjoint_subjects():
    train, test = sample_list(SMALL, "train"), sample_list(SMALL, "test")
    assert len(train) == 3 * len(CLASSES) * 2
    assert len(test) == 2 * len(CLASSES) * 2
    assert {s.subject for s in train} == {0, 1, 2}
    assert {s.subject for s in test} == {3, 4}
    assert len({s.seed for s in train + test}) == len(train) + len(test)
    assert sample_list(SMALL, "train") == train  # the list itself is deterministic
    with pytest.raises(ValueError):
        subjects(SMALL, "val")  # type: ignore[arg-type]


def test_generate_is_deterministic_and_seed_dependent():
    spec = sample_list(SMALL, "train")[5]
    a, b = generate(spec, SMALL), generate(spec, SMALL)
    assert a.size > 0
    assert np.array_equal(a, b)
    other = generate(SampleSpec(spec.label, spec.subject, spec.clip, spec.seed + 1), SMALL)
    assert not np.array_equal(a, other)


@pytest.mark.parametrize("label", range(len(CLASSES)))
def test_every_class_generates_valid_sorted_events(label):
    spec = next(s for s in sample_list(SMALL, "test") if s.label == label)
    rec = generate_recording(spec, SMALL)
    validate_events(rec.events, SMALL.sensor)  # in range, polarity 0/1, sorted by t
    assert rec.events["t"].max() < SMALL.duration_us
    assert rec.source.shape == rec.events.shape
    # the gesture itself, not just noise: at least 1000 events/s of it
    assert np.count_nonzero(rec.source == Source.GESTURE) > 300


def test_without_noise_and_clutter_only_the_gesture_remains():
    cfg = SyntheticConfig(
        sensor=SensorSize(64, 64),
        duration_us=200_000,
        num_subjects_train=2,
        noise_scale=0.0,
        clutter_scale=0.0,
    )
    for spec in sample_list(cfg, "train")[::7]:
        rec = generate_recording(spec, cfg)
        assert rec.events.size > 0
        assert np.all(rec.source == Source.GESTURE)


def test_noise_scale_raises_background_activity():
    spec = sample_list(SMALL, "train")[0]
    quiet = generate_recording(spec, SMALL)
    loud = generate_recording(spec, SyntheticConfig(**{**SMALL.__dict__, "noise_scale": 4.0}))
    n_quiet = np.count_nonzero(quiet.source == Source.BACKGROUND_ACTIVITY)
    n_loud = np.count_nonzero(loud.source == Source.BACKGROUND_ACTIVITY)
    assert n_loud > 3 * n_quiet > 0


def test_dataset_items_and_bounded_cache():
    ds = SyntheticEventDataset(SMALL, "test", cache_size=2)
    assert len(ds) == len(sample_list(SMALL, "test"))
    assert ds.classes == CLASSES and ds.sensor == SMALL.sensor
    for i in (0, 1, 2, 1):
        events, label = ds[i]
        assert label == ds.samples[i].label
        assert np.array_equal(events, generate(ds.samples[i], SMALL))
    assert len(ds._cache) == 2
    assert list(ds._cache) == [2, 1]  # least recently used (0) evicted
    assert ds[-1][1] == ds.samples[-1].label
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_live_packets_are_continuous_sorted_and_labelled():
    packets = list(itertools.islice(live_packets(SMALL, packet_us=20_000, realtime=False, seed=3), 45))
    # 300 ms gestures cut into 20 ms packets: 15 packets per gesture, three gestures.
    for i, (events, label) in enumerate(packets):
        assert 0 <= label < len(CLASSES)
        if events.size:
            assert events["t"].min() >= i * 20_000
            assert events["t"].max() < (i + 1) * 20_000
        validate_events(events, SMALL.sensor)
    labels = [label for _, label in packets]
    for g in range(3):
        assert len(set(labels[15 * g : 15 * (g + 1)])) == 1
    stream = np.concatenate([e for e, _ in packets])
    assert np.all(np.diff(stream["t"]) >= 0)
    assert stream.size > 1000
    # the same seed gives the same stream
    again = list(itertools.islice(live_packets(SMALL, packet_us=20_000, realtime=False, seed=3), 45))
    assert all(np.array_equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(packets, again))


def test_live_packets_class_filter_and_uneven_last_packet():
    gen = live_packets(SMALL, packet_us=70_000, realtime=False, classes=["clap", 1], seed=1)
    packets = list(itertools.islice(gen, 10))  # 300 ms = 4 x 70 ms + 20 ms: 5 packets per gesture
    assert {label for _, label in packets} <= {CLASSES.index("clap"), 1}
    last = packets[4][0]
    assert last.size == 0 or last["t"].min() >= 280_000
    assert packets[5][0].size == 0 or packets[5][0]["t"].min() >= 300_000
    with pytest.raises(ValueError):
        next(live_packets(SMALL, classes=["juggle"], realtime=False))


def test_live_packets_realtime_pacing():
    # 8 packets of 20 ms at speed 4 must take at least 160 ms / 4 = 40 ms of wall time.
    start = time.monotonic()
    gen = live_packets(SMALL, packet_us=20_000, realtime=True, speed=4.0)
    list(itertools.islice(gen, 8))
    gen.close()
    assert time.monotonic() - start >= 0.04


def test_statistics_table():
    rows = statistics(SMALL, 1)
    assert [r.name for r in rows] == list(CLASSES)
    for r in rows:
        assert r.clips == 1 and r.kev_per_s > 0
        assert r.gesture_fraction + r.clutter_fraction + r.noise_fraction == pytest.approx(1.0)
    table = format_statistics(rows)
    assert table.count("\n") == len(CLASSES) + 2  # header, rule, classes, mean
