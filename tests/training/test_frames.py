"""Frame windows: the shared binner's frames, deterministic test clips, reproducible crops and drops."""

import numpy as np
import pytest
import torch

from models.events import BinnerConfig, SensorSize, encode_events, make_events
from training.frames import FrameDataset, SparseFrames, clip_starts, frame_cache_key, subset_indices


class Recordings:
    classes = ("a", "b")
    sensor = SensorSize(16, 8)

    def __init__(self, n=3, bins=10, per_bin=20):
        self.n, self.bins, self.per_bin = n, bins, per_bin

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        rng = np.random.default_rng(i)
        m = self.bins * self.per_bin
        t = np.sort(rng.integers(0, self.bins * 1000, m))
        t[0] = 0
        return make_events(t, rng.integers(0, 16, m), rng.integers(0, 8, m), rng.integers(0, 2, m)), i % 2


BINNER = BinnerConfig(SensorSize(16, 8), dt_us=1000, ds=2)


def test_clip_starts():
    assert clip_starts(30, 10, 3).tolist() == [0, 10, 20]
    assert clip_starts(29, 10, 10).tolist() == [0, 2, 4, 6, 8, 11, 13, 15, 17, 19]
    assert clip_starts(5, 10, 4).tolist() == [0, 0, 0, 0]  # shorter than a window: padded


def test_sparse_frames_round_trip():
    ev, _ = Recordings()[0]
    dense = encode_events(ev, BINNER)
    sf = SparseFrames.from_dense(dense, 1)
    bins, pix, count = sf.window(3, 4, dense[0].size)
    out = np.zeros((4, dense[0].size), np.float32)
    out[bins, pix] = count
    np.testing.assert_array_equal(out.reshape(4, *dense.shape[1:]), dense[3:7])


def test_test_clips_are_binner_windows():
    src = Recordings()
    ds = FrameDataset(src, BINNER, timesteps=4, train=False, clips=3)
    assert len(ds) == 9 and ds.recording_of(4) == 1
    ev, label = src[1]
    dense = encode_events(ev, BINNER)  # 10 bins -> clips at 0, 3, 6
    for clip, start in enumerate([0, 3, 6]):
        x, y = ds[3 + clip]
        assert x.dtype == torch.float32 and x.shape == (4, 2, 4, 8) and y == label
        np.testing.assert_array_equal(x.numpy(), dense[start : start + 4])
    assert ds.labels().tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 0]


def test_short_recording_is_padded():
    ds = FrameDataset(Recordings(bins=3), BINNER, timesteps=5, train=False, clips=2)
    x, _ = ds[0]
    assert x[3:].abs().sum() == 0 and x[:3].sum() > 0


def test_train_crops_reproducible_per_epoch():
    ds = FrameDataset(Recordings(bins=40), BINNER, timesteps=4, train=True, seed=3)
    starts0 = [ds.window_start(i) for i in range(3)]
    assert starts0 == [ds.window_start(i) for i in range(3)]
    ds.set_epoch(1)
    assert starts0 != [ds.window_start(i) for i in range(3)]
    no_crop = FrameDataset(Recordings(bins=40), BINNER, timesteps=4, train=True, crop=False)
    assert [no_crop.window_start(i) for i in range(3)] == [0, 0, 0]


def test_event_drop_thins_counts():
    src = Recordings(n=1, bins=8, per_bin=400)
    full = FrameDataset(src, BINNER, 8, train=True, crop=False)[0][0]
    dropped = FrameDataset(src, BINNER, 8, train=True, crop=False, event_drop=0.25)[0][0]
    assert torch.all(dropped <= full) and torch.equal(dropped, dropped.round())
    assert dropped.sum() / full.sum() == pytest.approx(0.75, abs=0.03)


def test_disk_cache(tmp_path):
    key = frame_cache_key({"name": "rec"}, BINNER)
    a = FrameDataset(Recordings(), BINNER, 4, train=False, clips=2, cache_dir=tmp_path, cache_key=key)
    a.warm()
    assert len(list((tmp_path / key).glob("*.npz"))) == 3

    class Broken(Recordings):
        def __getitem__(self, i):
            raise AssertionError("should come from the cache")

    b = FrameDataset(Broken(), BINNER, 4, train=False, clips=2, cache_dir=tmp_path, cache_key=key)
    for i in range(len(a)):
        assert torch.equal(a[i][0], b[i][0])
    assert frame_cache_key({"name": "rec"}, BinnerConfig(SensorSize(16, 8), dt_us=2000, ds=2)) != key


def test_subset_indices():
    assert subset_indices(5, None).tolist() == [0, 1, 2, 3, 4]
    sub = subset_indices(100, 10, seed=1)
    assert len(sub) == 10 and sorted(sub.tolist()) == sub.tolist() and sub.tolist() == subset_indices(100, 10, 1).tolist()
