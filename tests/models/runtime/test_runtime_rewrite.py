"""Export rewrites (models/runtime/rewrite.py): each one against what it replaces, in PyTorch and
where the point is ONNX Runtime's semantics (TopK ties, empty spike sets) in ONNX Runtime."""

import numpy as np
import pytest
import torch
from torch import nn

import models.runtime.rewrite as R
from models.attention import AttentionConfig, CausalASA, rank_mask
from models.runtime.calibrate import untrained_network
from models.runtime.ort_runner import make_session


def _ort(module: nn.Module, *args: torch.Tensor, dynamic: bool = True) -> object:
    """An ONNX Runtime session of ``module`` (dynamo exporter, batch axis 0 dynamic)."""
    from torch.export import Dim

    batch = Dim("batch", min=1)
    with torch.no_grad():
        program = torch.onnx.export(
            module.eval(),
            args,
            None,
            dynamo=True,
            dynamic_shapes=tuple({0: batch} for _ in args) if dynamic else None,
            opset_version=18,
            optimize=True,
            verbose=False,
        )
    return make_session(program.model_proto.SerializeToString(), "cpu", 1)


@pytest.mark.parametrize("fold_pool", (False, True))
def test_folding_keeps_the_function_and_the_original(bundles, frames_for, fold_pool):
    b = bundles["tiny-causal"]
    folded = R.fold_batchnorm(b.net, fold_pool=fold_pool)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in b.net.modules()) == 3  # untouched
    pools = sum(isinstance(m, torch.nn.AvgPool2d) for m in folded.modules())
    assert pools == (0 if fold_pool else 2)
    if fold_pool:  # conv2, conv3: 3x3 conv + 2x2 average pool -> 4x4 stride-2 conv
        conv = folded.layers[1].synapse[0]
        assert conv.kernel_size == (4, 4) and conv.stride == (2, 2) and conv.padding == (1, 1)
    x = torch.from_numpy(frames_for(b, 10, 2, seed=4))
    with torch.no_grad():
        a, c = b.net(x), folded(x)
    assert (a.counts.sum(-1) > 0).all()
    assert torch.abs(a.counts - c.counts).sum() <= 1e-4 * a.counts.sum()
    # the currents themselves agree to float32 rounding
    spikes = (torch.rand(3, 8, 32, 32) < 0.3).float()
    for i, inp in ((0, x[0]), (1, spikes)):
        with torch.no_grad():
            torch.testing.assert_close(
                b.net.layers[i].synapse(inp), folded.layers[i].synapse(inp), rtol=1e-5, atol=1e-5
            )



@pytest.mark.parametrize("channels", (1, 6, 7, 64))
def test_pooled_spatial_map_equals_the_spatial_map(channels):
    from models.attention import SpatialMap

    torch.manual_seed(0)
    sm = SpatialMap()
    z = torch.randn(2, channels, 5, 6)
    with torch.no_grad():
        torch.testing.assert_close(R.PooledSpatialMap(sm)(z, 0.5), sm(z, 0.5), rtol=1e-6, atol=1e-6)


class _TopK(nn.Module):
    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        return R.top_k_mask(m, self.k, dim=1).to(torch.float32)


def test_onnx_topk_breaks_ties_like_rank_mask():
    sess = _ort(_TopK(4), torch.randn(2, 8))
    rows = torch.tensor(
        [
            [0.0] * 8,  # every channel tied: the four lowest indices
            [1, 3, 3, 3, 3, 3, 0, 3],  # ties across the cut
            [2, 2, -1, 5, 2, 2, 2, 5],
            [0.5, -0.5, 0.25, 0.75, 1.0, -1.0, 0.0, 0.125],  # no ties
        ]
    )
    got = sess.run(None, {sess.get_inputs()[0].name: rows.numpy()})[0]
    np.testing.assert_array_equal(got, rank_mask(rows, 4, dim=1).numpy().astype(np.float32))
    assert (got.sum(1) == 4).all()


