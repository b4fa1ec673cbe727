"""Instrumentation shared by training, analysis and the service: firing rates, SOPs, energy proxy.

Spike counts per layer come out of every forward pass (:class:`models.network.NetOutput.counts`);
everything here is arithmetic on those counts or a :class:`~models.network.Probe` that watches the
same pass, never a second forward pass.

Energy proxy (the SNN literature's 45 nm convention; docs/metrics.md)::

    E = E_MAC * MACs(first layer) * steps + E_AC * SOPs
    SOPs = sum over spiking layers l of spikes_l * fanout_l

where ``fanout_l = MACs(layer l+1) / neurons(l)``: the synaptic operations one spike of layer l
triggers in the next layer, averaged over positions. As in the usual MAC-count convention, the taps
that fall on a convolution's zero padding are counted too, so border spikes are charged a full 3x3
fan-out (a 3x3 layer over 32x32 counts 9216 taps per channel pair where 94^2 = 8836 touch a real
input: +4 %; +9 % at 16x16, +19 % at 8x8). The first layer sees frames of event counts, not binary
spikes, so it is charged as dense multiply-accumulates. The output layer's spikes feed nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

E_MAC_J = 4.6e-12
E_AC_J = 0.9e-12


def synapse_macs(synapse: nn.Module, in_shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
    """Multiply-accumulates of one synapse for one sample and timestep, and its output shape."""
    macs, shape = 0, in_shape
    for m in synapse.modules():
        if isinstance(m, nn.Conv2d):
            c, h, w = shape
            kh, kw = m.kernel_size
            ho = (h + 2 * m.padding[0] - kh) // m.stride[0] + 1
            wo = (w + 2 * m.padding[1] - kw) // m.stride[1] + 1
            macs += m.in_channels // m.groups * kh * kw * m.out_channels * ho * wo
            shape = (m.out_channels, ho, wo)
        elif isinstance(m, (nn.AvgPool2d, nn.MaxPool2d)):
            c, h, w = shape
            shape = (c, h // 2, w // 2)
        elif isinstance(m, nn.Linear):
            macs += m.in_features * m.out_features
            shape = (m.out_features,)
    return macs, shape


@dataclass(frozen=True)
class EnergyModel:
    """Per-layer constants of one network for SOPs and the energy proxy."""

    layer_names: tuple[str, ...]
    neurons: tuple[int, ...]
    fanout: tuple[float, ...]  # SOPs per spike, per layer (0 for the output layer)
    first_layer_macs: int  # per sample and timestep
    e_mac_j: float = E_MAC_J
    e_ac_j: float = E_AC_J

    @classmethod
    def from_network(cls, net) -> EnergyModel:  # net: models.network.SpikingNet
        cfg = net.cfg
        shape: tuple[int, ...] = (cfg.in_channels, *cfg.input_size)
        macs = []
        for layer in net.layers:
            m, shape = synapse_macs(layer.synapse, shape)
            macs.append(m)
        fanout = [macs[i + 1] / n for i, n in enumerate(net.neurons[:-1])] + [0.0]
        return cls(tuple(net.layer_names), tuple(net.neurons), tuple(fanout), macs[0])

    @property
    def total_neurons(self) -> int:
        return sum(self.neurons)

    def sops(self, counts: Tensor) -> Tensor:
        """Synaptic operations from spike counts ``[..., L]`` -> ``[...]``."""
        return (counts * counts.new_tensor(self.fanout)).sum(-1)

    def energy_j(self, counts: Tensor, steps: int = 1) -> Tensor:
        """Energy proxy in joules for counts ``[..., L]`` accumulated over ``steps`` timesteps."""
        return self.e_mac_j * self.first_layer_macs * steps + self.e_ac_j * self.sops(counts)

    def layer_rates(self, counts: Tensor, steps: int = 1) -> Tensor:
        """Firing rate per layer (spikes per neuron per timestep) from counts ``[..., L]``."""
        return counts / counts.new_tensor(self.neurons) / steps

    def nasfr(self, counts: Tensor, steps: int = 1) -> Tensor:
        """Network average spike firing rate: ``sum_l fr_l N_l / sum_l N_l`` = all spikes per neuron-step."""
        return counts.sum(-1) / self.total_neurons / steps


class SpikeMapProbe:
    """Accumulates per-neuron spike sums per layer and timestep (for N-SFR, C-SFR, T-SFR maps).

    After a pass over ``n`` samples, ``maps[l][t] / n`` is the N-SFR of every neuron of layer ``l``
    at timestep ``t`` (the paper's spike features when viewed per channel).
    """

    wants_membrane = False

    def __init__(self) -> None:
        self.maps: dict[int, Tensor] = {}
        self.samples = 0

    def __call__(self, layer: int, spikes: Tensor, u: Tensor | None) -> None:
        s = spikes.detach().sum(1).double()  # over the batch -> [T, ...]
        if layer == 0:
            self.samples += spikes.shape[1]
        self.maps[layer] = self.maps[layer] + s if layer in self.maps else s


class MembraneProbe:
    """Keeps membrane potentials and spikes per layer for MPD, PTD and QE on small runs.

    It keeps the values of the first calls, until a layer holds at least ``max_values_per_layer``
    (whole calls, so it may hold one call more). For a whole test set use a streaming histogram
    instead (``training.analysis.probes.MembraneStatsProbe``).
    """

    wants_membrane = True

    def __init__(self, max_values_per_layer: int = 2_000_000) -> None:
        self.max_values = max_values_per_layer
        self.u: dict[int, list[Tensor]] = {}
        self.s: dict[int, list[Tensor]] = {}
        self._kept: dict[int, int] = {}

    def __call__(self, layer: int, spikes: Tensor, u: Tensor | None) -> None:
        assert u is not None
        kept = self._kept.get(layer, 0)
        if kept >= self.max_values:
            return
        # keep [T, B, C, ...] -> per-channel layout [C, T*B*HW] for conv, [1, N] for fc
        uu, ss = u.detach().float().cpu(), spikes.detach().float().cpu()
        if uu.dim() == 5:
            uu, ss = uu.permute(2, 0, 1, 3, 4).flatten(1), ss.permute(2, 0, 1, 3, 4).flatten(1)
        else:
            uu, ss = uu.flatten().unsqueeze(0), ss.flatten().unsqueeze(0)
        self.u.setdefault(layer, []).append(uu)
        self.s.setdefault(layer, []).append(ss)
        self._kept[layer] = kept + uu.numel()

    def layer(self, layer: int) -> tuple[Tensor, Tensor]:
        """``(U, S)`` of one layer as ``[channels, values]``."""
        return torch.cat(self.u[layer], dim=1), torch.cat(self.s[layer], dim=1)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["EnergyModel", "MembraneProbe", "SpikeMapProbe", "count_params", "synapse_macs"]
