"""Event-driven execution on the CPU: synapses that do work only for the inputs that spiked.

A spiking layer's input is mostly zeros. The dense step multiplies every zero anyway; here each
layer's LIF emits the *indices* of its spikes, and the next synapse scatters: a spike at
``(y, x, c)`` adds the weight column ``W[c, ky, kx, :]`` to each output position its kernel window
reaches (a 3x3 convolution: 9 positions; a 3x3 convolution followed by a 2x2 average pool, folded
into a 4x4 stride-2 kernel: 4), and a fully connected layer adds one weight row per input spike. The
first layer's input, event counts, is scattered the same way (count times column). The convolution
kernel computes this sum per output position (the columns of the active inputs in its window, the
accumulator kept in cache), which is the same sum with half the memory traffic.

This is the same function as :meth:`SpikingNet.step` of the bundle's exact network, value for value:
every synaptic sum of the exact form is exact in float32 in any order (docs/exact.md), so a
scatter-add gives the dense convolution's result bit for bit, and everything after the synapse (the
causal ASA's scores, ranking, running statistics and spatial maps, the LIF) is written here in the
same elementwise operations in the same order as the exact modules (``models/runtime/exact.py``,
``models/attention.py``, ``models/neuron.py``). The step function stays the definition:
``tests/models/runtime/test_event_runner.py`` compares the two exactly on random and recorded spike
patterns.

Per layer and step the runner picks the scatter or a dense product (PyTorch's convolution / matrix
product on the same exact weights) from the batch's input density against the layer's crossover,
the density above which the dense product is faster (:func:`measure_crossovers`; both give the same
values, so the choice only changes the speed). Each step also reports the work done: synaptic
accumulations actually executed (``ops``), next to the energy proxy's SOPs (spikes times fan-out).

Kernels are compiled with numba when the runner is built (cached on disk where a cache is
writable). Networks with max pooling are not supported (``ValueError``).
"""

from __future__ import annotations

import functools
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from models.attention import TIE_RTOL, CausalASA
from models.jit import in_parts, kernel
from models.network import SpikingNet
from models.runtime.bundle import ModelCard
from models.runtime.exact import ExactChannelScore, ExactSpatialMap, as_float32, map_constants
from models.runtime.rewrite import _fold_pool
from models.runtime.slots import StepRunner

HARD, SOFT = 0, 1


