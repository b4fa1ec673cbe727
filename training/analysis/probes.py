"""Probes for the redundancy analysis: the :class:`models.network.Probe` protocol, plus attention hooks.

All of them watch the one evaluation pass that also gives accuracy and spike counts; none re-runs a
layer. :class:`ProbeSet` fans one pass out to several probes (with
:class:`models.instrument.SpikeMapProbe` for the N-SFR maps).

* :class:`MembraneStatsProbe`: streaming MPD histograms per layer, timestep and channel on fixed
  bins, and the moments for variance and QE, over every value of the test set (the shared
  :class:`~models.instrument.MembraneProbe` keeps raw values and so stops at a cap).
* :class:`RegionProbe`: per channel, spikes inside the region where the sample's input events are
  concentrated (:func:`~training.analysis.metrics.event_region`), for the noise-pattern heuristic.
* :class:`AttentionRecorder`: forward hooks on the ASA / causal-ASA modules; the masks are recomputed
  from the captured input current with the module's own ``masks`` (window ASA and causal ASA), the spatial
  maps are the outputs of its ``sa1`` / ``sa2`` submodules.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor, nn

from models.attention import ASA, CausalASA
from training.analysis.metrics import event_region, mask_stability, region_cells


class ProbeSet:
    """Several probes as one; asks for membrane potentials when any member does."""

    def __init__(self, probes: Iterable) -> None:
        self.probes = list(probes)
        self.wants_membrane = any(p.wants_membrane for p in self.probes)

    def __call__(self, layer: int, spikes: Tensor, u: Tensor | None) -> None:
        for p in self.probes:
            p(layer, spikes, u if p.wants_membrane else None)


def _per_channel(x: Tensor) -> Tensor:
    """``[T, B, C, H, W] -> [T, C, B*H*W]``; an fc layer ``[T, B, N]`` is one channel ``[T, 1, B*N]``."""
    if x.dim() == 5:
        return x.permute(0, 2, 1, 3, 4).flatten(2)
    return x.flatten(1).unsqueeze(1)


class MembraneStatsProbe:
    """Per layer: MPD histograms ``hist [T, C, bins]`` on fixed ``edges`` (values outside the range
    counted in ``below`` / ``above`` ``[T, C]``), and ``n``, ``sum``, ``sumsq``, ``qe`` (sum of
    ``(U - S)^2``) per ``[T, C]``."""

    wants_membrane = True

    def __init__(self, edges: np.ndarray) -> None:
        self.edges = np.asarray(edges, dtype=np.float64)
        self._edges = torch.as_tensor(self.edges, dtype=torch.float32)
        self.stats: dict[int, dict[str, Tensor]] = {}

    def __call__(self, layer: int, spikes: Tensor, u: Tensor | None) -> None:
        assert u is not None, "MembraneStatsProbe needs membrane potentials"
        uu = _per_channel(u.detach().float().cpu())  # [T, C, V]
        ss = _per_channel(spikes.detach().float().cpu())
        t, c, _ = uu.shape
        bins = len(self.edges) - 1
        idx = torch.bucketize(uu, self._edges, right=True) - 1  # bin i holds edges[i] <= u < edges[i+1]
        idx[uu == self._edges[-1]] = bins - 1  # the last bin is closed on the right
        below, above = idx < 0, idx >= bins
        inside = ~(below | above)
        flat = (torch.arange(t * c).view(t, c, 1) * bins + idx.clamp(0, bins - 1))[inside]
        new = {
            "hist": torch.bincount(flat, minlength=t * c * bins).view(t, c, bins).long(),
            "below": below.sum(-1).long(),
            "above": above.sum(-1).long(),
            "n": torch.full((t, c), uu.shape[-1], dtype=torch.long),
            "sum": uu.double().sum(-1),
            "sumsq": (uu.double() ** 2).sum(-1),
            "qe": ((uu - ss).double() ** 2).sum(-1),
        }
        old = self.stats.get(layer)
        self.stats[layer] = new if old is None else {k: old[k] + v for k, v in new.items()}


class RegionProbe:
    """Spikes per channel inside the input-event region of their sample (conv layers only).

    Call :meth:`set_input` with each batch's frames ``[T, B, P, H, W]`` before the forward pass. Per
    conv layer it accumulates ``total [T, C]`` and ``inside [T, C]`` (spikes on cells of the layer's grid
    that hold region pixels, :func:`~training.analysis.metrics.region_cells`) and ``area``, the share of
    the grid in the region summed over samples (so ``1 - area / samples`` is the background share of a
    channel firing evenly everywhere).
    """

    wants_membrane = False

    def __init__(self, mass: float = 0.8) -> None:
        self.mass = mass
        self.total: dict[int, Tensor] = {}
        self.inside: dict[int, Tensor] = {}
        self.area: dict[int, float] = {}
        self.region_sum: Tensor | None = None  # [H, W]: how many samples have each input pixel in the region
        self.samples = 0
        self._region: Tensor | None = None

    def set_input(self, frames: Tensor) -> None:
        self._region = event_region(frames.cpu(), self.mass)
        self.samples += self._region.shape[0]
        rs = self._region.sum(0)
        self.region_sum = rs if self.region_sum is None else self.region_sum + rs

    def __call__(self, layer: int, spikes: Tensor, u: Tensor | None) -> None:
        if spikes.dim() != 5:
            return
        if self._region is None:
            raise RuntimeError("RegionProbe.set_input was not called for this batch")
        s = spikes.detach().float().cpu()
        frac = region_cells(self._region, tuple(s.shape[-2:]))  # [B, h, w] 0/1
        inside = (s * frac[None, :, None]).sum(dim=(1, 3, 4)).double()
        total = s.sum(dim=(1, 3, 4)).double()
        self.total[layer] = self.total.get(layer, 0) + total
        self.inside[layer] = self.inside.get(layer, 0) + inside
        self.area[layer] = self.area.get(layer, 0.0) + float(frac.mean(dim=(1, 2)).sum())


class AttentionRecorder:
    """Masks and spatial maps of every ASA / causal-ASA layer, through forward hooks.

    Per attention layer ``l``: ``freq[l] [T, C]`` (samples with (t, c) in the important group M1),
    ``stable[l] [C]`` (summed over samples, :func:`~training.analysis.metrics.mask_stability`),
    ``samples``; for the first ``keep`` samples ``masks[l] [k, T, C]`` and ``maps[l] [k, 2, T', H, W]``
    (``f_S1``, ``f_S2``; ``T' = 1`` for the window ASA, ``T`` for the causal form). Set :attr:`want`
    (bool ``[B]``) before a forward pass to choose which of its samples may be kept (default: all).
    """

    def __init__(self, net: nn.Module, keep: int = 4) -> None:
        self.keep = keep
        self.freq: dict[int, Tensor] = {}
        self.stable: dict[int, Tensor] = {}
        self.samples: dict[int, int] = {}
        self.masks: dict[int, Tensor] = {}
        self.maps: dict[int, Tensor] = {}
        self.kinds: dict[int, str] = {}
        self.want: Tensor | None = None
        self._pending: dict[int, list[list[Tensor]]] = {}
        self._handles = []
        for i, layer in enumerate(getattr(net, "layers", [])):
            att = getattr(layer, "attention", None)
            if not isinstance(att, (ASA, CausalASA)):
                continue
            self.kinds[i] = "asa" if isinstance(att, ASA) else "causal-asa"
            self._pending[i] = [[], []]
            self._handles.append(att.register_forward_hook(self._mask_hook(i)))
            for g, sa in enumerate((att.sa1, att.sa2)):
                self._handles.append(sa.register_forward_hook(self._map_hook(i, g)))

    @property
    def layers(self) -> list[int]:
        return sorted(self.kinds)

    def _mask_hook(self, i: int):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            x = args[0].detach()
            with torch.no_grad():
                if isinstance(module, ASA):
                    m1 = module.masks(x)[0]
                else:  # the causal form from the state its forward got (rest by default)
                    m1 = module.masks(x, args[1] if len(args) > 1 else None)[0]
            self._add_masks(i, m1.detach().round().cpu())
            self._flush_maps(i, x.shape[1])

        return hook

    def _map_hook(self, i: int, group: int):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            self._pending[i][group].append(output.detach().cpu())

        return hook

    def _add_masks(self, i: int, m1: Tensor) -> None:  # [T, B, C]
        self.freq[i] = self.freq.get(i, 0) + m1.double().sum(1)
        self.stable[i] = self.stable.get(i, 0) + mask_stability(m1).sum(0)
        self.samples[i] = self.samples.get(i, 0) + m1.shape[1]
        have = 0 if i not in self.masks else self.masks[i].shape[0]
        part = self._chosen(m1.permute(1, 0, 2), have)
        if part is not None:
            self.masks[i] = part if i not in self.masks else torch.cat([self.masks[i], part])

    def _chosen(self, x: Tensor, have: int) -> Tensor | None:
        """The wanted samples of ``x`` (batch first), up to ``keep - have`` of them."""
        if self.want is not None:
            x = x[self.want.to(x.device)]
        take = max(0, min(self.keep - have, x.shape[0]))
        return x[:take] if take else None

    def _flush_maps(self, i: int, batch: int) -> None:
        # A map module runs once per window (paper ASA: [B, 1, H, W]) or over every timestep, whether
        # one call per t or one call on [T*B, ...] (causal ASA); both orders are t-major.
        groups = [
            torch.cat(g).unflatten(0, (-1, batch)).transpose(0, 1) if g else None for g in self._pending[i]
        ]  # [B, T', 1, H, W]
        self._pending[i] = [[], []]
        if any(g is None for g in groups):
            return
        have = 0 if i not in self.maps else self.maps[i].shape[0]
        part = self._chosen(torch.stack([g[:, :, 0] for g in groups], dim=1), have)  # [k, 2, T', H, W]
        if part is not None:
            self.maps[i] = part if i not in self.maps else torch.cat([self.maps[i], part])

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


__all__ = ["AttentionRecorder", "MembraneStatsProbe", "ProbeSet", "RegionProbe"]
