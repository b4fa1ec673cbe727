"""LIF dynamics (models/neuron.py): traces and gradients pinned by hand-computed values.

Paper settings throughout unless a test says otherwise: Vth = 0.3, beta = 0.3, hard reset to 0,
rectangular surrogate of half-width a = 0.25.
"""

from __future__ import annotations

import math

import pytest
import torch

from models.neuron import LIF, LIFParams, lif_multistep, lif_step, spike

PAPER = LIFParams()


def _trace(x: list[float], p: LIFParams) -> tuple[list[float], list[float], list[float]]:
    """Run lif_step over a scalar input sequence in float64; return U, S, H as lists."""
    h = torch.zeros((), dtype=torch.float64)
    us, ss, hs = [], [], []
    for xt in x:
        s, h, u = lif_step(torch.tensor(xt, dtype=torch.float64), h, p)
        us.append(u.item())
        ss.append(s.item())
        hs.append(h.item())
    return us, ss, hs


def test_paper_defaults() -> None:
    assert (PAPER.v_th, PAPER.beta, PAPER.v_reset, PAPER.reset, PAPER.surrogate, PAPER.width) == (
        0.3, 0.3, 0.0, "hard", "rect", 0.25,
    )


def test_constant_input_trace_hard_reset() -> None:
    # X = 0.25 every step:
    # t0: U = 0 + 0.25 = 0.25 < 0.3 -> S 0, H = 0.3 * 0.25 = 0.075
    # t1: U = 0.075 + 0.25 = 0.325 >= 0.3 -> S 1, H = 0 (hard reset)
    # and the pattern repeats with period 2.
    u, s, h = _trace([0.25] * 6, PAPER)
    assert u == pytest.approx([0.25, 0.325, 0.25, 0.325, 0.25, 0.325], abs=1e-12)
    assert s == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    assert h == pytest.approx([0.075, 0.0, 0.075, 0.0, 0.075, 0.0], abs=1e-12)


def test_subthreshold_constant_input_never_fires() -> None:
    # X = 0.2: U converges to 0.2 / (1 - 0.3) = 0.2857 < Vth.
    # U: 0.2, 0.26, 0.278, 0.2834, 0.28502 ; H = 0.3 U
    u, s, h = _trace([0.2] * 5, PAPER)
    assert u == pytest.approx([0.2, 0.26, 0.278, 0.2834, 0.28502], abs=1e-12)
    assert s == [0.0] * 5
    assert h == pytest.approx([0.06, 0.078, 0.0834, 0.08502, 0.085506], abs=1e-12)


def test_varying_input_trace_hard_reset() -> None:
    # t0: U = 0.1            -> S 0, H = 0.03
    # t1: U = 0.03 + 0.5 = 0.53 -> S 1, H = 0
    # t2: U = 0.2            -> S 0, H = 0.06
    # t3: U = 0.06 + 0.25 = 0.31 -> S 1, H = 0
    # t4: U = -0.1           -> S 0, H = -0.03
    # t5: U = -0.03 + 0.4 = 0.37 -> S 1, H = 0
    u, s, h = _trace([0.1, 0.5, 0.2, 0.25, -0.1, 0.4], PAPER)
    assert u == pytest.approx([0.1, 0.53, 0.2, 0.31, -0.1, 0.37], abs=1e-12)
    assert s == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    assert h == pytest.approx([0.03, 0.0, 0.06, 0.0, -0.03, 0.0], abs=1e-12)


def test_hard_reset_to_nonzero_value() -> None:
    # Vreset = -0.1, X = [0.45, 0.45, 0.1]:
    # t0: U = 0.45 -> S 1, H = -0.1;  t1: U = 0.35 -> S 1, H = -0.1;  t2: U = 0.0 -> S 0, H = 0
    u, s, h = _trace([0.45, 0.45, 0.1], LIFParams(v_reset=-0.1))
    assert u == pytest.approx([0.45, 0.35, 0.0], abs=1e-12)
    assert s == [1.0, 1.0, 0.0]
    assert h == pytest.approx([-0.1, -0.1, 0.0], abs=1e-12)


