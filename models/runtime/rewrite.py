"""Export-time rewrites: the same network in operators ONNX Runtime runs fast.

Each rewrite returns or builds modules that compute the function of the original in eval mode, to
float32 rounding; the export's verification (spike agreement against the unmodified network) is the
final check, and tests compare each piece with what it replaces. :func:`inference_graph` applies them
all; docs/performance.md measures what each one buys.

* :func:`fold_batchnorm`: BatchNorm into the convolution, and optionally a following 2x2 average
  pool (a 4x4 stride-2 convolution, 2.25x fewer multiply-accumulates). The PyTorch runners use the
  BatchNorm fold alone unless asked for the rewrites (``TorchStepRunner(rewrite=True)``).
* :class:`PooledSpatialMap`: an attention spatial map's channel mean and max without a reduction
  over the middle axis.
* :class:`StreamASA`: causal ASA with its two channel groups processed together and ONNX TopK for
  the channel ranking.
* :class:`SpikeDrivenLinear`: large fully connected layers read only the weights of inputs that
  spiked.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.attention import CausalASA, SpatialMap
from models.network import SpikingNet
from models.runtime.exact import ExactSpatialMap, exact_maps


# ---- folding -------------------------------------------------------------------------------------
def fold_batchnorm(net: SpikingNet, fold_pool: bool = False) -> SpikingNet:
    """A copy of ``net`` (eval mode, no gradients) with every Conv2d-BatchNorm2d pair folded.

    With ``fold_pool`` a following 2x2 average pool is folded too: ``Conv3x3(pad 1) -> AvgPool2``
    equals ``Conv4x4(stride 2, pad 1)`` with kernel ``K = (k * box2x2) / 4`` (BatchNorm, a per-channel
    affine map, commutes with the pooling). Same function, 2.25x fewer multiply-accumulates; for
    float weights only the rounding differs, for an exact network's (on the grid ``2^-k``) nothing:
    the 4x4 weights are on ``2^-(k+2)`` and the range check reserved those two bits.
    """
    out = copy.deepcopy(net).eval()
    for layer in out.layers:
        syn = layer.synapse
        if not isinstance(syn, nn.Sequential):
            continue
        for i in range(len(syn) - 1):
            conv, bn = syn[i], syn[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                syn[i] = _fold(conv, bn)
                syn[i + 1] = nn.Identity()
        if fold_pool:
            mods = [m for m in syn if not isinstance(m, nn.Identity)]
            for conv, pool in itertools.pairwise(mods):
                if _poolable(conv, pool):
                    for j, m in enumerate(syn):
                        if m is conv:
                            syn[j] = _fold_pool(conv)
                        elif m is pool:
                            syn[j] = nn.Identity()
    for p in out.parameters():
        p.requires_grad_(False)
    return out


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    assert bn.running_mean is not None and bn.running_var is not None
    w = conv.weight.detach().double()
    scale = (
        bn.weight.detach().double() if bn.affine else torch.ones_like(bn.running_var.double())
    ) / torch.sqrt(bn.running_var.double() + bn.eps)
    shift = bn.bias.detach().double() if bn.affine else torch.zeros_like(scale)
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(scale)
    new = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    ).to(device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(w * scale.view(-1, 1, 1, 1))
        new.bias.copy_((b - bn.running_mean.double()) * scale + shift)
    return new


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


def _poolable(conv: nn.Module, pool: nn.Module) -> bool:
    return (
        isinstance(conv, nn.Conv2d)
        and isinstance(pool, nn.AvgPool2d)
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and _pair(pool.kernel_size) == (2, 2)
        and _pair(pool.stride or pool.kernel_size) == (2, 2)
        and _pair(pool.padding) == (0, 0)
        and not pool.ceil_mode
        and pool.divisor_override is None
    )


def _fold_pool(conv: nn.Conv2d) -> nn.Conv2d:
    w = conv.weight.detach().double()
    k = torch.zeros(*w.shape[:2], 4, 4, dtype=torch.float64, device=w.device)
    for a in (0, 1):
        for b in (0, 1):
            k[:, :, a : a + 3, b : b + 3] += w / 4
    new = nn.Conv2d(conv.in_channels, conv.out_channels, 4, stride=2, padding=1, bias=conv.bias is not None)
    new = new.to(device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(k)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


# ---- channel pooling ----------------------------------------------------------------------------
def _channel_max(z: Tensor) -> Tensor:
    """``z.amax(dim=-3, keepdim=True)`` of ``[B, C, H, W]`` or ``[B, G, C, H, W]``: elementwise maxima
    of channel halves (twice), then a 3-D max pool over what is left. ONNX Runtime reduces a middle
    axis several times slower, and graph optimisers fold transpose-based rewrites back into it."""
    m = z
    for _ in range(2):
        c = m.shape[-3]
        if c % 2:
            break
        m = torch.maximum(m[..., : c // 2, :, :], m[..., c // 2 :, :, :])
    if z.dim() == 4:
        return F.max_pool3d(m.unsqueeze(1), (m.shape[-3], 1, 1)).squeeze(1)
    return F.max_pool3d(m, (m.shape[-3], 1, 1))


class PooledSpatialMap(nn.Module):
    """:class:`~models.attention.SpatialMap` with its channel pooling in operators that ONNX Runtime
    runs fast: the mean over channels as a 1x1 convolution (weights 1/C), the max as an elementwise
    maximum of channel halves (twice) followed by a 3-D max pool of kernel ``(C/4, 1, 1)``. Same
    function (the mean may round differently). A reduction over the middle (channel) axis is
    several times slower in ONNX Runtime and was most of causal ASA's cost in a step (graph
    optimisers fold a transpose-based rewrite back into that reduction)."""

    def __init__(self, sm: SpatialMap) -> None:
        super().__init__()
        self.conv = sm.conv

    def forward(self, z: Tensor, mean_scale: float = 1.0) -> Tensor:
        c = z.shape[1]
        mean = F.conv2d(z, z.new_full((1, c, 1, 1), 1.0 / (c * mean_scale)))
        peak = _channel_max(z)
        return torch.sigmoid(self.conv(torch.cat([mean, peak], dim=1)))


def pooled_maps(net: SpikingNet) -> SpikingNet:
    """Replace every attention spatial map of ``net`` (in place) by :class:`PooledSpatialMap`."""
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if type(child) is SpatialMap:
                setattr(module, name, PooledSpatialMap(child))
    return net


# ---- causal ASA in few, large operators ----------------------------------------------------------
def top_k_mask(m: Tensor, k: int, dim: int) -> Tensor:
    """:func:`~models.attention.rank_mask` through ``topk``: ONNX's TopK ranks equal values by the
    lower index, as ``rank_mask`` does, in one operator instead of a ``C x C`` comparison. (PyTorch's
    own ``topk`` does not promise that order; use this only in graphs ONNX Runtime runs.)"""
    idx = torch.topk(m, k, dim=dim, largest=True, sorted=False).indices
    return torch.zeros_like(m, dtype=torch.bool).scatter(dim, idx, True)


class StreamASA(CausalASA):
    """:class:`~models.attention.CausalASA` with the two groups processed together.

    The same masks, running statistics and modules; the step is rewritten with ``G = [M1; M2]``
    (``[B, 2, C]``) so that each stage is one operator over both groups instead of two:

    * ``z = X * G``: both masked inputs at once (``[B, 2, C, H, W]``), for the channel max;
    * the channel sums ``G @ X``: a batched matrix product, without the masked copies (in float64
      for an exact network, where that sum is exact);
    * both spatial maps: one grouped 3x3 convolution over ``[mean, max]`` per group, then the
      sigmoid (the table of :func:`~models.runtime.exact.exact_maps` for an exact network);
    * ``Xbar = a1 * z1 + a2 * z2 = X * (G^T @ [a1; a2])``: the same value, since each channel is in
      exactly one group (the other term is an exact zero).

    ``onnx_topk`` ranks the channels with :func:`top_k_mask` (for graphs ONNX Runtime runs); without
    it, with :func:`~models.attention.rank_mask` as the original does (for running in PyTorch).
    """

    def __init__(self, asa: CausalASA, onnx_topk: bool = True) -> None:
        super().__init__(asa.channels, asa.cfg)
        self.score, self.sa1, self.sa2 = asa.score, asa.sa1, asa.sa2
        if onnx_topk:
            self.top_channels = top_k_mask
        c, lam = asa.channels, asa.cfg.lam
        self.counts = (c * lam, c * (1 - lam))  # the channels each group's mean divides by
        self.exact = isinstance(asa.sa1, ExactSpatialMap)
        weights = [m.digits if self.exact else m.conv.weight for m in (asa.sa1, asa.sa2)]
        self.register_buffer("map_weight", torch.cat(weights).detach().clone())  # [2, 2, 3, 3]; exact: digits [6, ...]
        self.register_buffer("mean_weight", torch.tensor([1 / n for n in self.counts]).view(1, 2, 1))

    def step(self, x: Tensor, num: Tensor, den: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        wide = x.double() if self.exact else x  # one cast serves the scores' and the maps' exact sums
        m1, m2, num, den = self.masks_step(wide, num, den)
        g = torch.stack([m1, m2], dim=1)  # [B, 2, C]
        z = x.unsqueeze(1) * g[..., None, None]  # [B, 2, C, H, W]
        peak = _channel_max(z).flatten(1, 2)  # [B, 2, H, W]
        if self.exact:
            totals = torch.matmul(g.double(), wide.flatten(2)).view_as(peak)
            att = exact_maps(self.sa1, self.map_weight, totals, peak, self.counts)
        else:
            mean = torch.matmul(g * self.mean_weight, x.flatten(2)).view_as(peak)
            pooled = torch.stack([mean, peak], dim=2).flatten(1, 2)  # [B, 4, H, W]
            att = torch.sigmoid(F.conv2d(pooled, self.map_weight, padding=1, groups=2))  # [B, 2, H, W]
        gain = torch.matmul(g.transpose(1, 2), att.flatten(2))  # [B, C, H*W]
        return x * gain.view_as(x), num, den


def stream_asa(net: SpikingNet, onnx_topk: bool = True) -> SpikingNet:
    """Replace every :class:`~models.attention.CausalASA` of ``net`` (in place) by :class:`StreamASA`."""
    for layer in net.layers:
        if type(layer.attention) is CausalASA:
            layer.attention = StreamASA(layer.attention, onnx_topk)
    return net


# ---- spike-driven fully connected layers ---------------------------------------------------------
SPIKE_DRIVEN_MIN_WEIGHTS = 1 << 18  # 1 MiB of float32: below it the dense product is as cheap


class SpikeDrivenLinear(nn.Module):
    """``nn.Linear`` over spikes that reads only the weight columns of inputs that spiked.

    ``y = W[:, a] @ s[:, a]`` with ``a`` the inputs that spiked in any row of the batch: the same sums
    without the zero terms (their order may differ, within float32 rounding). At batch 1 a dense
    product reads the whole weight matrix for every step (gesture3's FC256: 8 MiB, memory bound);
    this reads the active columns only (a fifth or less at the firing rates measured here). Inputs must be
    non-negative, as spikes are; with many streams the union of active inputs approaches all of them.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.register_buffer("weight_t", linear.weight.detach().t().contiguous())  # [in, out]
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, s: Tensor) -> Tensor:
        flat = s.flatten(1)
        active = torch.nonzero((flat.new_ones(1, flat.shape[0]) @ flat).squeeze(0)).squeeze(1)
        y = flat.index_select(1, active) @ self.weight_t.index_select(0, active)
        return y if self.bias is None else y + self.bias


