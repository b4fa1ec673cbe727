"""The compiled LIF window (models/lif_window.py) against autograd through lif_step, bit for bit,
with either surrogate.

The oracle is the definition itself: a Python loop over :func:`models.neuron.lif_step` with
autograd, which shares no code with the compiled passes. Compared as int32 bit patterns, so a
rounding difference or a zero of the other sign fails.
"""

from __future__ import annotations

import pytest
import torch

from models import neuron
from models.lif_window import lif_window
from models.neuron import LIFParams, lif_multistep, lif_step


def _autograd(x: torch.Tensor, h0: torch.Tensor, p: LIFParams) -> tuple[torch.Tensor, torch.Tensor]:
    h, spikes = h0, []
    for xt in x.unbind(0):
        s, h, _ = lif_step(xt, h, p)
        spikes.append(s)
    return torch.stack(spikes), h


def _run(fn, x, h0, p, w, wh):
    """Spikes, final state and the input's gradient of ``sum(s * w) (+ sum(h * wh))``."""
    x = x.clone().requires_grad_()
    s, h = fn(x, h0, p)
    loss = (s * w).sum() + ((h * wh).sum() if wh is not None else 0)
    loss.backward()
    return [t.detach().contiguous().view(torch.int32) for t in (s, h, x.grad)]


def _compiled(x, h0, p):
    return lif_window(x, h0, p, p.beta)


@pytest.mark.parametrize(
    "p",
    [
        LIFParams(),
        LIFParams(v_th=0.5, beta=0.7, width=0.3),
        LIFParams(v_th=1.0, beta=0.9, width=0.1),
        LIFParams(surrogate="atan"),
        LIFParams(v_th=0.5, beta=0.7, surrogate="atan", width=0.35),  # pi/2 / w rounds differently from pi/2 * (1/w)
    ],
    ids=["paper", "other-constants", "narrow-surrogate", "atan", "atan-other-constants"],
)
@pytest.mark.parametrize("state_grad", [False, True], ids=["spikes-only", "spikes-and-state"])
def test_equals_autograd_bit_for_bit(p: LIFParams, state_grad: bool) -> None:
    g = torch.Generator().manual_seed(7)
    t, shape = 25, (3, 5, 6, 7)  # 630 neurons: more than one block edge, fewer than one part
    for scale, shift in ((0.3, 0.0), (1.0, 0.0), (0.05, p.v_th), (3.0, 0.0), (0.2, p.v_th / 2)):
        x = torch.randn(t, *shape, generator=g) * scale + shift
        h0 = torch.rand(shape, generator=g) * p.v_th
        w = torch.randn(t, *shape, generator=g)
        wh = torch.randn(shape, generator=g) if state_grad else None
        want = _run(_autograd, x, h0, p, w, wh)
        got = _run(_compiled, x, h0, p, w, wh)
        for name, a, b in zip(("spikes", "state", "gradient"), want, got):
            assert torch.equal(a, b), f"{name} differs at scale {scale}, shift {shift}"


@pytest.mark.parametrize("surrogate", ["rect", "atan"])
def test_edges_of_the_threshold_and_the_surrogate_window(surrogate: str) -> None:
    p = LIFParams(surrogate=surrogate)
    a = p.width
    edges = [p.v_th, p.v_th - a, p.v_th + a, -0.0, 0.0, 1e-45, -1e-45, p.v_th * (1 + 1e-7), 0.55, 0.05]
    x = torch.tensor(edges, dtype=torch.float32).repeat(12, 1)
    x[::3] = -x[::3]  # currents of both signs, so potentials reach the edges from above and below
    w = torch.linspace(-1, 1, x.numel()).view_as(x)
    h0 = torch.zeros(x.shape[1])
    want = _run(_autograd, x, h0, p, w, torch.ones(x.shape[1]))
    got = _run(_compiled, x, h0, p, w, torch.ones(x.shape[1]))
    assert all(torch.equal(u, v) for u, v in zip(want, got))


def test_parts_on_several_threads_change_nothing() -> None:
    p = LIFParams()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 4, 9000, generator=g)  # 36,000 neurons: several parts on 2+ threads
    h0, w = torch.zeros(4, 9000), torch.randn(8, 4, 9000, generator=g)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run(_compiled, x, h0, p, w, None)
        torch.set_num_threads(3)
        three = _run(_compiled, x, h0, p, w, None)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(u, v) for u, v in zip(one, three))
    assert all(torch.equal(u, v) for u, v in zip(one, _run(_autograd, x, h0, p, w, None)))


def test_lif_multistep_takes_it_only_where_it_applies(monkeypatch) -> None:
    calls = []
    real = neuron._compiled_window

    def spy(*args):
        calls.append(real(*args))
        return calls[-1]

    monkeypatch.setattr(neuron, "_compiled_window", spy)
    x = torch.randn(5, 2, 3)
    lif_multistep(x.requires_grad_(), LIFParams())  # training on the CPU, the paper's neuron
    lif_multistep(x.detach(), LIFParams())  # no gradient wanted (evaluation): forward only
    lif_multistep(x, LIFParams(surrogate="atan"))
    lif_multistep(x, LIFParams(reset="soft"))
    lif_multistep(x, LIFParams(v_reset=0.1))
    lif_multistep(x, LIFParams(), keep_u=True)  # potentials asked for
    lif_multistep(x.double(), LIFParams())
    lif_multistep(x, LIFParams(), beta=torch.tensor(0.3, requires_grad=True))  # PLIF
    assert calls == [True, True, True, False, False, False, False, False]


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "no_grad_wanted"])
def test_forward_alone_equals_the_loop(mode: str, monkeypatch) -> None:
    """Evaluation runs the compiled forward without keeping potentials: the loop's spikes and state."""
    import models.lif_window

    ran = []
    real = models.lif_window.lif_window
    monkeypatch.setattr(models.lif_window, "lif_window", lambda *a: ran.append(1) or real(*a))
    p = LIFParams()
    g = torch.Generator().manual_seed(5)
    x, h0 = torch.randn(30, 4, 700, generator=g) * 0.4, torch.rand(4, 700, generator=g) * p.v_th
    want = _autograd(x, h0, p)
    context = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}.get(mode, torch.enable_grad)
    with context():
        got = lif_multistep(x, p, h0)
    assert ran == [1] and not got.spikes.requires_grad and got.u is None
    assert torch.equal(got.spikes.view(torch.int32), want[0].view(torch.int32))
    assert torch.equal(got.h.view(torch.int32), want[1].view(torch.int32))


def test_not_under_torch_export() -> None:
    """An exported graph must hold the loop's operations, not a call into compiled code."""

    class Window(torch.nn.Module):
        def forward(self, x):
            return lif_multistep(x, LIFParams()).spikes

    x = torch.randn(6, 2, 3)
    program = torch.export.export(Window(), (x,))
    assert torch.equal(program.module()(x), Window()(x))
    assert not any("LIFWindow" in str(node.target) for node in program.graph.nodes)
