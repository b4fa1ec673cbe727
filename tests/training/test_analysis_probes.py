"""Analysis probes (training/analysis/probes.py): hand-built spikes and membranes, and a real network pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.attention import AttentionConfig
from models.config import preset
from models.instrument import SpikeMapProbe
from models.network import SpikingNet
from training.analysis import metrics as M
from training.analysis.probes import AttentionRecorder, MembraneStatsProbe, ProbeSet, RegionProbe


def test_membrane_stats_histogram_moments_and_qe() -> None:
    edges = np.array([-1.0, 0.0, 0.5, 1.0])
    probe = MembraneStatsProbe(edges)
    # one timestep, batch 1, two channels of 2x2: [T, B, C, H, W]
    u = torch.tensor([[[[[-2.0, -0.5], [0.0, 0.4]], [[0.5, 1.0], [3.0, 0.9]]]]])
    s = (u >= 0.3).float()
    probe(0, s, u)
    st = probe.stats[0]
    # c0: -2 below; -0.5 -> bin 0; 0.0 -> bin 1 (left edge closed); 0.4 -> bin 1
    assert st["hist"][0, 0].tolist() == [1, 2, 0] and st["below"][0, 0] == 1 and st["above"][0, 0] == 0
    # c1: 0.5 -> bin 2; 1.0 (last edge) -> bin 2; 3.0 above; 0.9 -> bin 2
    assert st["hist"][0, 1].tolist() == [0, 0, 3] and st["above"][0, 1] == 1
    assert st["n"].tolist() == [[4, 4]]
    assert st["sum"][0, 0] == pytest.approx(-2.1)
    assert st["sumsq"][0, 1] == pytest.approx(0.25 + 1 + 9 + 0.81)
    # QE: c0 spikes only at 0.4 -> (4 + 0.25 + 0 + 0.36) ; c1 all spike -> (0.25 + 0 + 4 + 0.01)
    assert st["qe"][0].tolist() == pytest.approx([4.61, 4.26])
    probe(0, s, u)  # accumulates
    assert probe.stats[0]["n"].tolist() == [[8, 8]]


def test_membrane_stats_treats_an_fc_layer_as_one_channel() -> None:
    probe = MembraneStatsProbe(np.linspace(-1, 1, 5))
    probe(3, torch.zeros(2, 1, 6), torch.zeros(2, 1, 6))
    assert probe.stats[3]["hist"].shape == (2, 1, 4)
    assert probe.stats[3]["n"].tolist() == [[6], [6]]


def test_region_probe_background_share() -> None:
    frames = torch.zeros(1, 2, 2, 4, 4)  # [T, B, P, H, W]; both samples' events in the top-left pixel
    frames[0, :, 0, 0, 0] = 3
    probe = RegionProbe(mass=1.0)
    probe.set_input(frames)
    spikes = torch.zeros(3, 2, 2, 2, 2)  # [T, B, C, 2, 2]: a coarser layer (each cell = 2x2 pixels)
    spikes[:, :, 0] = 1  # c0 fires everywhere
    spikes[:, :, 1, 0, 0] = 1  # c1 fires only on the cell holding the events
    probe(0, spikes, None)
    probe(1, torch.ones(3, 2, 5), None)  # an fc layer is ignored
    total, inside = probe.total[0].sum(0).numpy(), probe.inside[0].sum(0).numpy()
    share = M.background_share(total, inside)
    assert share.tolist() == pytest.approx([0.75, 0.0])
    assert 1 - probe.area[0] / probe.samples == pytest.approx(0.75)  # the share of a channel firing evenly
    assert 1 not in probe.total
    assert probe.region_sum[0, 0] == 2 and probe.region_sum.sum() == 2


def _frames(t: int, b: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.poisson(torch.full((t, b, 2, size, size), 0.5), generator=g)


def _net(kind: str, t: int = 4) -> SpikingNet:
    torch.manual_seed(0)
    net = SpikingNet(preset("tiny", 5, AttentionConfig(kind=kind), timesteps=t, input_size=(16, 16)))
    for m in net.modules():  # BatchNorm with the data's statistics, so every layer spikes
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    with torch.no_grad():
        net(_frames(t, 8, seed=1))
    return net.eval()


def test_probe_set_maps_agree_with_network_counts() -> None:
    """SpikeMapProbe (N-SFR) and NetOutput.counts come from the same pass and agree."""
    net, x = _net("none"), _frames(4, 3)
    maps, mem = SpikeMapProbe(), MembraneStatsProbe(M.mpd_edges())
    probe = ProbeSet([maps, mem])
    assert probe.wants_membrane
    with torch.no_grad():
        out = net(x, probe)
    for i in range(len(net.layers)):
        assert maps.maps[i].sum().item() == pytest.approx(out.counts[..., i].sum().item())
        assert mem.stats[i]["n"].sum().item() == 4 * 3 * net.neurons[i]
    assert all(out.counts.sum((0, 1)) > 0)


@pytest.mark.parametrize("kind", ["asa", "causal-asa"])
def test_attention_recorder_is_passive_and_records_the_masks(kind: str) -> None:
    net, x = _net(kind), _frames(4, 3)
    with torch.no_grad():
        plain = net(x)
        rec = AttentionRecorder(net, keep=2)
        hooked = net(x)
        rec.close()
        after = net(x)
    assert torch.equal(plain.out, hooked.out) and torch.equal(plain.counts, hooked.counts)
    assert torch.equal(plain.out, after.out)
    assert rec.layers == [0, 1, 2] and set(rec.kinds.values()) == {kind}
    att = net.layers[0].attention
    with torch.no_grad():  # the masks of layer 0 from its input current, computed directly
        cur = net.layers[0].synapse(x.flatten(0, 1)).unflatten(0, (4, 3))
        if kind == "asa":
            m1 = att.masks(cur)[0]
        else:
            num, den = att.init_state(3, cur)
            steps = []
            for t in range(4):
                m, _, num, den = att.masks_step(cur[t], num, den)
                steps.append(m)
            m1 = torch.stack(steps)
    assert torch.equal(rec.freq[0], m1.double().sum(1))
    assert torch.equal(rec.masks[0], m1[:, :2].permute(1, 0, 2))
    rec2 = AttentionRecorder(net, keep=2)
    rec2.want = torch.tensor([False, True, True])
    with torch.no_grad():
        net(x)
    rec2.close()
    assert torch.equal(rec2.masks[0], m1[:, 1:].permute(1, 0, 2))
    assert rec2.maps[0].shape[0] == 2
    assert torch.equal(rec2.maps[0][0], rec.maps[0][1])
    assert rec.samples[0] == 3
    t_maps = 1 if kind == "asa" else 4
    assert rec.maps[0].shape == (2, 2, t_maps, 16, 16)
    assert rec.maps[2].shape == (2, 2, t_maps, 4, 4)
    assert ((rec.maps[0] >= 0) & (rec.maps[0] <= 1)).all()
    stab = rec.stable[0] / 3
    assert ((stab >= 0) & (stab <= 1)).all()


def test_attention_recorder_ignores_networks_without_asa() -> None:
    rec = AttentionRecorder(_net("none"))
    assert rec.layers == []
