"""The LIF over a window on the CPU: forward and backward each in one compiled pass.

Training runs :func:`models.neuron.lif_multistep` over T timesteps. As autograd sees it, that is
five elementwise operations a step forward and about ten backward, each a full pass over the layer's
``[B, C, H, W]`` currents, with three saved tensors a step. Here a block of neurons at a time runs
its T steps, forward and then backward, its state in a small buffer, and only the membrane
potentials are saved: the tiny network trains a third faster, the paper's network in a fifth to a
quarter less memory (docs/training.md, "Speed on the CPU"). Without a gradient (evaluation) the
forward pass runs alone and keeps no potentials: a few percent faster, 8 % less peak memory on the
paper's network, whose convolutions take most of the time.

The values are those of autograd through :func:`models.neuron.lif_step`, bit for bit: the same
float32 operations in the same order (each gradient that autograd sums has two terms, so the order
of the sum cannot matter). ``tests/models/test_lif_window.py`` compares spikes, final state and
input gradients with autograd's bit patterns. Covered: hard reset to 0, a fixed decay, either
surrogate, float32 (the paper's neuron, and the arctangent surrogate's variant);
:func:`models.neuron.lif_multistep` runs the autograd loop for anything else.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

from models.jit import in_parts, kernel
from models.neuron import LIFParams

# Neurons in blocks, the time loop outside and the neurons inside: a row of the block per timestep is
# contiguous memory (one neuron's T steps would be T cache lines a layer apart).
_BLOCK = 1024


@kernel
def _forward(x, h0, v_th, beta, lo, hi, s, u, keep_u, h_end):  # pragma: no cover - compiled
    """Neurons ``lo:hi`` of ``x [T, N]`` from state ``h0 [N]``: spikes ``s``, potentials ``u`` (when
    ``keep_u``, for the backward), final state ``h_end``; :func:`models.neuron.lif_step`'s hard reset
    to 0, step by step."""
    one = np.float32(1.0)
    zero = np.float32(0.0)
    h = np.empty(_BLOCK, np.float32)
    for b0 in range(lo, hi, _BLOCK):
        m = min(_BLOCK, hi - b0)
        h[:m] = h0[b0 : b0 + m]
        for t in range(x.shape[0]):
            for j in range(m):
                ut = h[j] + x[t, b0 + j]
                st = one if ut - v_th >= zero else zero
                if keep_u:
                    u[t, b0 + j] = ut
                s[t, b0 + j] = st
                h[j] = (beta * ut) * (one - st)
        h_end[b0 : b0 + m] = h[:m]


@kernel
def _backward(g_s, u, g_h_end, has_g_h_end, v_th, beta, atan, width, lo, hi, g_x, g_h0):  # pragma: no cover
    """Gradients of neurons ``lo:hi``: ``g_x [T, N]`` and ``g_h0 [N]`` from ``g_s [T, N]`` (spikes)
    and ``g_h_end`` (final state, when ``has_g_h_end``), as autograd computes them through
    ``h = (beta * u) * (1 - s)``, ``s = spike(u - v_th)`` (the rectangular surrogate, or the arctangent
    one when ``atan``), ``u = h + x``. Scalars are rounded to float32 as torch rounds a Python number
    next to a float32 tensor."""
    one = np.float32(1.0)
    zero = np.float32(0.0)
    two = np.float32(2.0)
    two_a = np.float32(2.0 * width)  # rect: grad * (|v| < a) / (2 a)
    a = np.float32(width)
    alpha = np.float32(1.0 / width)  # atan: grad * alpha / 2 / (1 + (pi/2 alpha v)^2)
    c = np.float32(np.pi / 2 * (1.0 / width))
    g_h = np.empty(_BLOCK, np.float32)
    for b0 in range(lo, hi, _BLOCK):
        m = min(_BLOCK, hi - b0)
        if has_g_h_end:
            g_h[:m] = g_h_end[b0 : b0 + m]
        else:
            g_h[:m] = zero
        # the last step's new state reaches the loss only through g_h_end
        have = has_g_h_end
        for t in range(u.shape[0] - 1, -1, -1):
            for j in range(m):
                ut = u[t, b0 + j]
                v = ut - v_th
                st = one if v >= zero else zero
                gs = g_s[t, b0 + j]
                g_t1 = zero
                if have:  # h_next = t1 * t2 with t1 = beta * u, t2 = 1 - s
                    g_t1 = g_h[j] * (one - st)
                    gs = gs + -(g_h[j] * (beta * ut))
                if atan:
                    cv = c * v
                    g_u = ((gs * alpha) / two) / (one + cv * cv)
                else:
                    g_u = (gs * (one if abs(v) < a else zero)) / two_a
                if have:
                    g_u = g_u + g_t1 * beta
                g_x[t, b0 + j] = g_u
                g_h[j] = g_u
            have = True
        g_h0[b0 : b0 + m] = g_h[:m]


@functools.cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="asasnn-lif")


def _parallel(fn, n: int, args_for) -> None:
    """``fn(*args_for(lo, hi))`` over ``n`` neurons in up to torch's thread count of parts (at least
    4096 neurons each; neurons are independent, so the cut changes no value)."""
    parts = max(1, min(torch.get_num_threads(), n // 4096))
    in_parts(lambda lo, hi, _lane: fn(*args_for(lo, hi)), n, parts, _pool(parts - 1) if parts > 1 else None)


class _LIFWindow(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, h0: Tensor, v_th: float, beta: float, atan: bool, width: float, grad: bool):  # type: ignore[override]
        t, n = x.shape[0], x[0].numel()
        xs = x.detach().contiguous().view(t, n).numpy()
        h = h0.detach().contiguous().view(n).numpy()
        # the potentials only where a backward will read them (an evaluation saves T x N floats)
        s, u = torch.empty(t, n, dtype=torch.float32), torch.empty((t, n) if grad else (1, 1), dtype=torch.float32)
        h_end = torch.empty(n, dtype=torch.float32)
        vt, b = np.float32(v_th), np.float32(beta)
        _parallel(_forward, n, lambda lo, hi: (xs, h, vt, b, lo, hi, s.numpy(), u.numpy(), grad, h_end.numpy()))
        ctx.save_for_backward(u)
        ctx.constants, ctx.shape = (vt, b, bool(atan), float(width)), x.shape
        ctx.set_materialize_grads(False)
        return s.view(x.shape), h_end.view(x.shape[1:])

    @staticmethod
    def backward(ctx, g_s: Tensor | None, g_h: Tensor | None):  # type: ignore[override]
        (u,) = ctx.saved_tensors
        vt, b, atan, width = ctx.constants
        t, n = u.shape
        gs = np.zeros((t, n), np.float32) if g_s is None else g_s.contiguous().view(t, n).numpy()
        gh = np.zeros(n, np.float32) if g_h is None else g_h.contiguous().view(n).numpy()
        g_x, g_h0 = torch.empty(t, n, dtype=torch.float32), torch.empty(n, dtype=torch.float32)
        us = u.numpy()
        _parallel(
            _backward,
            n,
            lambda lo, hi: (gs, us, gh, g_h is not None, vt, b, atan, width, lo, hi, g_x.numpy(), g_h0.numpy()),
        )
        return g_x.view(ctx.shape), g_h0.view(ctx.shape[1:]), None, None, None, None, None


def lif_window(x: Tensor, h0: Tensor, p: LIFParams, beta: float) -> tuple[Tensor, Tensor]:
    """Spikes ``[T, ...]`` and final state of float32 currents ``x [T, ...]`` from state ``h0``, with
    decay ``beta``: :func:`models.neuron.lif_multistep` for a covered neuron (hard reset to 0),
    gradients included when autograd wants them."""
    grad = torch.is_grad_enabled() and (x.requires_grad or h0.requires_grad)
    return _LIFWindow.apply(x, h0, p.v_th, beta, p.surrogate == "atan", p.width, grad)


__all__ = ["lif_window"]