@pytest.mark.parametrize("lam", (0.5, 0.25))
def test_stream_asa_is_causal_asa(lam):
    torch.manual_seed(0)
    asa = CausalASA(16, AttentionConfig(kind="causal-asa", lam=lam)).eval()
    with torch.no_grad():  # non-default parameters, so that both maps and the scores matter
        for p in asa.parameters():
            p.add_(0.3 * torch.randn_like(p))
    fast = R.StreamASA(asa).eval()
    num, den = asa.init_state(3, torch.zeros(1))
    fnum, fden = num.clone(), den.clone()
    for _ in range(6):  # random currents: no ties, so torch's own topk order does not matter
        x = torch.randn(3, 16, 5, 7)
        with torch.no_grad():
            want, num, den = asa.step(x, num, den)
            got, fnum, fden = fast.step(x, fnum, fden)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        assert torch.equal(fnum, num) and torch.equal(fden, den)


def test_stream_asa_replaces_only_causal_asa():
    net = R.stream_asa(R.fold_batchnorm(untrained_network("tiny")))
    assert all(type(layer.attention) is R.StreamASA for layer in net.layers[:3])
    plain = R.stream_asa(R.fold_batchnorm(untrained_network("tiny", "none")))
    assert not any(isinstance(m, CausalASA) for m in plain.modules())


def _spikes(batch: int, n: int, rate: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, n, generator=g) < rate).float()


@pytest.mark.parametrize("bias", (False, True))
def test_spike_driven_linear_equals_linear(bias):
    torch.manual_seed(1)
    lin = nn.Linear(300, 20, bias=bias)
    fast = R.SpikeDrivenLinear(lin)
    sess = _ort(fast, _spikes(2, 300, 0.1, 0))
    name = sess.get_inputs()[0].name
    for batch, rate in ((1, 0.1), (4, 0.1), (3, 0.9), (1, 0.0), (5, 0.0)):  # rate 0: nothing active
        s = _spikes(batch, 300, rate, batch)
        with torch.no_grad():
            want = lin(s)
            torch.testing.assert_close(fast(s), want, rtol=1e-5, atol=1e-5)
        got = sess.run(None, {name: s.numpy()})[0]
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)
        assert got.shape == (batch, 20)


def test_spike_driven_linears_picks_large_layers():
    net = R.spike_driven_linears(R.fold_batchnorm(untrained_network("gesture3")))
    fast = [isinstance(m, R.SpikeDrivenLinear) for m in net.modules()]
    assert sum(fast) == 1  # FC256 over 8192 inputs (2 M weights); the output layer stays dense
    assert isinstance(net.layers[3].synapse[1], R.SpikeDrivenLinear)
    assert isinstance(net.layers[4].synapse, nn.Linear)
    small = R.spike_driven_linears(R.fold_batchnorm(untrained_network("tiny")))
    assert not any(isinstance(m, R.SpikeDrivenLinear) for m in small.modules())


@pytest.mark.parametrize("attention", ("causal-asa", "none"))
def test_inference_graph_of_an_exact_network_steps_exactly_like_it(attention):
    """All rewrites at once on the exact form (what the export traces), stepped in PyTorch: every
    spike and every piece of state equal to the plain exact network's."""
    from models.runtime.exact import exact_network, exact_spec
    from models.runtime.export import random_frames

    net = untrained_network("gesture3", attention)
    exact = exact_network(net, exact_spec(net))
    fast = R.inference_graph(exact, R.TORCH_REWRITES)
    frames = torch.from_numpy(random_frames(8, 2, (2, 32, 32), seed=5))
    a, b = exact.init_state(2), fast.init_state(2)
    spikes = 0
    with torch.inference_mode():
        for t in range(frames.shape[0]):
            oa, a = exact.step(frames[t], a)
            ob, b = fast.step(frames[t], b)
            assert torch.equal(oa.counts, ob.counts)
            assert all(torch.equal(x, y) for x, y in zip(a, b))
            spikes += int(oa.counts.sum())
    assert spikes > 0