def spike_driven_linears(net: SpikingNet, min_weights: int = SPIKE_DRIVEN_MIN_WEIGHTS) -> SpikingNet:
    """Replace (in place) each fully connected synapse of ``net`` with at least ``min_weights``
    weights by :class:`SpikeDrivenLinear`. Every fully connected layer's input is a layer's spikes."""
    for layer in net.layers:
        mods = layer.synapse if isinstance(layer.synapse, nn.Sequential) else [layer.synapse]
        for i, m in enumerate(mods):
            if isinstance(m, nn.Linear) and m.weight.numel() >= min_weights:
                if isinstance(layer.synapse, nn.Sequential):
                    layer.synapse[i] = SpikeDrivenLinear(m)
                else:
                    layer.synapse = SpikeDrivenLinear(m)
    return net


# ---- all together --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rewrites:
    """Which rewrites :func:`inference_graph` applies (all by default; BatchNorm is always folded).
    Switching them off one by one is what ``benchmarks/bench_rewrites.py`` measures. ``onnx_topk``:
    causal ASA ranks channels with ONNX TopK semantics (for export); off for running in PyTorch,
    whose ``topk`` does not promise how ties are ranked."""

    fold_pool: bool = True
    pooled_maps: bool = True
    stream_asa: bool = True
    spike_driven: bool = True
    onnx_topk: bool = True


ALL_REWRITES = Rewrites()
TORCH_REWRITES = Rewrites(onnx_topk=False)  # what TorchStepRunner(rewrite=True) runs


def inference_graph(net: SpikingNet, rewrites: Rewrites = ALL_REWRITES) -> SpikingNet:
    """The network as the export writes it: a float32 CPU copy with BatchNorm and average pools folded,
    channel pooling in fast operators, causal ASA on both groups at once, spike-driven large FC
    layers. The same function as ``net`` in eval mode, to float32 rounding (the export verifies it)."""
    model = fold_batchnorm(net, fold_pool=rewrites.fold_pool).cpu().float()
    if rewrites.pooled_maps:
        pooled_maps(model)
    if rewrites.stream_asa:
        stream_asa(model, rewrites.onnx_topk)
    if rewrites.spike_driven:
        spike_driven_linears(model)
    return model
