"""Exact spiking arithmetic: the inference form of a network whose results do not depend on the
batch a stream shares, the backend or the CPU (docs/exact.md).

Why it is possible: every synaptic layer of a spiking network sums spikes (0/1) or event counts
(small integers) times weights. With the weights on a dyadic grid (integers times ``2^-k``) and
every partial sum below ``2^(24-k)`` in magnitude, each float32 sum is exact, so its value is the
same in any summation order: any batch size, kernel, SIMD width, backend. What is not a sum is an
elementwise IEEE operation (``beta * u``, ``h + x``, the causal statistics), correctly rounded and
therefore identical wherever the same operations run in the same order. The rules:

1. **Synapses.** BatchNorm is folded into the convolution; weights and bias go on the grid
   ``2^-k`` with ``k`` chosen per layer from the worst-case sum (``|b| + max_input * sum |w|``,
   two more bits where a 2x2 average pool follows): :func:`exact_spec` picks the finest grid that
   fits and refuses a layer that would need one coarser than ``2^-MIN_WEIGHT_BITS``.
2. **Frames** are event counts: rounded and saturated at ``max_count`` (:class:`SaturatedCounts`),
   which bounds the first layer's sums.
3. **ASA's large reductions** over space (channel scores) and channels (spatial-map inputs) run in
   float64, where sums of float32 values on a grid are exact at any size used here
   (:class:`ExactChannelScore`, :func:`exact_maps`).
4. **Spatial maps** (:class:`ExactSpatialMap`): the channel mean and max go on the grid
   ``2^-map_bits`` (clipped to ``+-map_clip``), the 3x3 weights on ``2^-p`` (``p`` per layer,
   float32-representable), so the 18 products of the map's convolution share one grid and their sum
   is exact in float64; the convolution is a one-hot convolution that copies the 18 taps (exact)
   and a float64 product with the weights. ASA-1's small mixing over T is summed in a fixed order
   (:func:`fixed_order_matmul`).
5. **Transcendentals** become tables: the spatial maps' sigmoid is read from a table (linear
   interpolation between entries ``2^-sigmoid_bits`` apart) with a gather, because backends'
   ``Sigmoid`` / ``Exp`` differ in the last bits; the table comes from decimal arithmetic, the same
   everywhere. Learnt decays (PLIF) become float32 constants recorded in the card.

Training stays in float32; this form is derived from the trained weights at export and at load
(:func:`exact_network`) and is what every runner, the exported graph and ``asasnn eval`` of a
bundle compute. :func:`check_ranges` re-proves the bounds on every load.
"""

from __future__ import annotations

import copy
import decimal
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from models.attention import ASA, SA, CausalASA, SpatialMap, _ChannelScore
from models.network import SpikingNet
from models.neuron import LIF

FLOAT32_BITS = 24  # significand bits: integers up to 2^24 are exact in float32
FLOAT64_BITS = 53
MIN_WEIGHT_BITS = 6  # a coarser weight grid than 2^-6 is refused: the network would not be itself
MAX_WEIGHT_BITS = 24


class ExactArithmetic(BaseModel):
    """The card's ``arithmetic`` section: every constant of the exact form (docs/exact.md)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["exact"] = "exact"
    max_count: int = Field(default=1023, ge=1, le=1 << 16)  # frame cells saturate at this many events
    weight_bits: list[int]  # per layer: synapse weights and bias are integers times 2^-k
    map_bits: int = Field(default=16, ge=0, le=20)  # spatial-map inputs on the grid 2^-map_bits ...
    map_clip: int = Field(default=64, ge=1, le=1024)  # ... clipped to +-map_clip
    map_weight_bits: list[int | None]  # per layer with attention: spatial-map weights on 2^-p
    sigmoid_bits: int = Field(default=6, ge=0, le=10)  # sigmoid table step 2^-sigmoid_bits
    sigmoid_range: int = Field(default=16, ge=1, le=64)  # the table spans [-range, range]
    decay: list[float | None]  # per layer: a learnt (PLIF) decay as a float32 constant, else None


class ExactRangeError(ValueError):
    """A layer's sums could leave the range where float32 is exact."""


# ---- pure helpers --------------------------------------------------------------------------------
def as_float32(v: float) -> float:
    """``v`` rounded to the nearest float32: a constant every exporter and backend holds exactly."""
    return float(torch.tensor(v, dtype=torch.float32))