def test_soft_reset_trace() -> None:
    # Soft reset: H = beta * (U - Vth * S)
    # t0: U = 0.5    -> S 1, H = 0.3 * 0.2 = 0.06
    # t1: U = 0.26   -> S 0, H = 0.078
    # t2: U = 0.078  -> S 0, H = 0.0234
    # t3: U = 0.4234 -> S 1, H = 0.3 * 0.1234 = 0.03702
    u, s, h = _trace([0.5, 0.2, 0.0, 0.4], LIFParams(reset="soft"))
    assert u == pytest.approx([0.5, 0.26, 0.078, 0.4234], abs=1e-12)
    assert s == [1.0, 0.0, 0.0, 1.0]
    assert h == pytest.approx([0.06, 0.078, 0.0234, 0.03702], abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fires_exactly_at_threshold(dtype: torch.dtype) -> None:
    h = torch.zeros(3, dtype=dtype)
    vth = torch.tensor(0.3, dtype=dtype)
    below = torch.nextafter(vth, torch.tensor(0.0, dtype=dtype))
    above = torch.nextafter(vth, torch.tensor(1.0, dtype=dtype))
    x = torch.stack([vth, below, above])
    s, _, u = lif_step(x, h, PAPER)
    assert u[0].item() == vth.item()  # U == Vth exactly
    assert s.tolist() == [1.0, 0.0, 1.0]  # U >= Vth fires; one ulp below does not


def _surrogate_grad(v: float, p: LIFParams) -> float:
    x = torch.tensor(v, dtype=torch.float64, requires_grad=True)
    spike(x, p).backward()
    assert x.grad is not None
    return x.grad.item()


def test_rect_surrogate_gradient() -> None:
    # dS/dU = 1 / (2a) = 1 / 0.5 = 2 on |U - Vth| < a = 0.25, else 0.
    for v in (0.0, 0.1, -0.1, 0.2499, -0.2499):
        assert _surrogate_grad(v, PAPER) == pytest.approx(2.0)
    for v in (0.25, -0.25, 0.3, -1.0, 5.0):
        assert _surrogate_grad(v, PAPER) == 0.0
    # another width: a = 0.5 -> 1 / (2 * 0.5) = 1
    assert _surrogate_grad(0.4, LIFParams(width=0.5)) == pytest.approx(1.0)


def test_atan_surrogate_gradient() -> None:
    # S ~ atan(pi/2 * alpha * v) / pi + 1/2, alpha = 1 / width.
    # dS/dv = alpha / 2 / (1 + (pi/2 * alpha * v)^2); at v = 0 it is alpha / 2.
    assert _surrogate_grad(0.0, LIFParams(surrogate="atan", width=0.25)) == pytest.approx(2.0)  # alpha 4
    assert _surrogate_grad(0.0, LIFParams(surrogate="atan", width=0.5)) == pytest.approx(1.0)  # alpha 2
    # alpha 2 at v = 1: 1 / (1 + pi^2) = 0.0920000...
    assert _surrogate_grad(1.0, LIFParams(surrogate="atan", width=0.5)) == pytest.approx(1 / (1 + math.pi**2))


def test_spike_forward_is_heaviside_with_and_without_grad() -> None:
    v = torch.tensor([-0.5, -1e-9, 0.0, 1e-9, 0.5], dtype=torch.float64)
    expected = [0.0, 0.0, 1.0, 1.0, 1.0]
    assert spike(v, PAPER).tolist() == expected
    assert spike(v.clone().requires_grad_(), PAPER).tolist() == expected
    assert spike(v.clone().requires_grad_(), LIFParams(surrogate="atan")).tolist() == expected


def test_gradient_through_one_step() -> None:
    # X = 0.2 with H = 0.05: U = 0.25, |U - Vth| = 0.05 < a -> dS/dX = 2; S = 0.
    x = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    s, _, _ = lif_step(x, torch.tensor(0.05, dtype=torch.float64), PAPER)
    assert s.item() == 0.0
    s.backward()
    assert x.grad is not None and x.grad.item() == pytest.approx(2.0)


@pytest.mark.parametrize("p", [PAPER, LIFParams(reset="soft"), LIFParams(surrogate="atan")])
def test_multistep_equals_loop_of_step(p: LIFParams) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(7, 3, 4, 5, 5, generator=g) * 0.6 - 0.1
    h0 = torch.rand(3, 4, 5, 5, generator=g) * 0.2

    out = lif_multistep(x, p, h0.clone(), keep_u=True)

    h, ss, us = h0.clone(), [], []
    for t in range(x.shape[0]):
        s, h, u = lif_step(x[t], h, p)
        ss.append(s)
        us.append(u)
    assert torch.equal(out.spikes, torch.stack(ss))
    assert out.u is not None and torch.equal(out.u, torch.stack(us))
    assert torch.equal(out.h, h)
    assert 0 < out.spikes.sum() < out.spikes.numel()  # not vacuous
    assert lif_multistep(x, p).u is None
    assert torch.equal(lif_multistep(x, p).h, lif_multistep(x, p, torch.zeros_like(h0)).h)  # h=None is rest


def test_multistep_gradients_equal_loop_gradients() -> None:
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(6, 2, 8, generator=g, dtype=torch.float64) * 0.5
    xa, xb = x0.clone().requires_grad_(), x0.clone().requires_grad_()
    lif_multistep(xa, PAPER).spikes.sum().backward()
    h, total = torch.zeros(2, 8, dtype=torch.float64), 0
    for t in range(6):
        s, h, _ = lif_step(xb[t], h, PAPER)
        total = total + s.sum()
    total.backward()
    assert xa.grad is not None and xb.grad is not None
    assert torch.equal(xa.grad, xb.grad)
    assert xa.grad.abs().sum() > 0


def test_lif_module_step_and_forward_agree() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.rand(5, 2, 6, generator=g) * 0.5
    lif = LIF(PAPER)
    out = lif(x)
    h = torch.zeros(2, 6)
    for t in range(5):
        s, h, _ = lif.step(x[t], h)
        assert torch.equal(s, out.spikes[t])
    assert lif.w is None and lif.decay() == 0.3


def test_plif_decay_initialised_to_beta() -> None:
    lif = LIF(PAPER, parametric=True)
    assert isinstance(lif.w, torch.nn.Parameter)
    assert torch.sigmoid(lif.w).item() == pytest.approx(0.3, abs=1e-7)
    assert lif.decay().item() == pytest.approx(0.3, abs=1e-7)
    # same trace as the fixed-decay neuron at init
    x = torch.tensor([[0.1], [0.5], [0.2], [0.25], [-0.1], [0.4]])
    assert lif(x).spikes.flatten().tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]


