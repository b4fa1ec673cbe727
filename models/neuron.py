"""Leaky integrate-and-fire dynamics: one step function for training and for the stepwise runtime.

Per layer and timestep (paper eq. 1-4)::

    U[t] = H[t-1] + X[t]
    S[t] = Heaviside(U[t] - Vth)                      # 1 when U >= Vth
    H[t] = Vreset * S[t] + beta * U[t] * (1 - S[t])   # hard reset
    H[t] = beta * (U[t] - Vth * S[t])                 # soft reset (subtract threshold)

``H`` is the state a stream carries between timesteps; at rest it is zero. The multi-step form
:func:`lif_multistep` is a loop over :func:`lif_step`, so the two cannot drift apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

Reset = Literal["hard", "soft"]
Surrogate = Literal["rect", "atan"]


@dataclass(frozen=True)
class LIFParams:
    """Neuron constants. Paper defaults: Vth 0.3, beta 0.3, hard reset to 0, rectangular surrogate."""

    v_th: float = 0.3
    beta: float = 0.3
    v_reset: float = 0.0
    reset: Reset = "hard"
    surrogate: Surrogate = "rect"
    width: float = 0.25  # rect: dS/dU = 1/(2a) on |U - Vth| < a; atan: sharpness alpha = 1/width


class _RectSpike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v: Tensor, width: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(v)
        ctx.width = width
        return (v >= 0).to(v.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (v,) = ctx.saved_tensors
        a = ctx.width
        return grad * (v.abs() < a).to(grad.dtype) / (2 * a), None


class _ATanSpike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v: Tensor, width: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(v)
        ctx.alpha = 1.0 / width
        return (v >= 0).to(v.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (v,) = ctx.saved_tensors
        alpha = ctx.alpha
        # d/dv of (1/pi) * atan(pi/2 * alpha * v) + 1/2
        return grad * alpha / 2 / (1 + (math.pi / 2 * alpha * v) ** 2), None


def spike(v: Tensor, p: LIFParams) -> Tensor:
    """Heaviside of ``v`` (= U - Vth) forward, the chosen surrogate gradient backward."""
    if not v.requires_grad:  # plain comparison: traceable by the ONNX exporter, no autograd node
        return (v >= 0).to(v.dtype)
    fn = _RectSpike if p.surrogate == "rect" else _ATanSpike
    return fn.apply(v, p.width)


def lif_step(x: Tensor, h: Tensor, p: LIFParams, beta: Tensor | float | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Advance one timestep: ``(input current X[t], state H[t-1]) -> (spikes S[t], state H[t], U[t])``.

    ``beta`` overrides ``p.beta`` (parametric LIF passes its learnt decay here). ``U`` is returned
    for instrumentation (membrane-potential distributions) only.
    """
    b = p.beta if beta is None else beta
    u = h + x
    if u.requires_grad or (isinstance(b, Tensor) and b.requires_grad):
        s = spike(u - p.v_th, p)
    else:  # the same as ``u - Vth >= 0`` (a float difference is 0 only for equal operands), one op less
        s = (u >= p.v_th).to(u.dtype)
    if p.reset == "soft":
        h_next = b * (u - p.v_th * s)
    elif p.v_reset == 0:  # the reset term would add an exact zero (and a zero gradient)
        h_next = b * u * (1 - s)
    else:
        h_next = p.v_reset * s + b * u * (1 - s)
    return s, h_next, u


class LIFOutput(NamedTuple):
    spikes: Tensor  # [T, B, ...]
    h: Tensor  # final state [B, ...]
    u: Tensor | None  # membrane potentials [T, B, ...] when asked for


def lif_multistep(
    x: Tensor, p: LIFParams, h: Tensor | None = None, beta: Tensor | float | None = None, keep_u: bool = False
) -> LIFOutput:
    """Run :func:`lif_step` over the leading time axis of ``x`` ([T, B, ...])."""
    h = torch.zeros_like(x[0]) if h is None else h
    b = p.beta if beta is None else beta
    if _compiled_window(x, h, p, b, keep_u):
        from models.lif_window import lif_window

        s, h = lif_window(x, h, p, float(b))
        return LIFOutput(s, h, None)
    spikes, us = [], []
    # unbind, not x[t]: the backward of T selects writes T full-size zero gradients (O(T^2) memory
    # traffic, 30 % of a gesture3 training step at T=60); unbind's backward stacks them once.
    for xt in x.unbind(0):
        s, h, u = lif_step(xt, h, p, beta)
        spikes.append(s)
        if keep_u:
            us.append(u)
    return LIFOutput(torch.stack(spikes), h, torch.stack(us) if keep_u else None)


# False: every window runs the autograd loop (``asasnn bench training`` compares the two).
COMPILED_WINDOW = True


def _compiled_window(x: Tensor, h: Tensor, p: LIFParams, beta: Tensor | float, keep_u: bool) -> bool:
    """Whether :mod:`models.lif_window` computes this window (on the CPU, hard reset to 0, a fixed
    decay; training or evaluation): the same values as the loop, in one compiled pass forward (and
    one backward) instead of T steps of elementwise operations."""
    return (
        COMPILED_WINDOW
        and type(x) is Tensor  # a plain tensor: not a fake or functional one under torch.export
        and not torch.compiler.is_compiling()
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and h.dtype == torch.float32
        and not h.requires_grad
        and not keep_u
        and not isinstance(beta, Tensor)
        and p.reset == "hard"
        and p.v_reset == 0
        and not torch.jit.is_tracing()
    )


class LIF(nn.Module):
    """LIF layer; with ``parametric=True`` the decay ``beta = sigmoid(w)`` is learnt (PLIF)."""

    def __init__(self, p: LIFParams, parametric: bool = False) -> None:
        super().__init__()
        self.p = p
        if parametric:
            init = math.log(p.beta / (1 - p.beta))  # sigmoid(init) == p.beta
            self.w = nn.Parameter(torch.tensor(init))
        else:
            self.register_parameter("w", None)

    def decay(self) -> Tensor | float:
        return self.p.beta if self.w is None else torch.sigmoid(self.w)

    def forward(self, x: Tensor, h: Tensor | None = None, keep_u: bool = False) -> LIFOutput:
        return lif_multistep(x, self.p, h, self.decay(), keep_u)

    def step(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return lif_step(x, h, self.p, self.decay())