def on_grid(t: Tensor, bits: int) -> Tensor:
    """``t`` rounded to the nearest multiple of ``2^-bits`` (half to even), float32."""
    return (torch.round(t.detach().double() * 2.0**bits) / 2.0**bits).float()


def sigmoid_table(bits: int, span: int) -> Tensor:
    """``sigmoid(j / 2^bits)`` for ``j = -span*2^bits .. span*2^bits``, float32, from 40-digit
    decimal arithmetic: the same table on every machine (a libm ``exp`` may differ in its last bit)."""
    ctx = decimal.Context(prec=40)
    n = span << bits
    step = decimal.Decimal(2) ** -bits
    vals = [float(ctx.divide(1, 1 + ctx.exp(-j * step))) for j in range(-n, n + 1)]
    return torch.tensor(vals, dtype=torch.float64).float()


def table_sigmoid(y: Tensor, scale: float, table: Tensor) -> Tensor:
    """``sigmoid(y)`` by linear interpolation in ``table`` (:func:`sigmoid_table` with ``2^bits =
    scale``). ``scale`` is a power of two, so ``y * scale`` is exact; clamping, floor, the gathers and
    the interpolation are elementwise operations every backend rounds alike."""
    half = (table.shape[0] - 1) // 2
    pos = (y * scale).clamp(-half, half)
    base = torch.floor(pos).clamp(max=half - 1)
    frac = pos - base
    idx = (base + half).long()
    lo, hi = table[idx], table[idx + 1]
    return lo + frac * (hi - lo)


def tap_copier(groups: int) -> Tensor:
    """One-hot 3x3 kernels ``[18 * groups, 2, 3, 3]``: with ``padding=1, groups=groups`` a convolution
    of ``[B, 2 * groups, H, W]`` returns each pixel's 18 neighbourhood values, ``[B, 18 * groups, H, W]``
    (tap ``c*9 + dy*3 + dx`` of group g at channel ``18g + tap``); each output is one input times 1
    plus zeros, an exact copy."""
    k = torch.zeros(18, 2, 3, 3)
    for c in range(2):
        for dy in range(3):
            for dx in range(3):
                k[c * 9 + dy * 3 + dx, c, dy, dx] = 1.0
    return k.repeat(groups, 1, 1, 1)


def fixed_order_matmul(x: Tensor, w: Tensor) -> Tensor:
    """``x @ w.T`` (``x [..., n]``, ``w [m, n]``) summed in index order, one elementwise add at a time."""
    acc = x[..., :1] * w[:, 0]
    for j in range(1, w.shape[1]):
        acc = acc + x[..., j : j + 1] * w[:, j]
    return acc


# ---- modules -------------------------------------------------------------------------------------
class SaturatedCounts(nn.Module):
    """Frames as the exact form takes them: event counts, rounded, in ``[0, max_count]``."""

    def __init__(self, max_count: int) -> None:
        super().__init__()
        self.max_count = int(max_count)

    def forward(self, x: Tensor) -> Tensor:
        return torch.round(x).clamp(0, self.max_count)


class SigmoidTable(nn.Module):
    """``sigmoid`` by :func:`table_sigmoid` from a table of step ``2^-bits`` over ``[-span, span]``."""

    def __init__(self, bits: int, span: int) -> None:
        super().__init__()
        self.register_buffer("values", sigmoid_table(bits, span))
        self.scale = 2.0**bits

    def forward(self, y: Tensor) -> Tensor:
        return table_sigmoid(y, self.scale, self.values)


class ExactChannelScore(nn.Module):
    """ASA's channel score ``(0.5 + alpha) * mean + (0.5 + gamma) * max`` over space, with the sum
    taken in float64 (exact for currents on a float32 grid), rounded once to float32 at the end.

    The coefficients are float32 values held as Python floats: a float64 buffer would be rounded to
    float32 by a module's ``.float()`` in one copy of the network and not in another, and the ONNX
    exporter may pass a Python float through float32 on its way into a float64 operation."""

    def __init__(self, score: _ChannelScore) -> None:
        super().__init__()
        self.a = as_float32(0.5 + float(score.alpha.detach()))
        self.g = as_float32(0.5 + float(score.gamma.detach()))

    def forward(self, x: Tensor) -> Tensor:
        per_sum = as_float32(self.a / (x.shape[-2] * x.shape[-1]))  # mean = sum / HW
        total = x.double().sum(dim=(-2, -1))
        peak = x.amax(dim=(-2, -1)).double()
        return (total * per_sum + peak * self.g).float()