# ---- kernels -------------------------------------------------------------------------------------
@kernel
def _sparse_conv(ptr, idx, val, w, bias, in_hw, stride, pad, out):  # pragma: no cover - compiled
    """``out [B, Ho, Wo, Co]`` = bias + the weight columns of the active inputs, row by row.

    ``idx`` are flat ``(y, x, c)`` indices of a ``[Hi, Wi, Ci]`` input in increasing order (as the
    LIF and the frame encoder emit them), ``val`` their values (spikes: 1, frames: counts); row
    ``b``'s entries are ``ptr[b]:ptr[b+1]``; ``w [Ci, K, K, Co]``. Each output position adds, for
    every active input in its kernel window, that input's weight column: the sum a scatter of each
    spike into the positions it reaches would give, with the position's accumulator kept in cache.
    Returns the number of accumulations per row."""
    n = ptr.shape[0] - 1
    ci, k, co = w.shape[0], w.shape[1], w.shape[3]
    hi, wi = in_hw
    ho, wo = out.shape[1], out.shape[2]
    ops = np.zeros(n, np.int64)
    pix = np.zeros(hi * wi + 1, np.int64)  # the active inputs of each input pixel: pix[p]:pix[p+1]
    acc = np.empty(co, np.float32)
    for b in range(n):
        first = ptr[b]
        pix[:] = 0
        for e in range(first, ptr[b + 1]):
            pix[idx[e] // ci + 1] += 1
        for p in range(hi * wi):
            pix[p + 1] += pix[p]
        for oy in range(ho):
            for ox in range(wo):
                for o in range(co):
                    acc[o] = bias[o]
                for ky in range(k):
                    y = oy * stride - pad + ky
                    if y < 0 or y >= hi:
                        continue
                    for kx in range(k):
                        x = ox * stride - pad + kx
                        if x < 0 or x >= wi:
                            continue
                        p = y * wi + x
                        for e in range(first + pix[p], first + pix[p + 1]):
                            c = idx[e] % ci
                            v = val[e]
                            if v == 1.0:
                                for o in range(co):
                                    acc[o] += w[c, ky, kx, o]
                            else:
                                for o in range(co):
                                    acc[o] += v * w[c, ky, kx, o]
                        ops[b] += co * (pix[p + 1] - pix[p])
                for o in range(co):
                    out[b, oy, ox, o] = acc[o]
    return ops


@kernel
def _scatter_fc(ptr, idx, val, w, bias, out):  # pragma: no cover - compiled
    """``out [B, Out]`` = bias + the rows ``w [In, Out]`` of each row's active inputs (times value)."""
    n = ptr.shape[0] - 1
    co = w.shape[1]
    ops = np.zeros(n, np.int64)
    for b in range(n):
        out[b, :] = bias
        dst = out[b]
        for e in range(ptr[b], ptr[b + 1]):
            row = w[idx[e]]
            v = val[e]
            if v == 1.0:
                for o in range(co):
                    dst[o] += row[o]
            else:
                for o in range(co):
                    dst[o] += v * row[o]
        ops[b] = (ptr[b + 1] - ptr[b]) * co
    return ops


@kernel
def _causal_asa(cur, rows, num_t, den_t, grid, score_mean, score_max, k_top, rho, tie,
                digits, map_scale, map_lim, factors, units, sig_scale, table):  # pragma: no cover
    """Causal ASA in place on ``cur [B, H, W, C]`` (``CausalASA.step`` of the exact form), updating
    the running statistics ``num_t [cap, C]``, ``den_t [cap, 1]`` at ``rows``.

    Mirrors, in order: :class:`ExactChannelScore` (float64 sums, float32 result), the running mean,
    ``rank_mask`` (ties to the lower index), the time test with ``TIE_RTOL``, then per group
    :func:`exact_maps` (mean and max over the group's channels of ``z = x * mask``, digit
    convolutions, the sigmoid table) and ``a1 * z1 + a2 * z2``. The currents are multiples of
    ``1 / grid`` (the synapse's weight grid, a power of two) below ``2^24 / grid``, so the channel
    sums and maxima per pixel are taken on the integers ``x * grid``: exact, like the float64 sums of
    the exact module, and in any order (integer reductions vectorise; float ones may not be
    reordered). The digit convolutions are exact integer sums in float32, also in any order."""
    n, h, wd, c = cur.shape
    one, zero = np.float32(1.0), np.float32(0.0)
    inv64, inv32 = 1.0 / np.float64(grid), one / grid
    m = np.empty(c, np.float32)
    m1 = np.empty(c, np.float32)
    m2 = np.empty(c, np.float32)
    g1 = np.empty(c, np.int64)
    tot = np.empty(c, np.float64)
    pk = np.empty(c, np.float32)
    pooled = np.zeros((2, 2, h + 2, wd + 2), np.float32)  # group, (mean, max), zero-padded plane
    parts = np.empty((3, h, wd), np.float32)
    att = np.empty((2, h, wd), np.float32)
    half = table.shape[0] // 2
    for b in range(n):
        r = rows[b]
        x = cur[b]
        # channel scores: sum and max over space
        for ch in range(c):
            tot[ch] = 0.0
            pk[ch] = x[0, 0, ch]
        for yy in range(h):
            for xx in range(wd):
                for ch in range(c):
                    v = x[yy, xx, ch]
                    tot[ch] += np.float64(v)
                    pk[ch] = max(pk[ch], v)
        for ch in range(c):
            m[ch] = np.float32(tot[ch] * score_mean + np.float64(pk[ch]) * score_max)
        den = rho * den_t[r, 0] + one
        den_t[r, 0] = den
        for ch in range(c):
            num = rho * num_t[r, ch] + m[ch]
            num_t[r, ch] = num
            mbar = num / den
            top_t = m[ch] >= mbar - tie * abs(mbar)
            rank = 0
            for j in range(c):
                if m[j] > m[ch] or (m[j] == m[ch] and j < ch):
                    rank += 1
            g1[ch] = 1 if (rank < k_top) != top_t else 0
            m1[ch] = np.float32(g1[ch])
            m2[ch] = one - m1[ch]
        # each group's channel sum and max per pixel (z = x * mask: members' values, zeros elsewhere)
        for yy in range(h):
            for xx in range(wd):
                px = x[yy, xx]
                i1 = np.int64(px[0] * grid) * g1[0]
                s1, s2 = np.int64(0), np.int64(0)
                q1, q2 = i1, np.int64(px[0] * grid) - i1
                for ch in range(c):
                    iv = np.int64(px[ch] * grid)
                    i1 = iv * g1[ch]
                    i2 = iv - i1
                    s1 += i1
                    s2 += i2
                    q1 = max(q1, i1)
                    q2 = max(q2, i2)
                t1, t2 = np.float64(s1) * inv64, np.float64(s2) * inv64
                p1, p2 = np.float32(q1) * inv32, np.float32(q2) * inv32
                pooled[0, 0, yy + 1, xx + 1] = np.float32(min(max(np.rint(t1 * factors[0]), -map_lim), map_lim))
                pooled[1, 0, yy + 1, xx + 1] = np.float32(min(max(np.rint(t2 * factors[1]), -map_lim), map_lim))
                pooled[0, 1, yy + 1, xx + 1] = min(max(np.rint(p1 * map_scale), -map_lim), map_lim)
                pooled[1, 1, yy + 1, xx + 1] = min(max(np.rint(p2 * map_scale), -map_lim), map_lim)
        # per group: three digit convolutions (exact integer sums), joined in order, then the table
        for g in range(2):
            parts[:] = zero
            for d in range(3):
                for p in range(2):
                    for ky in range(3):
                        for kx in range(3):
                            wgt = digits[3 * g + d, p, ky, kx]
                            if wgt == zero:
                                continue
                            for yy in range(h):
                                for xx in range(wd):
                                    parts[d, yy, xx] += wgt * pooled[g, p, yy + ky, xx + kx]
            for yy in range(h):
                for xx in range(wd):
                    y = parts[0, yy, xx] * units[0]
                    y = y + parts[1, yy, xx] * units[1]
                    y = y + parts[2, yy, xx] * units[2]
                    pos = min(max(y * sig_scale, np.float32(-half)), np.float32(half))
                    base = min(np.floor(pos), np.float32(half - 1))
                    frac = pos - base
                    i = np.int64(base + np.float32(half))
                    att[g, yy, xx] = table[i, 0] + frac * table[i, 1]
        for yy in range(h):
            for xx in range(wd):
                a1 = att[0, yy, xx]
                a2 = att[1, yy, xx]
                for ch in range(c):
                    v = x[yy, xx, ch]
                    x[yy, xx, ch] = a1 * (v * m1[ch]) + a2 * (v * m2[ch])


@kernel
def _frame_inputs(frames, max_count, dense, ptr, idx, val):  # pragma: no cover - compiled
    """Event counts ``frames [B, C, H, W]`` as the exact form takes them (rounded half to even,
    saturated at ``max_count``) into ``dense [B, H*W*C]`` in ``(y, x, c)`` order, and their non-zero
    cells as ``idx``/``val`` with row offsets ``ptr``. Returns the number of non-zero cells."""
    n, c, h, w = frames.shape
    k = 0
    for b in range(n):
        ptr[b] = k
        j = 0
        for y in range(h):
            for x in range(w):
                for ch in range(c):
                    v = min(max(np.rint(frames[b, ch, y, x]), np.float32(0.0)), max_count)
                    dense[b, j] = v
                    if v != 0.0:
                        idx[k] = j
                        val[k] = v
                        k += 1
                    j += 1
    ptr[n] = k
    return k


@kernel
def _lif(cur, rows, h_t, v_th, beta, reset, v_reset, spikes_out, ptr_out, idx_out):  # pragma: no cover
    """LIF on ``cur [B, N]`` with the state ``h_t [cap, N]`` at ``rows`` (``lif_step``'s operations in
    its order): dense spikes into ``spikes_out [B, N]``, their indices into ``idx_out`` with row
    offsets ``ptr_out``. Returns the number of spikes written."""
    n, width = cur.shape
    k = 0
    one = np.float32(1.0)
    zero = np.float32(0.0)
    for b in range(n):
        ptr_out[b] = k
        r = rows[b]
        for j in range(width):
            u = h_t[r, j] + cur[b, j]
            s = one if u >= v_th else zero
            if reset == SOFT:
                h_t[r, j] = beta * (u - v_th * s)
            elif v_reset == zero:
                h_t[r, j] = beta * u * (one - s)
            else:
                h_t[r, j] = v_reset * s + beta * u * (one - s)
            spikes_out[b, j] = s
        for j in range(width):  # indices without a branch per neuron
            idx_out[k] = j
            k += np.int64(spikes_out[b, j] != zero)
    ptr_out[n] = k
    return k


# ---- the plan: the exact network's constants in the kernels' layouts -------------------------------
@dataclass
class _Asa:
    score_mean: float  # float64 factors of ExactChannelScore
    score_max: float
    k_top: int
    rho: np.float32
    tie: np.float32
    digits: np.ndarray  # [6, 2, 3, 3] float32: groups' digit kernels
    map_scale: np.float32
    map_lim: np.float32
    factors: np.ndarray  # [2] float64
    units: np.ndarray  # [3] float32
    sig_scale: np.float32
    table: np.ndarray  # [n, 2] float32


@dataclass
class _Layer:
    name: str
    kind: str  # "conv" or "fc"
    weight: np.ndarray  # conv [Ci, K, K, Co]; fc [In, Out] (rows in the previous layer's (y, x, c) order)
    bias: np.ndarray  # [Co] float32
    dense: nn.Conv2d | None  # conv: the same synapse for the dense path (NCHW input)
    in_shape: tuple[int, int, int]  # (C, H, W), or (In, 1, 1) for fc
    out_shape: tuple[int, int, int]
    stride: int
    pad: int
    grid: np.float32  # the currents are multiples of 1 / grid (a power of two: the weights' grid)
    asa: _Asa | None
    v_th: np.float32
    beta: np.float32
    reset: int
    v_reset: np.float32

    @functools.cached_property
    def inputs(self) -> int:
        return int(np.prod(self.in_shape))

    @functools.cached_property
    def neurons(self) -> int:
        return int(np.prod(self.out_shape))


def _asa_plan(att: CausalASA, hw: tuple[int, int]) -> _Asa:
    score, sa1, sa2 = att.score, att.sa1, att.sa2
    if not (isinstance(score, ExactChannelScore) and isinstance(sa1, ExactSpatialMap) and isinstance(sa2, ExactSpatialMap)):
        raise TypeError("the event runner takes an exact network (models.runtime.exact.exact_network)")
    c, lam = att.channels, att.cfg.lam
    scale = 2.0**sa1.map_bits
    if sa2.weight_bits != sa1.weight_bits:
        raise ValueError("both spatial maps of a layer share one weight grid in the exact form")
    factors, units = map_constants(sa1.map_bits, sa1.weight_bits, (c * lam, c * (1 - lam)))
    return _Asa(
        score_mean=as_float32(score.a / (hw[0] * hw[1])),
        score_max=score.g,
        k_top=int(c * lam),
        rho=np.float32(att.cfg.rho),
        tie=np.float32(TIE_RTOL),
        digits=torch.cat([sa1.digits, sa2.digits]).numpy().astype(np.float32),
        map_scale=np.float32(scale),
        map_lim=np.float32(float(sa1.map_clip) * scale),
        factors=np.array(factors, np.float64),
        units=np.array(units, np.float32),
        sig_scale=np.float32(sa1.sigmoid.scale),
        table=sa1.sigmoid.table.numpy().astype(np.float32),
    )


def _grid(weight: np.ndarray, bias: np.ndarray) -> np.float32:
    """The smallest power of two ``2^k`` that makes every weight and bias an integer: a synapse's
    currents (sums of its weights times integer inputs) are multiples of ``2^-k``."""
    vals = np.concatenate([weight.ravel(), bias.ravel()]).astype(np.float64)
    for k in range(64):
        scaled = vals * 2.0**k
        if np.array_equal(scaled, np.round(scaled)):
            return np.float32(2.0**k)
    raise ValueError("weights not on a dyadic grid: the event runner takes an exact network")


def _plan(net: SpikingNet) -> list[_Layer]:
    """The exact network ``net`` as kernel parameters, layer by layer."""
    from models.runtime.exact import SaturatedCounts

    first = net.layers[0].synapse
    if not (isinstance(first, nn.Sequential) and isinstance(first[0], SaturatedCounts)):
        raise TypeError("the event runner takes an exact network (models.runtime.exact.exact_network)")
    layers: list[_Layer] = []
    shape = (net.cfg.in_channels, *net.cfg.input_size)
    for name, layer, out_shape in zip(net.layer_names, net.layers, net.spike_shapes):
        mods = [m for m in (layer.synapse if isinstance(layer.synapse, nn.Sequential) else [layer.synapse])
                if not isinstance(m, (nn.Identity, nn.Flatten, SaturatedCounts))]
        if any(isinstance(m, (nn.MaxPool2d, nn.BatchNorm2d)) for m in mods):
            raise ValueError(f"{name}: max pooling and unfolded BatchNorm are not supported by the event runner")
        lin = mods[0]
        pooled = len(mods) > 1 and isinstance(mods[1], nn.AvgPool2d)
        if isinstance(lin, nn.Conv2d):
            conv = _fold_pool(lin) if pooled else lin
            if conv.kernel_size[0] != conv.kernel_size[1] or conv.groups != 1 or conv.dilation != (1, 1):
                raise ValueError(f"{name}: only square, ungrouped convolutions are supported")
            w = conv.weight.detach().float()
            weight = w.permute(1, 2, 3, 0).contiguous().numpy()  # [Ci, K, K, Co]
            bias = conv.bias.detach().float().numpy() if conv.bias is not None else np.zeros(w.shape[0], np.float32)
            kind, stride, pad, dense = "conv", conv.stride[0], conv.padding[0], conv.requires_grad_(False)
        else:
            w = lin.weight.detach().float()  # [Out, In] with In in the previous layer's (c, y, x) order
            if len(shape) == 3 and shape[1:] != (1, 1):  # rows in (y, x, c) order, as the spikes come
                w = w.view(w.shape[0], *shape).permute(0, 2, 3, 1).reshape(w.shape[0], -1)
            weight = w.t().contiguous().numpy()
            bias = lin.bias.detach().float().numpy() if lin.bias is not None else np.zeros(w.shape[0], np.float32)
            kind, stride, pad, dense = "fc", 1, 0, None  # the dense path multiplies by `weight` itself
        if layer.lif.w is not None:
            raise ValueError(f"{name}: a learnt decay must be a constant of the exact form")
        p = layer.lif.p
        att = layer.attention
        if att is not None and not isinstance(att, CausalASA):
            raise ValueError(f"{name}: only causal ASA runs one step at a time")
        full_out = out_shape if len(out_shape) == 3 else (out_shape[0], 1, 1)
        layers.append(
            _Layer(
                name=name,
                kind=kind,
                weight=np.ascontiguousarray(weight, np.float32),
                bias=np.ascontiguousarray(bias, np.float32),
                dense=dense,
                in_shape=shape if len(shape) == 3 else (shape[0], 1, 1),
                out_shape=full_out,
                stride=stride,
                pad=pad,
                grid=_grid(weight, bias),
                asa=_asa_plan(att, full_out[1:]) if att is not None else None,
                v_th=np.float32(p.v_th),
                beta=np.float32(layer.lif.decay()),
                reset=SOFT if p.reset == "soft" else HARD,
                v_reset=np.float32(p.v_reset),
            )
        )
        shape = full_out
    return layers


# ---- the step ------------------------------------------------------------------------------------
DEFAULT_CROSSOVER = 0.25  # input density above which a layer runs dense, until measured


@dataclass
class EventStep:
    """What one step did for each row: spikes per layer, accumulations executed per layer, and
    which layers ran dense."""

    out: np.ndarray  # [n, K]
    counts: np.ndarray  # [n, L] float32
    ops: np.ndarray  # [n, L] int64: synaptic accumulations executed (dense layers: all of them)
    dense: list[bool]


class EventNet:
    """The event-driven step of an exact network on HWC state tables (see the module docstring)."""

    def __init__(self, exact: SpikingNet, crossovers: list[float] | None = None) -> None:
        self.layers = _plan(exact)
        self.num_classes, self.vote = exact.cfg.num_classes, exact.cfg.vote
        n = len(self.layers)
        self.crossovers = list(crossovers) if crossovers is not None else [DEFAULT_CROSSOVER] * n
        if len(self.crossovers) != n:
            raise ValueError(f"{n} crossovers needed, got {len(self.crossovers)}")
        self.max_count = float(exact.layers[0].synapse[0].max_count)
        self._buf: dict[int, list[np.ndarray]] = {}  # per lane: work arrays for its largest batch

    def state_shapes(self) -> list[tuple[int, ...]]:
        """Kernel-side state per layer: ``h [H, W, C]`` (or ``[N]``), then ``num [C]``, ``den [1]``."""
        out: list[tuple[int, ...]] = []
        for layer in self.layers:
            c, h, w = layer.out_shape
            out.append((h, w, c) if layer.kind == "conv" else (c,))
            if layer.asa is not None:
                out += [(c,), (1,)]
        return out

    def to_network_layout(self, state: list[np.ndarray]) -> list[np.ndarray]:
        """One slot's kernel-side state in the network's order and shapes (``SpikingNet.state_shapes``)."""
        return [s.transpose(2, 0, 1).copy() if s.ndim == 3 else s.copy() for s in state]

    def from_network_layout(self, state: list[np.ndarray]) -> list[np.ndarray]:
        return [np.ascontiguousarray(s.transpose(1, 2, 0)) if s.ndim == 3 else s.copy() for s in state]

    def _buffers(self, n: int, lane: int) -> list[np.ndarray]:
        """Work arrays of ``lane`` for a batch of ``n`` (kept for the largest batch seen, used as views)."""
        made = self._buf[lane][0].shape[0] if lane in self._buf else 0
        if n > made:
            size = max(n, 2 * made)
            neurons = [layer.neurons for layer in self.layers]
            first = self.layers[0].inputs
            self._buf[lane] = [
                np.empty((size, first), np.float32),  # layer 1's input: event counts, (y, x, c) order
                np.empty(size * first, np.int64),
                np.empty(size * first, np.float32),
                np.ones(size * max(first, *neurons), np.float32),  # the value of every spike
                *[np.empty((size, m), np.float32) for m in neurons],  # currents
                *[np.empty((size, m), np.float32) for m in neurons],  # spikes
                *[np.empty(size * m, np.int64) for m in neurons],  # spike indices
            ]
        return self._buf[lane]

    def step(self, rows: np.ndarray, frames: np.ndarray, tables: list[np.ndarray], lane: int = 0) -> EventStep:
        """Advance ``rows`` of the state ``tables`` (:meth:`state_shapes` with a leading slot axis)
        with ``frames [n, C, H, W]`` (event counts). Steps of different ``lane``s (own work arrays)
        may run at once on disjoint rows: the kernels release the GIL."""
        n, nl = rows.shape[0], len(self.layers)
        buf = self._buffers(n, lane)
        x, idx, val, ones = buf[0][:n], buf[1], buf[2], buf[3]
        currents, spikes_buf, index_buf = buf[4 : 4 + nl], buf[4 + nl : 4 + 2 * nl], buf[4 + 2 * nl :]
        ptr = np.empty(n + 1, np.int64)
        total = _frame_inputs(np.ascontiguousarray(frames, np.float32), np.float32(self.max_count), x, ptr, idx, val)
        idx, val = idx[:total], val[:total]
        spike_counts = np.empty((n, nl), np.float32)
        ops = np.empty((n, nl), np.int64)
        ran_dense: list[bool] = []
        k = 0
        for li, layer in enumerate(self.layers):
            dense = n > 0 and ptr[n] / (n * layer.inputs) > self.crossovers[li]
            ran_dense.append(bool(dense))
            c, h, w = layer.out_shape
            cur = currents[li][:n].reshape((n, h, w, c) if layer.kind == "conv" else (n, c))
            if dense:
                cur[...] = self._dense(layer, x, n)
                ops[:, li] = self._dense_ops(layer)
            else:
                ops[:, li] = _synapse(layer, ptr, idx, val, cur)
            h_table = tables[k]
            if layer.asa is not None:
                a = layer.asa
                _causal_asa(
                    cur, rows, tables[k + 1], tables[k + 2], layer.grid, a.score_mean, a.score_max, a.k_top, a.rho, a.tie,
                    a.digits, a.map_scale, a.map_lim, a.factors, a.units, a.sig_scale, a.table,
                )
                k += 3
            else:
                k += 1
            x = spikes_buf[li][:n]
            ptr = np.empty(n + 1, np.int64)
            total = _lif(
                currents[li][:n], rows, h_table.reshape(h_table.shape[0], -1), layer.v_th, layer.beta,
                layer.reset, layer.v_reset, x, ptr, index_buf[li],
            )
            idx, val = index_buf[li][:total], ones[:total]
            spike_counts[:, li] = ptr[1:] - ptr[:-1]
        out = x
        if self.vote > 1:
            out = out.reshape(n, self.num_classes, self.vote).sum(-1) / np.float32(self.vote)
        return EventStep(out.copy(), spike_counts, ops, ran_dense)

    @staticmethod
    def _dense_ops(layer: _Layer) -> int:
        c, h, w = layer.out_shape
        if layer.kind == "fc":
            return layer.inputs * c
        return h * w * c * layer.in_shape[0] * layer.weight.shape[1] * layer.weight.shape[2]

    @staticmethod
    @torch.inference_mode()
    def _dense(layer: _Layer, x: np.ndarray, n: int) -> np.ndarray:
        """The synapse as one dense product on the exact weights (same values as the scatter)."""
        if layer.kind == "fc":
            y = torch.from_numpy(np.ascontiguousarray(x.reshape(n, -1))) @ torch.from_numpy(layer.weight)
            return (y + torch.from_numpy(layer.bias)).numpy()
        c, h, w = layer.in_shape
        t = torch.from_numpy(np.ascontiguousarray(x)).view(n, h, w, c).permute(0, 3, 1, 2).contiguous()
        assert layer.dense is not None
        y = layer.dense(t)
        return np.ascontiguousarray(y.permute(0, 2, 3, 1).numpy())


def _synapse(layer: _Layer, ptr: np.ndarray, idx: np.ndarray, val: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """A layer's synaptic currents from its active inputs into ``cur``; the accumulations per row."""
    if layer.kind == "conv":
        in_hw = (layer.in_shape[1], layer.in_shape[2])
        return _sparse_conv(ptr, idx, val, layer.weight, layer.bias, in_hw, layer.stride, layer.pad, cur)
    return _scatter_fc(ptr, idx, val, layer.weight, layer.bias, cur)


def measure_crossovers(
    net: EventNet, batch: int = 8, densities: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5), repeat: int = 5
) -> list[float]:
    """Per layer, the lowest input density (of ``densities``) at which the dense product is faster than
    the scatter, timed on random spikes at ``batch`` streams (1.0 where the scatter always wins)."""
    rng = np.random.default_rng(0)
    out = []
    for layer in net.layers:
        cross = 1.0
        for d in densities:
            x = (rng.random((batch, layer.inputs)) < d).astype(np.float32)
            flat = np.flatnonzero(x)
            ptr = np.zeros(batch + 1, np.int64)
            np.cumsum((x != 0).sum(1), out=ptr[1:])
            idx, val = flat % layer.inputs, np.ones(flat.shape[0], np.float32)
            c, h, w = layer.out_shape
            cur = np.empty((batch, h, w, c) if layer.kind == "conv" else (batch, c), np.float32)
            sparse = functools.partial(_synapse, layer, ptr, idx, val, cur)
            dense = functools.partial(EventNet._dense, layer, x, batch)
            if _best_of(dense, repeat) < _best_of(sparse, repeat):
                cross = d
                break
        out.append(cross)
    return out


def _best_of(fn, repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


# ---- the runner ----------------------------------------------------------------------------------
class EventStepRunner(StepRunner):
    """Event-driven CPU backend (``backend="event"``) on an exact network: state tables in numpy,
    the step in :class:`EventNet`. Results equal the other backends' value for value; ``last_ops``
    holds the accumulations each row of the last step executed per layer. ``threads``: a batch is cut
    into up to this many parts stepped at once (the kernels release the GIL)."""

    def __init__(
        self, net: SpikingNet, card: ModelCard, capacity: int = 8, crossovers: list[float] | None = None,
        threads: int = 1,
    ) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.event = EventNet(net, crossovers)
        self.threads = threads
        # lanes 1.. run on these threads, lane 0 on the caller's (see _step)
        self._pool = ThreadPoolExecutor(threads - 1, thread_name_prefix="asasnn-event") if threads > 1 else None
        self._tables: list[np.ndarray] = []
        self.last_ops: np.ndarray = np.zeros((0, len(self.event.layers)), np.int64)
        self.last_dense: list[bool] = []
        super().__init__(card, net, capacity)
        self._warm_up()

    def _warm_up(self) -> None:
        """Compile (or load from numba's cache) every kernel now, not on a stream's first step:
        one step of the scratch row on the sparse path and one on the dense path."""
        scratch = np.array([self._capacity], dtype=np.int64)
        frame = np.ones((1, *self.frame_shape), np.float32)
        saved = self.event.crossovers
        for cross in (1.0, -1.0):
            self.event.crossovers = [cross] * len(saved)
            self.event.step(scratch, frame, self._tables)
        self.event.crossovers = saved
        self._clear(scratch)

    def _resize(self, capacity: int) -> None:
        new = [np.zeros((capacity + 1, *s), np.float32) for s in self.event.state_shapes()]
        for a, b in zip(new, self._tables):
            a[: b.shape[0] - 1] = b[:-1]
        self._tables = new

    def _clear(self, rows: np.ndarray) -> None:
        for t in self._tables:
            t[rows] = 0.0

    def _read(self, row: int) -> list[np.ndarray]:
        return self.event.to_network_layout([t[row] for t in self._tables])

    def _write(self, row: int, state: list[np.ndarray]) -> None:
        for t, v in zip(self._tables, self.event.from_network_layout(state)):
            t[row] = v

    def _advance(self, rows: np.ndarray, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        res = self._step(rows, frames)
        self.last_ops, self.last_dense = res.ops, res.dense
        return res.out, res.counts, np.ones(rows.shape[0], dtype=bool)

    def _step(self, rows: np.ndarray, frames: np.ndarray) -> EventStep:
        """The batch cut into ``threads`` contiguous parts stepped at once, one lane each. Rows never
        interact, and each part picks scatter or dense by its own density (both give the same
        values), so the cut changes the speed only."""
        done = in_parts(
            lambda a, b, lane: self.event.step(rows[a:b], frames[a:b], self._tables, lane),
            rows.shape[0], self.threads, self._pool,
        )
        if len(done) == 1:
            return done[0]
        return EventStep(
            np.concatenate([d.out for d in done]),
            np.concatenate([d.counts for d in done]),
            np.concatenate([d.ops for d in done]),
            [any(flags) for flags in zip(*(d.dense for d in done))],
        )


__all__ = ["DEFAULT_CROSSOVER", "EventNet", "EventStep", "EventStepRunner", "measure_crossovers"]
