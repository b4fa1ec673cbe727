"""Redundancy metrics of the paper (sections 3.2 and 5.5) as pure functions on arrays.

Nothing here runs a network: the inputs are what the probes accumulate during the one evaluation
pass (:class:`models.instrument.SpikeMapProbe` spike sums, :class:`~training.analysis.probes.MembraneStatsProbe`
histograms and moments, :class:`~training.analysis.probes.RegionProbe` spike sums inside the event
region). Shapes use ``T`` timesteps, ``C`` channels, ``H, W`` a layer's spatial size.

Definitions (the paper's, docs/metrics.md and docs/analysis.md):

* **N-SFR** of a neuron at ``t``: fraction of test samples in which it spikes at ``t``.
* **C-SFR** / **T-SFR**: mean N-SFR over a channel / over all neurons at ``t``.
* **NASFR**: mean T-SFR over ``t`` of the whole network, ``sum_l fr_l N_l / sum_l N_l``.
* **Spike feature** (definition 2): the ``[H, W]`` map of N-SFR of one channel at one ``t``.
* **Ghost features** (definition 3): near-identical spike features within a layer; here cosine
  similarity of the channels' spike features (all timesteps joined) at or above a threshold.
* **MPD** (definition 5): histogram of a channel's membrane potentials ``U``.
* **PTD** (definition 6): centre of the peak interval (mean of the centres of the three tallest MPD
  bins) minus ``Vth``.
* **QE**: mean of ``(U - S)^2`` over the values.
* **Noise / normal pattern** (definition 4): a *heuristic* (the paper classifies by eye). See
  :func:`event_region` and :func:`classify_patterns`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

NOISE, NORMAL, NULL = "noise", "normal", "null"


# ---- firing rates ----------------------------------------------------------------------------------
def n_sfr(spike_sum: Tensor | np.ndarray, samples: int) -> np.ndarray:
    """N-SFR ``[T, ...]`` from per-neuron spike sums over ``samples`` samples (``SpikeMapProbe.maps``)."""
    if samples <= 0:
        raise ValueError("no samples")
    return np.asarray(spike_sum, dtype=np.float64) / samples


def c_sfr(nsfr: np.ndarray) -> np.ndarray:
    """C-SFR ``[T, C]``: mean N-SFR over each channel's positions (conv ``[T, C, H, W]``; an fc layer
    ``[T, N]`` counts as one channel)."""
    nsfr = np.asarray(nsfr)
    if nsfr.ndim == 2:
        return nsfr.mean(axis=1, keepdims=True)
    return nsfr.reshape(*nsfr.shape[:2], -1).mean(axis=2)


def t_sfr(nsfr: np.ndarray) -> np.ndarray:
    """T-SFR ``[T]`` of one layer: mean N-SFR over all its neurons at each timestep."""
    nsfr = np.asarray(nsfr)
    return nsfr.reshape(nsfr.shape[0], -1).mean(axis=1)


def network_t_sfr(nsfrs: Sequence[np.ndarray]) -> np.ndarray:
    """T-SFR ``[T]`` of the whole network: every neuron of every layer weighted equally."""
    spikes = sum(np.asarray(m).reshape(m.shape[0], -1).sum(axis=1) for m in nsfrs)
    neurons = sum(int(np.prod(m.shape[1:])) for m in nsfrs)
    return spikes / neurons


def nasfr(nsfrs: Sequence[np.ndarray]) -> float:
    """Network average SFR: the mean over timesteps of the network T-SFR."""
    return float(network_t_sfr(nsfrs).mean())


def flatness(tsfr: np.ndarray) -> float:
    """Coefficient of variation of a T-SFR curve (std / mean over t): 0 when flat (observation 2)."""
    tsfr = np.asarray(tsfr, dtype=np.float64)
    m = tsfr.mean()
    return float(tsfr.std() / m) if m > 0 else math.nan


def pct_change(base: float, new: float) -> float:
    """Relative change from ``base`` to ``new`` in percent (nan when ``base`` is 0)."""
    return 100.0 * (new - base) / base if base else math.nan


# ---- ghost features --------------------------------------------------------------------------------
def feature_similarity(features: np.ndarray) -> np.ndarray:
    """Cosine similarity ``[C, C]`` of the channels' spike features ``[C, ...]`` (flattened).

    A channel that never spikes has no direction: its similarity to every channel is 0 (itself included).
    """
    f = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    norm = np.linalg.norm(f, axis=1)
    unit = np.divide(f, norm[:, None], out=np.zeros_like(f), where=norm[:, None] > 0)
    return unit @ unit.T


def ghost_stats(sim: np.ndarray, active: np.ndarray, threshold: float = 0.9) -> dict[str, object]:
    """Near-duplicate channels among the ``active`` ones: pairs with similarity >= ``threshold``.

    Returns ``pairs`` (count), ``channels`` (how many active channels have at least one near
    duplicate), ``duplicate`` (bool per channel) and ``mean_similarity`` (mean off-diagonal
    similarity among the active channels; nan with fewer than two).
    """
    sim, active = np.asarray(sim), np.asarray(active, dtype=bool)
    both = active[:, None] & active[None, :]
    np.fill_diagonal(both, False)
    close = both & (sim >= threshold)
    n_act = int(active.sum())
    mean = float(sim[both].mean()) if n_act > 1 else math.nan
    return {
        "pairs": int(np.triu(close, 1).sum()),
        "channels": int(close.any(axis=1).sum()),
        "duplicate": close.any(axis=1),
        "mean_similarity": mean,
    }


# ---- noise pattern (heuristic) ---------------------------------------------------------------------
def event_region(frames: Tensor, mass: float = 0.8) -> Tensor:
    """Where the input events of each sample are concentrated: ``[T, B, P, H, W] -> [B, H, W]`` (0/1).

    Heuristic: the events of the whole window are counted per pixel (both polarities) and the
    region is the smallest set of pixels holding ``mass`` of them (densest first). On the synthetic
    gestures, ``mass = 0.8`` captures about 90 % of the gesture's events at about 90 % purity; sensor
    noise spreads thinly over the frame and falls outside (measured with the simulator's per-event
    source labels at 32x32, T=16 x 15 ms: 93 % of the gesture's events inside, 87 % of the events
    inside from the gesture, 9 % of the frame). A sample without events has an empty region.
    """
    if not 0 < mass <= 1:
        raise ValueError(f"mass must be in (0, 1], got {mass}")
    counts = frames.detach().float().sum(dim=(0, 2)).flatten(1)  # [B, H*W]
    srt, order = counts.sort(dim=1, descending=True)
    total = srt.sum(dim=1, keepdim=True)
    before = srt.cumsum(dim=1) - srt  # mass of the denser pixels
    keep_sorted = (before < mass * total) & (srt > 0)
    region = torch.zeros_like(counts).scatter(1, order, keep_sorted.float())
    return region.view(counts.shape[0], *frames.shape[-2:])


def region_cells(region: Tensor, size: tuple[int, int]) -> Tensor:
    """The region on a layer's coarser ``size`` grid: a cell belongs to it when any of its input pixels
    does (``[B, H, W] -> [B, h, w]``, 0/1)."""
    return F.adaptive_max_pool2d(region.unsqueeze(1).float(), size).squeeze(1)


def background_share(spikes: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Fraction of each channel's spikes outside the event region (nan for a silent channel)."""
    spikes, inside = np.asarray(spikes, dtype=np.float64), np.asarray(inside, dtype=np.float64)
    return np.divide(spikes - inside, spikes, out=np.full_like(spikes, np.nan), where=spikes > 0)


