"""Networks (models/network.py, models/config.py): every preset builds and runs, the stepwise form
equals the window form, causality at network level, state layout, config round trip.

Shapes are reduced (timesteps, input size) so the suite stays fast; the five network keeps 32x32 so
that its five 2x2 poolings leave a 1x1 map.
"""

from __future__ import annotations

import json

import pytest
import torch

from models.attention import AttentionConfig
from models.config import PRESETS, ConvSpec, NetworkConfig, preset
from models.network import NetOutput, SpikingNet, build_network

KINDS = ("none", "sa", "asa", "causal-asa")
SMALL = {"gesture3": (16, 16), "small3": (16, 16), "five": (32, 32), "tiny": (16, 16)}


def _net(name: str, kind: str, t: int = 4, classes: int = 5, **att) -> SpikingNet:
    cfg = preset(name, classes, AttentionConfig(kind=kind, **att), timesteps=t, input_size=SMALL[name])
    return build_network(cfg)


def _frames(cfg: NetworkConfig, t: int, b: int, seed: int = 0, rate: float = 0.5) -> torch.Tensor:
    """Poisson event counts per pixel and polarity, like binned DVS frames."""
    g = torch.Generator().manual_seed(seed)
    return torch.poisson(torch.full((t, b, cfg.in_channels, *cfg.input_size), rate), generator=g)


def _trained_like(net: SpikingNet, x: torch.Tensor) -> SpikingNet:
    """Give BatchNorm the statistics of the data (as training would), then switch to eval.

    With the running statistics at their init values the deeper layers hardly spike and a spike
    comparison is vacuous; with data statistics every layer fires at 5-40 %.
    """
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    net.train()
    with torch.no_grad():
        net(x)
    return net.eval()


class _Record:
    """Probe keeping every layer's spikes and membrane potentials."""

    wants_membrane = True

    def __init__(self) -> None:
        self.s: dict[int, list[torch.Tensor]] = {}
        self.u: dict[int, list[torch.Tensor]] = {}

    def __call__(self, layer: int, spikes: torch.Tensor, u: torch.Tensor | None) -> None:
        assert u is not None and u.shape == spikes.shape
        self.s.setdefault(layer, []).append(spikes)
        self.u.setdefault(layer, []).append(u)

    def spikes(self) -> list[torch.Tensor]:
        return [torch.cat(self.s[i]) for i in sorted(self.s)]


