"""Spiking networks built from a :class:`~models.config.NetworkConfig`.

One network object serves three callers:

* training and window inference: :meth:`SpikingNet.forward` over ``[T, B, 2, H, W]``;
* the stepwise runtime: :meth:`SpikingNet.step` over one frame ``[B, 2, H, W]`` with explicit state
  (a flat list of tensors, so the same signature exports to ONNX);
* instrumentation: both return per-layer spike counts, and an optional :class:`Probe` sees every
  layer's spikes (and membrane potentials when it asks) without a second forward pass.

Each layer is ``synapse (conv-BN[-pool] or linear) -> [attention] -> LIF``; attention only in conv
blocks, as in the paper.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Protocol

import torch
from torch import Tensor, nn

from models.attention import ASA, SA, CausalASA
from models.config import ConvSpec, NetworkConfig
from models.neuron import LIF


class Probe(Protocol):
    """Receives each layer's output as it is computed. Tensors are time-major ``[T, B, ...]``
    (``T = 1`` in step mode); ``u`` is the membrane potential when ``wants_membrane`` is true."""

    wants_membrane: bool

    def __call__(self, layer: int, spikes: Tensor, u: Tensor | None) -> None: ...


class NetOutput(NamedTuple):
    out: Tensor  # output-layer spikes per class (after voting) [T, B, K] or [B, K]
    counts: Tensor  # spikes per layer and sample [T, B, L] or [B, L]


class Layer(nn.Module):
    """Synapse, optional attention, LIF neurons and a time-shared dropout on the output spikes."""

    def __init__(self, synapse: nn.Module, attention: nn.Module | None, lif: LIF, dropout: float) -> None:
        super().__init__()
        self.synapse, self.attention, self.lif, self.dropout = synapse, attention, lif, dropout

    @property
    def num_state(self) -> int:
        return 3 if isinstance(self.attention, CausalASA) else 1

    def _drop(self, s: Tensor, time_major: bool) -> Tensor:
        if not self.training or self.dropout == 0:
            return s
        shape = (1, *s.shape[1:]) if time_major else s.shape
        keep = torch.bernoulli(torch.full(shape, 1 - self.dropout, device=s.device, dtype=s.dtype))
        return s * keep / (1 - self.dropout)

    def forward(self, x: Tensor, keep_u: bool) -> tuple[Tensor, Tensor | None]:
        t, b = x.shape[:2]
        # at least float32 from here on under autocast too: bfloat16 / float16 keep the synapse's
        # products, the membrane potentials and attention statistics would lose spikes to rounding
        cur = self.synapse(x.flatten(0, 1))
        cur = cur.to(torch.promote_types(cur.dtype, torch.float32))
        cur = cur.unflatten(0, (t, b))
        if isinstance(self.attention, CausalASA):
            cur, _ = self.attention(cur)
        elif self.attention is not None:
            cur = self.attention(cur)
        s, _, u = self.lif(cur, keep_u=keep_u)
        return self._drop(s, True), u

    def step(self, x: Tensor, state: list[Tensor]) -> tuple[Tensor, Tensor, list[Tensor]]:
        cur = self.synapse(x)
        if isinstance(self.attention, CausalASA):
            cur, num, den = self.attention.step(cur, state[1], state[2])
            extra = [num, den]
        elif self.attention is None:
            extra = []
        else:
            raise RuntimeError("window attention (sa/asa) cannot run one timestep at a time")
        s, h, u = self.lif.step(cur, state[0])
        return self._drop(s, False), u, [h, *extra]


def _conv_synapse(cin: int, spec: ConvSpec) -> nn.Sequential:
    mods: list[nn.Module] = [nn.Conv2d(cin, spec.channels, 3, padding=1, bias=False), nn.BatchNorm2d(spec.channels)]
    if spec.pool == "avg":
        mods.append(nn.AvgPool2d(2))
    elif spec.pool == "max":
        mods.append(nn.MaxPool2d(2))
    return nn.Sequential(*mods)


def _attention(cfg: NetworkConfig, channels: int) -> nn.Module | None:
    a = cfg.attention
    if a.kind == "none":
        return None
    if a.kind == "sa":
        return SA()
    if a.kind == "asa":
        return ASA(channels, cfg.timesteps, a)
    return CausalASA(channels, a)


class SpikingNet(nn.Module):
    def __init__(self, cfg: NetworkConfig) -> None:
        super().__init__()
        self.cfg = cfg
        layers: list[Layer] = []
        shapes: list[tuple[int, ...]] = []  # each layer's spike shape without batch
        c, (h, w) = cfg.in_channels, cfg.input_size
        for spec in cfg.convs:
            syn = _conv_synapse(c, spec)
            c = spec.channels
            if spec.pool:
                h, w = h // 2, w // 2
            layers.append(Layer(syn, _attention(cfg, c), LIF(cfg.neuron, cfg.parametric), spec.dropout))
            shapes.append((c, h, w))
        width = c * h * w
        for i, n in enumerate((*cfg.fc, cfg.num_classes * cfg.vote)):
            syn = nn.Sequential(nn.Flatten(), nn.Linear(width, n, bias=False)) if i == 0 else nn.Linear(width, n, bias=False)
            last = i == len(cfg.fc)
            layers.append(Layer(syn, None, LIF(cfg.neuron, cfg.parametric), 0.0 if last else cfg.fc_dropout))
            shapes.append((n,))
            width = n
        self.layers = nn.ModuleList(layers)
        self.spike_shapes: tuple[tuple[int, ...], ...] = tuple(shapes)

    @property
    def layer_names(self) -> tuple[str, ...]:
        n_conv = len(self.cfg.convs)
        return tuple(f"conv{i + 1}" if i < n_conv else f"fc{i - n_conv + 1}" for i in range(len(self.layers)))

    @property
    def neurons(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.spike_shapes)

    def _vote(self, s: Tensor) -> Tensor:
        """Output spikes per class: the mean over each class's ``vote`` neurons, as an exact sum
        and one division (which every backend rounds alike)."""
        if self.cfg.vote == 1:
            return s
        return s.unflatten(-1, (self.cfg.num_classes, self.cfg.vote)).sum(-1) / self.cfg.vote

    def forward(self, x: Tensor, probe: Probe | None = None) -> NetOutput:
        """Multi-step forward over ``x`` of shape ``[T, B, C, H, W]``."""
        keep_u = probe is not None and probe.wants_membrane
        counts = []
        for i, layer in enumerate(self.layers):
            x, u = layer(x, keep_u)
            counts.append(x.flatten(2).sum(-1))
            if probe is not None:
                probe(i, x, u)
        return NetOutput(self._vote(x), torch.stack(counts, dim=-1))

    # ---- stepwise form -------------------------------------------------------------------------
    def state_shapes(self) -> list[tuple[int, ...]]:
        """Shapes (without batch) of the flat state list used by :meth:`step`."""
        out: list[tuple[int, ...]] = []
        for layer, shape in zip(self.layers, self.spike_shapes):
            out.append(shape)
            if layer.num_state == 3:
                out += [(shape[0],), (1,)]
        return out

    def state_names(self) -> list[str]:
        names: list[str] = []
        for layer, name in zip(self.layers, self.layer_names):
            names.append(f"{name}.h")
            if layer.num_state == 3:
                names += [f"{name}.asa_num", f"{name}.asa_den"]
        return names

    def init_state(self, batch: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> list[Tensor]:
        """The state of ``batch`` streams at rest (all zeros)."""
        p = next(self.parameters())
        kw = {"device": device or p.device, "dtype": dtype or p.dtype}
        return [torch.zeros(batch, *s, **kw) for s in self.state_shapes()]

    def step(self, frame: Tensor, state: list[Tensor], probe: Probe | None = None) -> tuple[NetOutput, list[Tensor]]:
        """Advance every stream in the batch by one timestep: ``frame [B, C, H, W]``."""
        if not self.cfg.stepwise:
            raise RuntimeError(f"attention {self.cfg.attention.kind!r} needs the whole window; use forward()")
        x, new_state, counts, k = frame, [], [], 0
        for i, layer in enumerate(self.layers):
            x, u, st = layer.step(x, state[k : k + layer.num_state])
            k += layer.num_state
            new_state += st
            counts.append(x.flatten(1).sum(-1))
            if probe is not None:
                probe(i, x.unsqueeze(0), u.unsqueeze(0) if probe.wants_membrane else None)
        return NetOutput(self._vote(x), torch.stack(counts, dim=-1)), new_state


def build_network(cfg: NetworkConfig) -> SpikingNet:
    return SpikingNet(cfg)
