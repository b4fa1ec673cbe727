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
   ``2^-map_bits`` (clipped to ``+-map_clip``: at most 13-bit integers), the 3x3 weights on ``2^-p``
   (18 significant bits, ``p`` per layer) written as three signed 6-bit digits; one float32
   convolution per digit is an exact integer sum (below ``18 * 2^13 * 2^6 < 2^24``), and the three
   are joined by power-of-two scalings and two additions in a fixed order (:func:`exact_maps`).
   ASA-1's small mixing over T is summed in a fixed order (:func:`fixed_order_matmul`).
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
MIN_WEIGHT_BITS = 6  # a coarser weight grid than 2^-6 is refused: the network would not be itself
MAX_WEIGHT_BITS = 24


class ExactArithmetic(BaseModel):
    """The card's ``arithmetic`` section: every constant of the exact form (docs/exact.md)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["exact"] = "exact"
    max_count: int = Field(default=1023, ge=1, le=1 << 16)  # frame cells saturate at this many events
    weight_bits: list[int]  # per layer: synapse weights and bias are integers times 2^-k
    map_bits: int = Field(default=8, ge=0, le=13)  # spatial-map inputs on the grid 2^-map_bits ...
    map_clip: int = Field(default=32, ge=1, le=1 << 13)  # ... clipped to +-map_clip (clip * 2^bits <= 2^13)
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


def interpolation_table(values: Tensor) -> Tensor:
    """``[n - 1, 2]``: each entry's value and the step to the next (float32 constants), so that one
    gather fetches both."""
    return torch.stack([values[:-1], values[1:] - values[:-1]], dim=1)


def table_sigmoid(y: Tensor, scale: float, table: Tensor) -> Tensor:
    """``sigmoid(y)`` by linear interpolation in ``table`` (:func:`interpolation_table` of
    :func:`sigmoid_table` with ``2^bits = scale``). ``scale`` is a power of two, so ``y * scale`` is
    exact; clamping, floor, the gather and the interpolation are elementwise operations every
    backend rounds alike."""
    half = table.shape[0] // 2
    pos = (y * scale).clamp(-half, half)
    base = torch.floor(pos).clamp(max=half - 1)
    frac = pos - base
    idx = (base + half).long().flatten()
    rows = table.index_select(0, idx)  # one 1-D Gather (a tensor index would export as GatherND)
    return rows[:, 0].view_as(pos) + frac * rows[:, 1].view_as(pos)


MAP_DIGITS = 3  # spatial-map weights: three signed base-64 digits, 18 significant bits
MAP_DIGIT_BITS = 6
MAP_INPUT_BITS = 13  # map inputs are integers below 2^13: 18 taps * 2^13 * 2^6 < 2^24


def weight_digits(weight: Tensor, bits: int) -> Tensor:
    """``[G, 2, 3, 3]`` map weights on the grid ``2^-bits`` as digit kernels ``[3G, 2, 3, 3]``:
    ``round(w * 2^bits) = d0 * 2^12 + d1 * 2^6 + d2`` with ``|d| < 64`` (the three digits of group g
    at output channels ``3g .. 3g + 2``)."""
    n = torch.round(weight.detach().double() * 2.0**bits)
    digits = []
    for i in range(MAP_DIGITS):
        unit = 2.0 ** (MAP_DIGIT_BITS * (MAP_DIGITS - 1 - i))
        d = torch.trunc(n / unit)  # n and its digits share a sign, so every |d| < 64
        digits.append(d)
        n = n - d * unit
    return torch.stack(digits, dim=1).flatten(0, 1).float()


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
        self.register_buffer("table", interpolation_table(sigmoid_table(bits, span)))
        self.scale = 2.0**bits

    def forward(self, y: Tensor) -> Tensor:
        return table_sigmoid(y, self.scale, self.table)


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
        self.register_buffer("digits", weight_digits(sm.conv.weight, weight_bits))  # [3, 2, 3, 3]
        self.map_bits, self.map_clip, self.weight_bits = spec.map_bits, spec.map_clip, weight_bits
        self.sigmoid = sigmoid

    def forward(self, z: Tensor, mean_scale: float = 1.0) -> Tensor:
        total = z.double().sum(dim=1, keepdim=True)
        peak = z.amax(dim=1, keepdim=True)
        return exact_maps(self, self.digits, total, peak, (z.shape[1] * mean_scale,))


def map_constants(map_bits: int, weight_bits: int, counts: Sequence[float]) -> tuple[list[float], list[float]]:
    """The constants of :func:`exact_maps`: per group the factor (a float32 value) that turns a
    channel sum into a mean on the grid ``2^-map_bits``, and per digit the power of two that scales
    its integer sum back to the map's units."""
    scale = 2.0**map_bits
    factors = [as_float32(scale / c) for c in counts]
    units = [2.0 ** (MAP_DIGIT_BITS * (MAP_DIGITS - 1 - i) - weight_bits - map_bits) for i in range(MAP_DIGITS)]
    return factors, units


def exact_maps(
    arith: ExactSpatialMap, digits: Tensor, totals: Tensor, peaks: Tensor, counts: Sequence[float]
) -> Tensor:
    """Spatial maps of ``G`` groups at once: ``totals`` (float64 channel sums, exact) and ``peaks``
    (channel maxima), both ``[B, G, H, W]``; ``counts[g]`` turns group g's sum into its mean;
    ``digits`` the groups' :func:`weight_digits` ``[3G, 2, 3, 3]``. Returns
    ``sigmoid(conv3x3([mean, max]))`` as ``[B, G, H, W]``."""
    scale = 2.0**arith.map_bits
    lim = float(arith.map_clip) * scale
    mean_factors, units = map_constants(arith.map_bits, arith.weight_bits, counts)
    factors = torch.tensor(mean_factors, dtype=torch.float64, device=totals.device)
    mean = torch.round(totals * factors.view(1, -1, 1, 1)).clamp(-lim, lim).float()
    peak = torch.round(peaks * scale).clamp(-lim, lim)
    pooled = torch.stack([mean, peak], dim=2).flatten(1, 2)  # [B, 2G, H, W]: (mean, max) of each group
    b, g = pooled.shape[0], len(counts)
    parts = F.conv2d(pooled, digits, padding=1, groups=g).view(b, g, MAP_DIGITS, *pooled.shape[-2:])
    y = parts[:, :, 0] * units[0]  # exact integer sums, scaled by powers of two, added in one order
    for i in range(1, MAP_DIGITS):
        y = y + parts[:, :, i] * units[i]
    return arith.sigmoid(y)


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


def _map_weight_bits(maps: Sequence[SpatialMap]) -> int:
    """The grid of a layer's spatial-map weights: 18 significant bits below the largest weight."""
    biggest = max(float(m.conv.weight.detach().abs().max()) for m in maps)
    return MAP_DIGITS * MAP_DIGIT_BITS - math.floor(math.log2(max(biggest, 2.0**-30))) - 1


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
    map_bits: int = 8,
    map_clip: int = 32,
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
        map_weight_bits.append(_map_weight_bits(maps) if maps else None)
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
    weight grid (two bits more where an average pool follows), every spatial map's digit sums
    inside it too (6-bit digits, inputs below 2^13). :class:`ExactRangeError` otherwise."""
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
            if isinstance(m, ExactSpatialMap) and (
                float(m.digits.abs().max()) >= 2**MAP_DIGIT_BITS
                or spec.map_clip * 2.0**spec.map_bits > 2.0**MAP_INPUT_BITS
            ):
                raise ExactRangeError(f"{name}: spatial-map sums are not exact with weights on 2^-{map_bits}")