def background_density_ratio(bg_share: np.ndarray, uniform_share: float) -> np.ndarray:
    """How much more densely a channel fires off the event region than on it: the odds ratio
    ``(bg / u) / ((1 - bg) / (1 - u))`` of its background share ``bg`` against ``u``, the background
    share of firing evenly everywhere (the region's complement of the grid). 1 = no preference, > 1
    = prefers the background, < 1 = prefers the events; inf when every spike is off the region, nan
    for a silent channel or when ``u`` is 0 or 1 (no region / region everywhere)."""
    bg = np.asarray(bg_share, dtype=np.float64)
    if not 0.0 < uniform_share < 1.0:
        return np.full(bg.shape, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (bg / uniform_share) / ((1.0 - bg) / (1.0 - uniform_share))


def spatial_entropy(features: np.ndarray) -> np.ndarray:
    """Normalised entropy in [0, 1] of each channel's spike feature ``[C, H, W]`` seen as a distribution
    over positions: 1 = spikes spread evenly over the frame, 0 = all at one position (nan if silent)."""
    f = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    tot = f.sum(axis=1, keepdims=True)
    p = np.divide(f, tot, out=np.zeros_like(f), where=tot > 0)
    h = -(p * np.log(p, out=np.zeros_like(p), where=p > 0)).sum(axis=1)
    out = h / math.log(f.shape[1]) if f.shape[1] > 1 else np.zeros(len(f))
    return np.where(tot[:, 0] > 0, out, np.nan)


def classify_patterns(
    csfr: np.ndarray, density_ratio: np.ndarray, min_rate: float = 0.01, noise_ratio: float = 1.0
) -> np.ndarray:
    """Per channel ``"null"`` (C-SFR < ``min_rate``: hardly spikes, the paper's empty features),
    ``"noise"`` (fires at least ``noise_ratio`` times as densely off the event region as on it, see
    :func:`background_density_ratio`) or ``"normal"`` (nan ratios count as normal).

    A heuristic stand-in for the paper's visual classification (definition 4).
    """
    csfr, ratio = np.asarray(csfr), np.asarray(density_ratio)
    out = np.full(csfr.shape, NORMAL, dtype=object)
    out[np.nan_to_num(ratio, nan=0.0) >= noise_ratio] = NOISE
    out[csfr < min_rate] = NULL
    return out


# ---- membrane potential ----------------------------------------------------------------------------
def mpd_edges(lo: float = -2.0, hi: float = 2.0, bins: int = 160) -> np.ndarray:
    """Bin edges of the MPD histograms (fixed, so models and channels share a scale)."""
    return np.linspace(lo, hi, bins + 1)


def ptd(hist: np.ndarray, edges: np.ndarray, v_th: float, peaks: int = 3) -> np.ndarray:
    """Peak-to-threshold distance of histograms ``[..., bins]``: mean centre of the ``peaks`` tallest
    bins minus ``v_th`` (ties go to the lower bin; nan for an empty histogram)."""
    hist = np.asarray(hist)
    centres = 0.5 * (edges[:-1] + edges[1:])
    top = np.argsort(-hist, axis=-1, kind="stable")[..., :peaks]
    out = centres[top].mean(axis=-1) - v_th
    return np.where(hist.sum(axis=-1) > 0, out, np.nan)


def variance(n: np.ndarray, total: np.ndarray, total_sq: np.ndarray) -> np.ndarray:
    """Variance from the count, sum and sum of squares of the values (nan where ``n`` is 0)."""
    n, total, total_sq = (np.asarray(a, dtype=np.float64) for a in (n, total, total_sq))
    mean = np.divide(total, n, out=np.full_like(total, np.nan), where=n > 0)
    return np.maximum(np.divide(total_sq, n, out=np.full_like(total, np.nan), where=n > 0) - mean**2, 0.0)


def quantization_error(u: Tensor | np.ndarray, s: Tensor | np.ndarray) -> float:
    """QE: mean of ``(U - S)^2``."""
    u, s = np.asarray(u, dtype=np.float64), np.asarray(s, dtype=np.float64)
    return float(((u - s) ** 2).mean())


# ---- ASA masks -------------------------------------------------------------------------------------
def mask_stability(m1: Tensor) -> Tensor:
    """Per sample and channel, the fraction of steps ``t -> t+1`` where the channel stays in its group:
    ``[T, B, C] -> [B, C]`` (1 = the split never changes; nan-free, 1 when T = 1)."""
    if m1.shape[0] < 2:
        return torch.ones(m1.shape[1:], dtype=torch.float64)
    return (m1[1:] == m1[:-1]).double().mean(dim=0)


def mask_agreement(freq: np.ndarray) -> float:
    """How much samples agree on the split: mean over (t, c) of ``max(p, 1 - p)`` where ``p`` is the
    fraction of samples putting (t, c) in the important group. 1 = every sample chooses the same."""
    freq = np.asarray(freq, dtype=np.float64)
    return float(np.maximum(freq, 1 - freq).mean())


__all__ = [
    "NOISE", "NORMAL", "NULL", "background_density_ratio", "background_share", "c_sfr", "classify_patterns", "event_region",
    "feature_similarity", "flatness", "ghost_stats", "mask_agreement", "mask_stability", "mpd_edges",
    "n_sfr", "nasfr", "network_t_sfr", "pct_change", "ptd", "quantization_error", "region_cells",
    "spatial_entropy", "t_sfr", "variance",
]