class ExactSpatialMap(nn.Module):
    """``f_S`` of :class:`~models.attention.SpatialMap` in the exact form (rules 3-5 of the module
    docstring). :func:`exact_maps` is the arithmetic, shared with the fused causal ASA."""

    def __init__(self, sm: SpatialMap, spec: ExactArithmetic, weight_bits: int, sigmoid: SigmoidTable) -> None:
        super().__init__()
        # float32 buffers that hold their exact values (a float64 buffer would be rounded by .float())
        self.register_buffer("weight", on_grid(sm.conv.weight, weight_bits).reshape(1, 1, 18))
        self.register_buffer("taps", tap_copier(1))
        self.map_bits, self.map_clip = spec.map_bits, spec.map_clip
        self.sigmoid = sigmoid

    def forward(self, z: Tensor, mean_scale: float = 1.0) -> Tensor:
        total = z.double().sum(dim=1, keepdim=True)
        peak = z.amax(dim=1, keepdim=True)
        return exact_maps(self, self.taps, self.weight, total, peak, (z.shape[1] * mean_scale,))


def exact_maps(
    arith: ExactSpatialMap, taps: Tensor, weight: Tensor, totals: Tensor, peaks: Tensor, counts: Sequence[float]
) -> Tensor:
    """Spatial maps of ``G`` groups at once: ``totals`` (float64 channel sums, exact) and ``peaks``
    (channel maxima), both ``[B, G, H, W]``; ``counts[g]`` turns group g's sum into its mean;
    ``taps`` :func:`tap_copier` of G, ``weight [G, 1, 18]`` on the map's grid. Returns
    ``sigmoid(conv3x3([mean, max]))`` as ``[B, G, H, W]``."""
    scale = 2.0**arith.map_bits
    lim = float(arith.map_clip)
    inv = torch.tensor([as_float32(scale / c) for c in counts], dtype=torch.float64, device=totals.device)
    mean = (torch.round(totals * inv.view(1, -1, 1, 1)) / scale).clamp(-lim, lim).float()
    peak = (torch.round(peaks * scale) / scale).clamp(-lim, lim)
    pooled = torch.stack([mean, peak], dim=2).flatten(1, 2)  # [B, 2G, H, W]: (mean, max) of each group
    b, g = pooled.shape[0], len(counts)
    patches = F.conv2d(pooled, taps, padding=1, groups=g)  # [B, 18G, H, W], exact copies
    y = torch.matmul(weight.double(), patches.double().view(b, g, 18, -1))  # [B, G, 1, H*W], exact sums
    return arith.sigmoid(y.float().view(b, g, *pooled.shape[-2:]))


class FixedOrderMix(nn.Module):
    """ASA-1's temporal mixing (``Linear`` layers over T, ReLU between) summed in a fixed order."""

    def __init__(self, mix: nn.Module) -> None:
        super().__init__()
        linears = [m for m in mix.modules() if isinstance(m, nn.Linear)]
        self.weights = nn.ParameterList([nn.Parameter(m.weight.detach().clone(), requires_grad=False) for m in linears])

    def forward(self, x: Tensor) -> Tensor:
        for i, w in enumerate(self.weights):
            x = fixed_order_matmul(x, w)
            if i < len(self.weights) - 1:
                x = torch.relu(x)
        return x


# ---- the spec and the network --------------------------------------------------------------------
def _synapse_parts(syn: nn.Module) -> tuple[nn.Conv2d | nn.Linear, bool]:
    """The weighted module of a synapse and whether a 2x2 average pool follows it."""
    mods = list(syn.modules()) if isinstance(syn, nn.Sequential) else [syn]
    lin = next(m for m in mods if isinstance(m, (nn.Conv2d, nn.Linear)))
    return lin, any(isinstance(m, nn.AvgPool2d) for m in mods)


