"""Redundancy metrics (training/analysis/metrics.py) on hand-built tensors whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.instrument import EnergyModel
from training.analysis import metrics as M


def _maps() -> np.ndarray:
    """N-SFR of a conv layer [T=2, C=3, H=2, W=2]: c0 fires everywhere, c1 never, c2 in one corner at t=1."""
    nsfr = np.zeros((2, 3, 2, 2))
    nsfr[:, 0] = 1.0
    nsfr[1, 2, 0, 0] = 1.0
    return nsfr


def test_n_sfr_divides_spike_sums_by_samples() -> None:
    sums = torch.tensor([[0.0, 2.0, 4.0]])
    assert M.n_sfr(sums, 4).tolist() == [[0.0, 0.5, 1.0]]
    with pytest.raises(ValueError):
        M.n_sfr(sums, 0)


def test_c_sfr_of_a_channel_firing_everywhere_is_one() -> None:
    c = M.c_sfr(_maps())
    assert c.shape == (2, 3)
    assert c[:, 0].tolist() == [1.0, 1.0]
    assert c[:, 1].tolist() == [0.0, 0.0]
    assert c[:, 2].tolist() == [0.0, 0.25]


def test_c_sfr_treats_an_fc_layer_as_one_channel() -> None:
    assert M.c_sfr(np.array([[1.0, 0.0, 0.0, 1.0]])).tolist() == [[0.5]]


def test_t_sfr_and_flatness() -> None:
    ts = M.t_sfr(_maps())
    assert ts.tolist() == pytest.approx([4 / 12, 5 / 12])
    assert M.flatness(np.array([0.2, 0.2, 0.2])) == pytest.approx(0.0, abs=1e-12)
    assert M.flatness(np.array([0.0, 0.2])) == pytest.approx(1.0)  # std 0.1 / mean 0.1
    assert math.isnan(M.flatness(np.zeros(3)))


def test_network_t_sfr_weights_layers_by_neurons() -> None:
    a = np.ones((2, 4))  # 4 neurons always firing
    b = np.zeros((2, 3, 2, 2))  # 12 neurons silent
    assert M.network_t_sfr([a, b]).tolist() == [0.25, 0.25]
    assert M.nasfr([a, b]) == 0.25


def test_nasfr_from_maps_equals_energy_model_from_counts() -> None:
    """The four granularities are consistent: NASFR of the maps = spikes / (neurons * T * samples)."""
    rng = np.random.default_rng(0)
    samples, t = 5, 3
    sums = [rng.integers(0, samples + 1, size=(t, 2, 3, 3)).astype(float), rng.integers(0, samples + 1, size=(t, 7)).astype(float)]
    em = EnergyModel(("a", "b"), (18, 7), (1.0, 0.0), 0)
    counts = torch.tensor([s.sum() for s in sums]) / samples  # mean spikes per sample per layer
    assert M.nasfr([M.n_sfr(s, samples) for s in sums]) == pytest.approx(float(em.nasfr(counts, t)))


def test_pct_change() -> None:
    assert M.pct_change(0.2, 0.05) == pytest.approx(-75.0)
    assert math.isnan(M.pct_change(0.0, 1.0))


def test_feature_similarity_and_ghosts() -> None:
    f = np.array([[1.0, 0, 0, 0], [2.0, 0, 0, 0], [0, 1.0, 1.0, 0], [0, 0, 0, 0]])
    sim = M.feature_similarity(f)
    assert sim[0, 1] == pytest.approx(1.0)  # same pattern at another rate: a ghost
    assert sim[0, 2] == 0.0
    assert sim[3].tolist() == [0, 0, 0, 0]  # a silent channel has no direction
    g = M.ghost_stats(sim, np.array([True, True, True, False]), threshold=0.9)
    assert g["pairs"] == 1 and g["channels"] == 2
    assert g["duplicate"].tolist() == [True, True, False, False]
    assert g["mean_similarity"] == pytest.approx(1 / 3)  # off-diagonal mean over the 3 active: (1 + 0 + 0) / 3
    assert math.isnan(M.ghost_stats(sim, np.array([True, False, False, False]))["mean_similarity"])


def test_event_region_takes_the_densest_pixels_holding_the_mass() -> None:
    frames = torch.zeros(2, 1, 2, 4, 4)  # [T, B, P, H, W]
    frames[0, 0, 0, 1, 1] = 6
    frames[1, 0, 1, 1, 1] = 4  # pixel (1, 1): 10 events over both timesteps and polarities
    frames[0, 0, 0, 2, 2] = 5
    for y, x in [(0, 0), (0, 3), (3, 0), (3, 3), (0, 2)]:
        frames[1, 0, 0, y, x] = 1  # 5 isolated noise events; 20 in all
    region = M.event_region(frames, mass=0.75)  # 15 events: pixels (1, 1) and (2, 2)
    assert region.shape == (1, 4, 4)
    assert region.sum() == 2 and region[0, 1, 1] == 1 and region[0, 2, 2] == 1
    assert M.event_region(frames, mass=1.0).sum() == 7
    assert M.event_region(torch.zeros(2, 1, 2, 4, 4)).sum() == 0


def test_region_cells_on_a_coarser_grid() -> None:
    region = torch.zeros(1, 4, 4)
    region[0, 0, 0] = 1
    cells = M.region_cells(region, (2, 2))
    assert cells.tolist() == [[[1.0, 0.0], [0.0, 0.0]]]


def test_background_share_entropy_and_patterns() -> None:
    bg = M.background_share(np.array([10.0, 10.0, 0.0]), np.array([2.0, 9.0, 0.0]))
    assert bg[:2].tolist() == pytest.approx([0.8, 0.1])
    assert math.isnan(bg[2])
    feats = np.zeros((3, 2, 2))
    feats[0] = 0.5  # evenly spread
    feats[1, 0, 0] = 1.0  # one position
    ent = M.spatial_entropy(feats)
    assert ent[0] == pytest.approx(1.0) and ent[1] == 0.0 and math.isnan(ent[2])
    # the region covers half the grid (u = 0.5): 80 % of spikes off it is 4x denser off than on it
    ratio = M.background_density_ratio(bg, 0.5)
    assert ratio[:2].tolist() == pytest.approx([4.0, 1 / 9])
    assert math.isnan(ratio[2])
    assert M.background_density_ratio(np.array([1.0]), 0.5)[0] == np.inf
    assert math.isnan(M.background_density_ratio(np.array([0.5]), 1.0)[0])  # no region at all
    pat = M.classify_patterns(np.array([0.3, 0.2, 0.001]), ratio, min_rate=0.01, noise_ratio=1.0)
    assert pat.tolist() == [M.NOISE, M.NORMAL, M.NULL]
    even = M.background_density_ratio(np.array([0.9]), 0.9)  # firing evenly: no preference
    assert even[0] == pytest.approx(1.0)


def test_ptd_of_a_known_histogram() -> None:
    edges = np.linspace(0.0, 1.0, 11)  # centres 0.05 .. 0.95
    hist = np.array([0, 1, 2, 9, 8, 7, 0, 0, 0, 0])
    # three tallest: bins 3, 4, 5 (centres 0.35, 0.45, 0.55); peak interval centre 0.45
    assert M.ptd(hist, edges, v_th=0.3) == pytest.approx(0.15)
    ties = np.array([5, 0, 5, 0, 5, 0, 5, 0, 0, 0])  # ties go to the lower bins: 0.05, 0.25, 0.45
    assert M.ptd(ties, edges, v_th=0.0) == pytest.approx(0.25)
    both = M.ptd(np.stack([hist, np.zeros(10)]), edges, v_th=0.3)
    assert both[0] == pytest.approx(0.15) and math.isnan(both[1])


def test_variance_from_moments() -> None:
    x = np.array([0.1, -0.4, 0.7, 0.2])
    assert M.variance(np.array(4), np.array(x.sum()), np.array((x**2).sum())) == pytest.approx(x.var())
    assert math.isnan(M.variance(np.array([0]), np.array([0.0]), np.array([0.0]))[0])


def test_quantization_error_of_known_values() -> None:
    u = torch.tensor([0.5, 0.1, 1.2])
    s = torch.tensor([1.0, 0.0, 1.0])
    assert M.quantization_error(u, s) == pytest.approx((0.25 + 0.01 + 0.04) / 3)


def test_mask_stability_and_agreement() -> None:
    m1 = torch.tensor([[[1.0, 0.0]], [[1.0, 1.0]], [[1.0, 0.0]]])  # [T=3, B=1, C=2]
    assert M.mask_stability(m1).tolist() == [[1.0, 0.0]]
    assert M.mask_stability(m1[:1]).tolist() == [[1.0, 1.0]]
    assert M.mask_agreement(np.array([[1.0, 0.0], [0.5, 0.75]])) == pytest.approx((1 + 1 + 0.5 + 0.75) / 4)
