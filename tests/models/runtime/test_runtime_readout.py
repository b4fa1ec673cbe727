"""Readout: running predictions pinned by hand-computed numbers."""

import numpy as np
import pytest

from models.runtime.readout import Readout


def test_horizon_mean_over_the_last_rows():
    r = Readout(3, "horizon", horizon=2)
    p = r.update([1, 0, 0])
    np.testing.assert_allclose(p.score, [1, 0, 0])
    assert p.label == 0 and p.steps == 1
    p = r.update([0, 1, 1])  # mean of the two rows
    np.testing.assert_allclose(p.score, [0.5, 0.5, 0.5])
    np.testing.assert_allclose(p.probs, [1 / 3, 1 / 3, 1 / 3])
    assert p.label == 0  # ties go to the lowest index
    p = r.update([0, 0, 1])  # the first row left the horizon
    np.testing.assert_allclose(p.score, [0, 0.5, 1.0])
    np.testing.assert_allclose(p.probs, [0, 1 / 3, 2 / 3], rtol=1e-6)
    assert p.label == 2


def test_horizon_long_stream_has_no_drift():
    r = Readout(2, "horizon", horizon=3)
    rng = np.random.default_rng(0)
    rows = rng.random((1000, 2))
    for row in rows:
        p = r.update(row)
    np.testing.assert_allclose(p.score, rows[-3:].mean(0), rtol=1e-6)


def test_ema_is_bias_corrected():
    r = Readout(2, "ema", alpha=0.5)
    p = r.update([1, 0])  # 0.5 / (1 - 0.5)
    np.testing.assert_allclose(p.score, [1, 0])
    p = r.update([0, 1])  # ema = [0.25, 0.5], / 0.75
    np.testing.assert_allclose(p.score, [1 / 3, 2 / 3], rtol=1e-6)
    assert p.label == 1


def test_silence_gives_uniform_probabilities_and_reset_forgets():
    r = Readout(4, "horizon", horizon=5)
    p = r.update(np.zeros(4))
    np.testing.assert_allclose(p.probs, 0.25)
    r.update([0, 0, 1, 0])
    r.reset()
    p = r.update(np.zeros(4))
    np.testing.assert_allclose(p.score, 0)
    assert p.steps == 1


def test_bad_arguments():
    with pytest.raises(ValueError):
        Readout(3, "mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Readout(3, "ema", alpha=0)
    with pytest.raises(ValueError):
        Readout(3).update([1, 2])