def _run_steps(
    net: SpikingNet, x: torch.Tensor, probe=None
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    state = net.init_state(x.shape[1], dtype=x.dtype)
    outs, counts = [], []
    for t in range(x.shape[0]):
        o, state = net.step(x[t], state, probe)
        outs.append(o.out)
        counts.append(o.counts)
    return torch.stack(outs), torch.stack(counts), state


# ---- presets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("kind", KINDS)
def test_every_preset_and_attention_runs(name: str, kind: str) -> None:
    torch.manual_seed(0)
    t, b = 4, 2
    net = _net(name, kind, t)
    x = _frames(net.cfg, t, b)
    with torch.no_grad():
        out = net(x)
    layers = len(net.cfg.convs) + len(net.cfg.fc) + 1
    assert isinstance(out, NetOutput)
    assert out.out.shape == (t, b, 5)
    assert out.counts.shape == (t, b, layers)
    assert len(net.layers) == layers == len(net.layer_names) == len(net.neurons)
    assert ((out.out >= 0) & (out.out <= 1)).all()
    assert (out.counts >= 0).all() and out.counts[..., 0].sum() > 0
    has_attention = [layer.attention is not None for layer in net.layers]
    assert has_attention == [kind != "none"] * len(net.cfg.convs) + [False] * (layers - len(net.cfg.convs))
    assert net.cfg.stepwise == (kind in ("none", "causal-asa"))


def test_preset_shapes() -> None:
    g3 = preset("gesture3", 11)
    assert (g3.input_size, g3.timesteps, g3.fc) == ((32, 32), 60, (256,))
    assert [c.channels for c in g3.convs] == [64, 128, 128]
    assert [c.pool for c in g3.convs] == [None, "avg", "avg"]
    net = SpikingNet(g3)
    assert net.layer_names == ("conv1", "conv2", "conv3", "fc1", "fc2")
    # 64x32x32, 128x16x16, 128x8x8, 256, 11
    assert net.neurons == (65536, 32768, 8192, 256, 11)
    five = preset("five", 11)
    assert five.parametric and five.vote == 10 and five.input_size == (128, 128)
    assert SpikingNet(five).neurons[-1] == 110  # 10 voting neurons per class
    assert preset("small3", 3, AttentionConfig(kind="asa")).attention.r == 8
    with pytest.raises(ValueError):
        preset("nope", 3)


def test_vote_averages_groups_of_output_neurons() -> None:
    net = _net("five", "none", t=2, classes=3)
    s = torch.zeros(1, 30)
    s[0, 10:15] = 1.0  # half of class 1's ten neurons
    s[0, 20:30] = 1.0  # all of class 2's
    assert net._vote(s).tolist() == [[0.0, 0.5, 1.0]]


# ---- stepwise form == window form --------------------------------------------------------------


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("kind", ["none", "causal-asa"])
def test_step_equals_forward_exactly_in_float64(name: str, kind: str) -> None:
    torch.manual_seed(0)
    t, b = (3, 2) if name == "five" else (5, 2)
    net = _net(name, kind, t).double()
    x = _frames(net.cfg, t, b).double()
    _trained_like(net, x)
    rec_w, rec_s = _Record(), _Record()
    with torch.no_grad():
        win = net(x, rec_w)
        out, counts, _ = _run_steps(net, x, rec_s)
    assert torch.equal(out, win.out)
    assert torch.equal(counts, win.counts)
    for sw, ss in zip(rec_w.spikes(), rec_s.spikes()):
        assert torch.equal(sw, ss)
    # not vacuous: every layer but the output spikes somewhere
    assert (win.counts[..., :-1].sum((0, 1)) > 0).all(), win.counts.sum((0, 1))


@pytest.mark.parametrize("kind", ["none", "causal-asa"])
def test_step_agrees_with_forward_in_float32(kind: str) -> None:
    torch.manual_seed(1)
    t, b = 8, 4
    net = _net("tiny", kind, t)
    x = _frames(net.cfg, t, b, seed=1)
    _trained_like(net, x)
    x = _frames(net.cfg, t, b, seed=2)  # fresh frames, statistics from the others
    rec_w, rec_s = _Record(), _Record()
    with torch.no_grad():
        win = net(x, rec_w)
        _run_steps(net, x, rec_s)
    same = total = spikes = 0
    for i, (sw, ss) in enumerate(zip(rec_w.spikes(), rec_s.spikes())):
        same += int((sw == ss).sum())
        total += sw.numel()
        spikes += int(sw.sum())
        rate = sw.mean().item()
        assert rate > 0.01 or i == len(net.layers) - 1, (i, rate)  # layers really fire
    assert spikes > 5000
    assert same / total >= 0.9999, same / total
    # membrane potentials agree to float32 rounding
    for uw, us in zip(rec_w.u.values(), rec_s.u.values()):
        assert torch.allclose(torch.cat(uw), torch.cat(us), atol=1e-4)
    assert win.counts.shape == (t, b, 5)


@pytest.mark.parametrize("kind", ["sa", "asa"])
def test_step_raises_for_window_attention(kind: str) -> None:
    net = _net("tiny", kind).eval()
    with pytest.raises(RuntimeError):
        net.step(torch.zeros(1, 2, 16, 16), net.init_state(1))


def test_network_level_causality_for_every_t() -> None:
    torch.manual_seed(2)
    t, b = 5, 2
    net = _net("tiny", "causal-asa", t)
    x = _frames(net.cfg, t, b, seed=3)
    _trained_like(net, x)
    with torch.no_grad():
        ref = net(x)
        for k in range(t):
            x2 = x.clone()
            x2[k + 1 :] = _frames(net.cfg, t - k - 1, b, seed=10 + k, rate=2.0)
            out = net(x2)
            assert torch.equal(out.out[: k + 1], ref.out[: k + 1]), k
            assert torch.equal(out.counts[: k + 1], ref.counts[: k + 1]), k
            if k + 1 < t:
                assert not torch.equal(out.counts[k + 1 :], ref.counts[k + 1 :])
    assert ref.counts[..., :3].sum() > 0


def test_window_asa_network_batch_independence_and_batch_of_one() -> None:
    torch.manual_seed(3)
    net = _net("tiny", "asa", t=4)
    x = _frames(net.cfg, 4, 3, seed=4)
    _trained_like(net, x)
    with torch.no_grad():
        full = net(x)
        for i in range(3):
            alone = net(x[:, i : i + 1])
            assert alone.out.shape == (4, 1, 5)
            assert torch.equal(alone.counts, full.counts[:, i : i + 1])


@pytest.mark.parametrize("kind", ["none", "causal-asa"])
def test_batch_of_one_stepwise(kind: str) -> None:
    net = _net("tiny", kind).eval()
    x = _frames(net.cfg, 3, 1)
    with torch.no_grad():
        out, counts, state = _run_steps(net, x)
    assert out.shape == (3, 1, 5) and counts.shape == (3, 1, 5)
    assert [s.shape[0] for s in state] == [1] * len(state)


# ---- state layout -----------------------------------------------------------------------------------


def test_state_names_and_shapes_tiny() -> None:
    # tiny at 32x32: conv1 8x32x32, conv2 16x16x16 (pooled), conv3 16x8x8 (pooled), fc1 64, fc2 classes
    net = SpikingNet(preset("tiny", 4, AttentionConfig(kind="causal-asa")))
    assert net.state_names() == [
        "conv1.h", "conv1.asa_num", "conv1.asa_den",
        "conv2.h", "conv2.asa_num", "conv2.asa_den",
        "conv3.h", "conv3.asa_num", "conv3.asa_den",
        "fc1.h", "fc2.h",
    ]
    assert net.state_shapes() == [
        (8, 32, 32), (8,), (1,), (16, 16, 16), (16,), (1,), (16, 8, 8), (16,), (1,), (64,), (4,),
    ]
    vanilla = SpikingNet(preset("tiny", 4))
    assert vanilla.state_names() == ["conv1.h", "conv2.h", "conv3.h", "fc1.h", "fc2.h"]
    assert vanilla.state_shapes() == [(8, 32, 32), (16, 16, 16), (16, 8, 8), (64,), (4,)]


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("kind", ["none", "causal-asa"])
def test_state_consistent(name: str, kind: str) -> None:
    net = _net(name, kind).eval()
    names, shapes = net.state_names(), net.state_shapes()
    state = net.init_state(3)
    assert len(names) == len(shapes) == len(state) == len(set(names))
    assert [tuple(s.shape) for s in state] == [(3, *sh) for sh in shapes]
    assert all(s.abs().sum() == 0 and s.dtype == torch.float32 for s in state)
    with torch.no_grad():
        _, new = net.step(_frames(net.cfg, 1, 3)[0], state)
    assert [s.shape for s in new] == [s.shape for s in state]
    assert net.init_state(2, dtype=torch.float64)[0].dtype == torch.float64


# ---- config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("kind", KINDS)
def test_config_round_trip(name: str, kind: str) -> None:
    cfg = preset(name, 7, AttentionConfig(kind=kind, variant=1, lam=0.25, rho=0.9))
    assert NetworkConfig.from_dict(cfg.to_dict()) == cfg
    assert NetworkConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # through JSON


def test_config_with_attention_and_custom_network() -> None:
    cfg = NetworkConfig("custom", 3, (8, 8), 2, (ConvSpec(4, "max"),), fc=(6,))
    causal = cfg.with_attention(kind="causal-asa", rho=0.5)
    assert causal.attention == AttentionConfig(kind="causal-asa", rho=0.5)
    assert cfg.attention.kind == "none"  # frozen: with_attention returns a copy
    net = SpikingNet(cfg)
    assert net.spike_shapes == ((4, 4, 4), (6,), (3,))
    with torch.no_grad():
        assert net(torch.ones(2, 1, 2, 8, 8)).counts.shape == (2, 1, 3)