def _sum_bound(lin: nn.Conv2d | nn.Linear, in_max: float) -> float:
    """Largest ``|bias| + in_max * sum |w|`` over output channels: no partial sum exceeds it."""
    w = lin.weight.detach().double().abs().flatten(1).sum(1) * in_max
    if lin.bias is not None:
        w = w + lin.bias.detach().double().abs()
    return float(w.max())


def _fits(bound: float, bits: int) -> bool:
    return bound * 2.0**bits < 2.0**FLOAT32_BITS


def _finest_bits(start: float, fits: Callable[[int], bool]) -> int:
    """The largest ``k <= start`` (capped at ``MAX_WEIGHT_BITS``) with ``fits(k)``; -1 if none."""
    k = min(MAX_WEIGHT_BITS, math.floor(start))
    while k >= 0 and not fits(k):
        k -= 1
    return k


def _synapse_bits(lin: nn.Conv2d | nn.Linear, in_max: float, extra: int) -> int:
    """The finest weight grid of a synapse whose sums (``extra`` bits more for a following pool) stay exact."""
    bound = _sum_bound(lin, in_max)
    start = FLOAT32_BITS - math.log2(max(bound, 2.0**-30)) - extra
    return _finest_bits(start, lambda k: _fits(_sum_bound(_quantised_linear(lin, k), in_max), k + extra))


def _map_bound(weight: Tensor, clip: float, map_bits: int, bits: int) -> float:
    """Largest ``sum |tap products|`` of a spatial map in units of its product grid ``2^-(q+p)``."""
    return float(torch.round(weight.detach().double() * 2.0**bits).abs().sum()) * clip * 2.0**map_bits


def _map_weight_bits(maps: Sequence[SpatialMap], clip: float, map_bits: int) -> int:
    """The finest weight grid of a layer's spatial maps that keeps each weight exact in float32 and
    every map's 18-product sum exact in float64."""
    weights = [m.conv.weight for m in maps]
    biggest = max(float(w.detach().abs().max()) for w in weights)
    start = min(
        FLOAT32_BITS - math.ceil(math.log2(max(biggest, 2.0**-30)) + 1e-12),  # float32-representable
        FLOAT64_BITS - math.log2(max(_map_bound(w, clip, map_bits, 0) for w in weights) + 2.0**-30),
    )
    return _finest_bits(start, lambda p: all(_map_bound(w, clip, map_bits, p) < 2.0**FLOAT64_BITS for w in weights))


def _quantised_linear(lin: nn.Conv2d | nn.Linear, bits: int) -> nn.Module:
    q = copy.deepcopy(lin)
    with torch.no_grad():
        q.weight.copy_(on_grid(lin.weight, bits))
        if lin.bias is not None:
            q.bias.copy_(on_grid(lin.bias, bits))
    return q


def exact_spec(
    net: SpikingNet,
    max_count: int = 1023,
    map_bits: int = 16,
    map_clip: int = 64,
    sigmoid_bits: int = 6,
    sigmoid_range: int = 16,
) -> ExactArithmetic:
    """The exact form's constants for ``net``: the finest weight grid of each layer that keeps its
    sums exact (:class:`ExactRangeError` where none down to ``2^-MIN_WEIGHT_BITS`` does)."""
    from models.runtime.rewrite import fold_batchnorm

    folded = fold_batchnorm(net)
    weight_bits: list[int] = []
    map_weight_bits: list[int | None] = []
    decay: list[float | None] = []
    in_max = float(max_count)
    for name, layer in zip(folded.layer_names, folded.layers):
        lin, pooled = _synapse_parts(layer.synapse)
        extra = 2 if pooled else 0
        k = _synapse_bits(lin, in_max, extra)
        if k < MIN_WEIGHT_BITS:
            raise ExactRangeError(
                f"{name}: its sums reach {_sum_bound(lin, in_max):.4g}; exact float32 sums would need "
                f"weights on a grid coarser than 2^-{MIN_WEIGHT_BITS}"
            )
        weight_bits.append(k)
        in_max = 1.0  # every later layer's input is spikes
        maps = [m for m in layer.modules() if type(m) is SpatialMap]
        map_weight_bits.append(_map_weight_bits(maps, map_clip, map_bits) if maps else None)
        w = layer.lif.w
        decay.append(None if w is None else float(torch.sigmoid(w.detach().double()).float()))
    return ExactArithmetic(
        max_count=max_count,
        weight_bits=weight_bits,
        map_bits=map_bits,
        map_clip=map_clip,
        map_weight_bits=map_weight_bits,
        sigmoid_bits=sigmoid_bits,
        sigmoid_range=sigmoid_range,
        decay=decay,
    )


