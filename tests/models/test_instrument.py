"""Instrumentation (models/instrument.py): MACs, fan-out, SOPs, energy proxy, firing rates and the
probes, pinned by hand arithmetic."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.attention import AttentionConfig
from models.config import preset
from models.instrument import (
    E_AC_J,
    E_MAC_J,
    EnergyModel,
    MembraneProbe,
    SpikeMapProbe,
    count_params,
    synapse_macs,
)
from models.network import SpikingNet

# tiny preset, 4 classes, 2x32x32 input (by hand):
#   conv1 2->8   3x3 at 32x32: MACs 2*9*8*32*32   =   147_456; neurons 8*32*32  = 8192
#   conv2 8->16  3x3 at 32x32 then avgpool:  8*9*16*32*32 = 1_179_648; neurons 16*16*16 = 4096
#   conv3 16->16 3x3 at 16x16 then avgpool: 16*9*16*16*16 =   589_824; neurons 16*8*8   = 1024
#   fc1   1024->64:                          1024*64       =    65_536; neurons 64
#   fc2   64->4:                             64*4          =       256; neurons 4
# fan-out (SOPs per spike) = MACs of the next layer / neurons of this one:
#   conv1 1_179_648 / 8192 = 144 (= 16 out channels * 9 taps), conv2 589_824 / 4096 = 144,
#   conv3 65_536 / 1024 = 64, fc1 256 / 64 = 4, fc2 0 (feeds nothing)
TINY_MACS = (147_456, 1_179_648, 589_824, 65_536, 256)
TINY_NEURONS = (8192, 4096, 1024, 64, 4)
TINY_FANOUT = (144.0, 144.0, 64.0, 4.0, 0.0)


@pytest.fixture(scope="module")
def tiny() -> SpikingNet:
    return SpikingNet(preset("tiny", 4))


@pytest.fixture(scope="module")
def em(tiny: SpikingNet) -> EnergyModel:
    return EnergyModel.from_network(tiny)


def test_synapse_macs_per_layer(tiny: SpikingNet) -> None:
    shape: tuple[int, ...] = (2, 32, 32)
    macs, shapes = [], []
    for layer in tiny.layers:
        m, shape = synapse_macs(layer.synapse, shape)
        macs.append(m)
        shapes.append(shape)
    assert tuple(macs) == TINY_MACS
    assert shapes == [(8, 32, 32), (16, 16, 16), (16, 8, 8), (64,), (4,)]


def test_energy_model_constants(em: EnergyModel) -> None:
    assert em.layer_names == ("conv1", "conv2", "conv3", "fc1", "fc2")
    assert em.neurons == TINY_NEURONS
    assert em.total_neurons == 8192 + 4096 + 1024 + 64 + 4 == 13_380
    assert em.fanout == TINY_FANOUT
    assert em.first_layer_macs == 147_456
    assert (em.e_mac_j, em.e_ac_j) == (E_MAC_J, E_AC_J) == (4.6e-12, 0.9e-12)


def test_energy_model_with_attention_and_voting() -> None:
    # attention adds no synapse MACs; voting multiplies the output layer: five-like 1-conv net
    em_att = EnergyModel.from_network(SpikingNet(preset("tiny", 4, AttentionConfig(kind="causal-asa"))))
    assert em_att.fanout == TINY_FANOUT
    em5 = EnergyModel.from_network(SpikingNet(preset("five", 3, input_size=(32, 32))))
    # conv1 2->128 at 32x32, max-pooled to 16x16; conv2 128->128 at 16x16: 128*9*128*256 MACs
    assert em5.first_layer_macs == 2 * 9 * 128 * 32 * 32
    assert em5.neurons[:2] == (128 * 16 * 16, 128 * 8 * 8)
    assert em5.fanout[0] == 128 * 9 * 128 * 16 * 16 / (128 * 16 * 16)  # = 1152
    # fc1 512 -> fc2 3 classes * 10 votes
    assert em5.neurons[-2:] == (512, 30) and em5.fanout[-2] == 30.0


def test_sops_and_energy_hand_counts(em: EnergyModel) -> None:
    counts = torch.tensor([10.0, 20.0, 30.0, 40.0, 5.0])
    # SOPs = 10*144 + 20*144 + 30*64 + 40*4 + 5*0 = 1440 + 2880 + 1920 + 160 = 6400
    assert em.sops(counts).item() == 6400.0
    # E over 2 steps = 4.6 pJ * 147_456 * 2 + 0.9 pJ * 6400 = 1_356_595.2 pJ + 5_760 pJ = 1.3623552e-6 J
    assert em.energy_j(counts, steps=2).item() == pytest.approx(1.3623552e-6, rel=1e-6)
    # no spikes: only the dense first layer, 4.6 pJ * 147_456 = 678_297.6 pJ
    assert em.energy_j(torch.zeros(5)).item() == pytest.approx(6.782976e-7, rel=1e-6)
    # batched counts [B, L] -> [B]
    batch = torch.stack([counts, 2 * counts])
    assert em.sops(batch).tolist() == [6400.0, 12800.0]


def test_layer_rates_and_nasfr(em: EnergyModel) -> None:
    # every neuron of conv1 fires at both steps, half of fc1 once, nothing else
    counts = torch.tensor([8192.0 * 2, 0.0, 0.0, 32.0, 0.0])
    rates = em.layer_rates(counts, steps=2)
    assert rates.tolist() == [1.0, 0.0, 0.0, 0.25, 0.0]
    # NASFR = sum_l fr_l N_l / sum_l N_l = (1 * 8192 + 0.25 * 64) / 13_380 = 8208 / 13_380
    assert em.nasfr(counts, steps=2).item() == pytest.approx(8208 / 13_380)
    assert em.nasfr(counts, steps=2).item() == pytest.approx(
        (rates * torch.tensor(TINY_NEURONS, dtype=torch.float32)).sum().item() / 13_380
    )


def test_counts_from_forward_feed_the_energy_model(tiny: SpikingNet, em: EnergyModel) -> None:
    x = torch.poisson(torch.full((3, 2, 2, 32, 32), 1.0), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = tiny.eval()(x)
    total = out.counts.sum(0)  # [B, L] over 3 steps
    assert em.sops(total).shape == (2,)
    assert torch.allclose(em.nasfr(total, steps=3), total.sum(-1) / 13_380 / 3)


# ---- probes ---------------------------------------------------------------------------------------


def test_spike_map_probe_hand_built() -> None:
    # T = 3, B = 4, C = 3, 2x2. Channel 0 fires everywhere; channel 1 in sample 0 at t = 1 only.
    s = torch.zeros(3, 4, 3, 2, 2)
    s[:, :, 0] = 1.0
    s[1, 0, 1] = 1.0
    probe = SpikeMapProbe()
    probe(0, s, None)
    probe(1, s[:, :, 0, 0, 0].reshape(3, 4, 1), None)  # an fc layer: [T, B, N]
    assert probe.samples == 4
    nsfr = probe.maps[0] / probe.samples  # [T, C, H, W]
    assert nsfr.shape == (3, 3, 2, 2)
    assert torch.equal(nsfr[:, 0], torch.ones(3, 2, 2))  # N-SFR 1 everywhere
    assert torch.equal(nsfr[:, 1].sum((1, 2)), torch.tensor([0.0, 0.25 * 4, 0.0], dtype=torch.float64))
    assert nsfr[:, 2].sum() == 0
    # C-SFR: mean over the channel's neurons and timesteps; T-SFR: mean over a timestep
    assert nsfr.mean((0, 2, 3)).tolist() == pytest.approx([1.0, 0.25 / 3, 0.0])
    assert nsfr.mean((1, 2, 3)).tolist() == pytest.approx([1 / 3, (1 + 0.25) / 3, 1 / 3])
    assert torch.equal(probe.maps[1] / 4, torch.ones(3, 1, dtype=torch.float64))
    # a second batch accumulates: 4 more samples where nothing fires -> N-SFR halves
    probe(0, torch.zeros_like(s), None)
    assert probe.samples == 8
    assert torch.equal(probe.maps[0][:, 0] / 8, torch.full((3, 2, 2), 0.5, dtype=torch.float64))


def test_spike_map_probe_through_network(tiny: SpikingNet) -> None:
    x = torch.poisson(torch.full((3, 2, 2, 32, 32), 1.0), generator=torch.Generator().manual_seed(1))
    probe = SpikeMapProbe()
    with torch.no_grad():
        out = tiny.eval()(x, probe)
    assert probe.samples == 2 and sorted(probe.maps) == [0, 1, 2, 3, 4]
    for i, shape in enumerate(tiny.spike_shapes):
        assert probe.maps[i].shape == (3, *shape)
        assert probe.maps[i].sum().item() == out.counts[..., i].sum().item()


def test_membrane_probe_layout() -> None:
    # conv: u [T, B, C, H, W] -> [C, T*B*H*W], row c holds channel c in (t, b, h, w) order
    t, b, c, h, w = 2, 3, 4, 2, 2
    u = torch.arange(t * b * c * h * w, dtype=torch.float32).reshape(t, b, c, h, w)
    s = (u.remainder(2) == 0).float()
    probe = MembraneProbe()
    probe(0, s, u)
    probe(1, s[:, :, :, 0, 0], u[:, :, :, 0, 0])  # fc: [T, B, N] -> [1, T*B*N]
    uu, ss = probe.layer(0)
    assert uu.shape == (4, 24) and ss.shape == (4, 24)
    for ch in range(c):
        assert uu[ch].tolist() == u[:, :, ch].flatten().tolist()
    # element (t=1, b=2, c=3, h=1, w=0) sits in row 3 at column ((1*3 + 2)*2 + 1)*2 + 0 = 22
    assert uu[3, 22].item() == u[1, 2, 3, 1, 0].item()
    assert torch.equal(ss, (uu.remainder(2) == 0).float())
    u1, _ = probe.layer(1)
    assert u1.shape == (1, 24) and u1[0].tolist() == u[:, :, :, 0, 0].flatten().tolist()
    # two calls concatenate along the value axis
    probe(0, s, u + 1000)
    assert probe.layer(0)[0].shape == (4, 48)


def test_membrane_probe_stops_at_limit() -> None:
    probe = MembraneProbe(max_values_per_layer=10)
    u = torch.zeros(1, 1, 2, 2, 2)  # 8 values per call
    for _ in range(3):
        probe(0, u, u)
    assert probe.layer(0)[0].numel() == 16  # the second call crosses the limit, the third is dropped


def test_network_membrane_probe_and_count_params(tiny: SpikingNet) -> None:
    probe = MembraneProbe()
    with torch.no_grad():
        tiny.eval()(torch.ones(2, 1, 2, 32, 32), probe)
    assert probe.layer(0)[0].shape == (8, 2 * 1 * 32 * 32)
    assert probe.layer(4)[0].shape == (1, 2 * 4)
    lin = nn.Linear(3, 5)
    assert count_params(lin) == 3 * 5 + 5