def test_plif_decay_learns() -> None:
    # X = [0.2, 0.2], beta = sigmoid(w) = 0.3:
    # t0: U0 = 0.2, S0 = 0, H0 = 0.2 beta
    # t1: U1 = 0.2 beta + 0.2 = 0.26 -> S1 = 0, |U1 - Vth| = 0.04 < a -> dS1/dU1 = 2
    # d(S0 + S1)/dw = dS1/dU1 * dU1/dbeta * dbeta/dw = 2 * 0.2 * beta (1 - beta) = 2 * 0.2 * 0.21 = 0.084
    lif = LIF(PAPER, parametric=True).double()
    out = lif(torch.tensor([[0.2], [0.2]], dtype=torch.float64))
    assert out.spikes.sum().item() == 0.0
    out.spikes.sum().backward()
    assert lif.w is not None and lif.w.grad is not None
    assert lif.w.grad.item() == pytest.approx(0.084, rel=1e-6)
    # a gradient step moves the decay
    with torch.no_grad():
        lif.w -= 1.0 * lif.w.grad
    assert lif.decay().item() < 0.3


@pytest.mark.parametrize(
    "p",
    [PAPER, LIFParams(reset="soft"), LIFParams(v_reset=-0.1), LIFParams(v_th=0.5, beta=0.9)],
    ids=["hard", "soft", "hard-vreset", "vth-beta"],
)
def test_forward_values_do_not_depend_on_gradients(p: LIFParams) -> None:
    """Without gradients lif_step takes a shorter form (``u >= Vth``, no zero reset term); its
    values must equal the autograd form's, including currents landing exactly on the threshold."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, generator=g) * 0.4
    h = torch.randn(4096, generator=g) * 0.2
    x[:512] = p.v_th - h[:512]  # u exactly at (or one rounding away from) the threshold
    xg = x.clone().requires_grad_(True)
    s_grad, h_grad, u_grad = lif_step(xg, h, p)
    with torch.no_grad():
        s, h_next, u = lif_step(x, h, p)
    assert s_grad.requires_grad and not s.requires_grad
    assert torch.equal(s, s_grad.detach()) and torch.equal(u, u_grad.detach())
    assert torch.equal(h_next, h_grad.detach())  # == compares values: -0.0 equals 0.0
    assert s[:512].sum() > 0  # the threshold cases fire (u >= Vth), so they are really exercised