def exact_network(net: SpikingNet, spec: ExactArithmetic) -> SpikingNet:
    """A copy of ``net`` in the exact form of ``spec`` (eval mode, no gradients, float32 CPU).

    The same modules and the same :meth:`SpikingNet.step` / :meth:`SpikingNet.forward`; only the
    synapses (folded, on their grid), the attention's pooling, maps and sigmoid, the learnt decays
    and the input saturation differ. :class:`ExactRangeError` if ``spec`` does not fit ``net``.
    """
    from models.runtime.rewrite import fold_batchnorm

    n = len(net.layers)
    if not (len(spec.weight_bits) == len(spec.map_weight_bits) == len(spec.decay) == n):
        raise ExactRangeError(f"arithmetic describes {len(spec.weight_bits)} layers, the network has {n}")
    out = fold_batchnorm(net).cpu().float()
    sigmoid = SigmoidTable(spec.sigmoid_bits, spec.sigmoid_range)
    for layer, bits, map_bits, decay in zip(out.layers, spec.weight_bits, spec.map_weight_bits, spec.decay):
        syn = layer.synapse
        if isinstance(syn, nn.Sequential):
            for i, m in enumerate(syn):
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    syn[i] = _quantised_linear(m, bits)
        else:
            layer.synapse = _quantised_linear(syn, bits)
        att = layer.attention
        if isinstance(att, (CausalASA, ASA, SA)):
            if map_bits is None:
                raise ExactRangeError("arithmetic has no spatial-map grid for a layer with attention")
            for name in ("sa1", "sa2", "sa"):
                if isinstance(getattr(att, name, None), SpatialMap):
                    setattr(att, name, ExactSpatialMap(getattr(att, name), spec, map_bits, sigmoid))
            if isinstance(att, (CausalASA, ASA)):
                att.score = ExactChannelScore(att.score)
            if isinstance(att, ASA) and not isinstance(att.mix, nn.Identity):
                att.mix = FixedOrderMix(att.mix)
        if decay is not None:
            layer.lif = LIF(replace(layer.lif.p, beta=decay))
        elif layer.lif.w is not None:
            raise ExactRangeError("arithmetic has no decay constant for a parametric LIF layer")
    first = out.layers[0]
    first.synapse = nn.Sequential(SaturatedCounts(spec.max_count), *first.synapse)
    check_ranges(out, spec)
    return out.eval().requires_grad_(False)


def check_ranges(exact: SpikingNet, spec: ExactArithmetic) -> None:
    """Prove the bounds of an exact network: every synaptic sum inside the exact float32 range of its
    weight grid (two bits more where an average pool follows), every spatial map's sum inside the
    exact float64 range. :class:`ExactRangeError` otherwise."""
    in_max = float(spec.max_count)
    layers = zip(exact.layer_names, exact.layers, spec.weight_bits, spec.map_weight_bits)
    for name, layer, bits, map_bits in layers:
        lin, pooled = _synapse_parts(layer.synapse)
        if not (MIN_WEIGHT_BITS <= bits <= MAX_WEIGHT_BITS):
            raise ExactRangeError(f"{name}: weight grid 2^-{bits} outside 2^-{MIN_WEIGHT_BITS}..2^-{MAX_WEIGHT_BITS}")
        bound = _sum_bound(lin, in_max)
        if not _fits(bound, bits + (2 if pooled else 0)):
            raise ExactRangeError(f"{name}: sums up to {bound:.4g} are not exact on the grid 2^-{bits}")
        in_max = 1.0
        for m in layer.modules():
            if isinstance(m, ExactSpatialMap) and not (
                map_bits is not None
                and _map_bound(m.weight, spec.map_clip, spec.map_bits, map_bits) < 2.0**FLOAT64_BITS
                and float(m.weight.abs().max()) * 2.0**map_bits < 2.0**FLOAT32_BITS
            ):
                raise ExactRangeError(f"{name}: spatial-map sums are not exact with weights on 2^-{map_bits}")
