"""Export a network to a verified bundle: BatchNorm folding, the ONNX step / window graph, the check.

* :func:`fold_batchnorm` folds each conv block's BatchNorm into its convolution (a copy; the
  original is untouched). ``W' = W * g / sqrt(v + eps)``, ``b' = beta - m * g / sqrt(v + eps)``,
  computed in float64. For the exported graphs a following 2x2 average pool is folded as well
  (a 4x4 stride-2 convolution: the same function with 2.25x fewer multiply-accumulates), and the
  attention's pooling over channels uses operators ONNX Runtime runs fast (:class:`PooledSpatialMap`).
* :func:`export_onnx` writes one of two graphs (dynamo exporter, opset 18, dynamic batch ``batch``):

  - **step** (networks with attention ``none`` / ``causal-asa``): inputs ``frames [B, 2, H, W]`` and
    one input per state tensor named by ``SpikingNet.state_names()`` (``conv1.h``, ``conv1.asa_num``,
    ...); outputs ``out [B, K]``, ``counts [B, L]`` and ``<state name>.next`` for every state tensor.
  - **window** (the paper's ``asa`` and ``sa``, which need the whole window): input
    ``frames [T, B, 2, H, W]``; outputs ``out [B, K]`` and ``counts [B, L]``, both averaged over T
    (output-layer spike rate, spikes per layer and timestep).

  With ``with_spikes=True`` every layer's spikes are extra outputs ``<layer>.spikes``; verification
  runs that graph, and the bundle ships the same graph with those outputs removed.
* :func:`verify_onnx` runs the graph under ONNX Runtime (CPU, float32) against the PyTorch network
  (unfolded) on random and real frames, stepping both for the whole sequence with their own state,
  and reports the spike agreement, output and membrane differences (:class:`Verification`).
* :func:`export_bundle` does all of it and writes the bundle only if the check passes.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.attention import SpatialMap
from models.network import SpikingNet
from models.runtime.bundle import (
    Metrics,
    Mode,
    ModelCard,
    OnnxInfo,
    Sensor,
    expected_io,
    load_bundle,
    save_bundle,
    software_versions,
)
from models.runtime.verify import (  # re-exported: the check is part of the export's interface
    MIN_AGREEMENT,
    SpikeProbe,
    VerificationError,
    add_spike_outputs,
    default_frame_sets,
    random_frames,
    synthetic_frames,
    verify_bundle,
    verify_onnx,
)

OPSET = 18


# ---- folding -------------------------------------------------------------------------------------
def fold_batchnorm(net: SpikingNet, fold_pool: bool = False) -> SpikingNet:
    """A copy of ``net`` (eval mode, no gradients) with every Conv2d-BatchNorm2d pair folded.

    With ``fold_pool`` a following 2x2 average pool is folded too: ``Conv3x3(pad 1) -> AvgPool2``
    equals ``Conv4x4(stride 2, pad 1)`` with kernel ``K = (k * box2x2) / 4`` (BatchNorm, a per-channel
    affine map, commutes with the pooling). Same function, 2.25x fewer multiply-accumulates; only
    the float32 rounding differs (the export's verification covers it).
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
            if len(mods) == 2 and _poolable(mods[0], mods[1]):
                folded = _fold_pool(mods[0])
                for j, m in enumerate(syn):
                    syn[j] = folded if m is mods[0] else nn.Identity()
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
        m = z
        for _ in range(2):
            if m.shape[1] % 2:
                break
            half = m.shape[1] // 2
            m = torch.maximum(m[:, :half], m[:, half:])
        peak = F.max_pool3d(m.unsqueeze(1), (m.shape[1], 1, 1)).squeeze(1)
        return torch.sigmoid(self.conv(torch.cat([mean, peak], dim=1)))


def pooled_maps(net: SpikingNet) -> SpikingNet:
    """Replace every attention spatial map of ``net`` (in place) by :class:`PooledSpatialMap`."""
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if type(child) is SpatialMap:
                setattr(module, name, PooledSpatialMap(child))
    return net


# ---- graphs --------------------------------------------------------------------------------------
class StepGraph(nn.Module):
    """``(frames, state tuple) -> (out, counts, *next_state[, *spikes])``: the exported step."""

    def __init__(self, net: SpikingNet, with_spikes: bool = False) -> None:
        super().__init__()
        self.net, self.with_spikes = net, with_spikes

    def forward(self, frames: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        probe = SpikeProbe() if self.with_spikes else None
        o, new = self.net.step(frames, list(state), probe)
        extra = tuple(s[0] for s in probe.spikes) if probe is not None else ()
        return (o.out, o.counts, *new, *extra)


class WindowGraph(nn.Module):
    """``frames [T, B, C, H, W] -> (out [B, K], counts [B, L][, *spikes [T, B, ...]])``, means over T."""

    def __init__(self, net: SpikingNet, with_spikes: bool = False) -> None:
        super().__init__()
        self.net, self.with_spikes = net, with_spikes

    def forward(self, frames: Tensor) -> tuple[Tensor, ...]:
        probe = SpikeProbe() if self.with_spikes else None
        o = self.net(frames, probe)
        extra = tuple(probe.spikes) if probe is not None else ()
        return (o.out.mean(0), o.counts.mean(0), *extra)


@contextlib.contextmanager
def _quiet():
    """The dynamo exporter talks a lot (progress lines, torchvision notices); keep it for errors."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def export_onnx(net: SpikingNet, mode: Mode, with_spikes: bool = False, fold: bool = True) -> bytes:
    """Serialized ONNX graph of ``net`` (see the module docstring). ``net`` is not modified."""
    from torch.export import Dim

    model = fold_batchnorm(net, fold_pool=True) if fold else copy.deepcopy(net).eval().requires_grad_(False)
    model = pooled_maps(model.cpu().float())
    cfg = model.cfg
    inputs, outputs = expected_io(model, mode)
    spike_names = [f"{n}.spikes" for n in model.layer_names] if with_spikes else []
    batch = Dim("batch", min=1)
    if mode == "step":
        graph: nn.Module = StepGraph(model, with_spikes).eval()
        state = tuple(model.init_state(2))
        args: tuple[Any, ...] = (torch.rand(2, cfg.in_channels, *cfg.input_size), state)
        dyn: tuple[Any, ...] = ({0: batch}, tuple({0: batch} for _ in state))
    else:
        graph = WindowGraph(model, with_spikes).eval()
        args = (torch.rand(cfg.timesteps, 2, cfg.in_channels, *cfg.input_size),)
        dyn = ({1: batch},)
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(
            graph,
            args,
            None,
            dynamo=True,
            input_names=inputs,
            output_names=[*outputs, *spike_names],
            dynamic_shapes=dyn,
            opset_version=OPSET,
            optimize=True,
            verbose=False,
            external_data=False,
        )
    proto = program.model_proto
    proto.doc_string = f"asasnn {mode} graph of {cfg.name} (attention {cfg.attention.kind}), BatchNorm folded"
    return proto.SerializeToString()


def strip_outputs(onnx_bytes: bytes, keep: Sequence[str]) -> bytes:
    """The same graph with only the outputs named in ``keep`` (in that order)."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    by_name = {o.name: o for o in model.graph.output}
    kept = [copy.deepcopy(by_name[n]) for n in keep]
    del model.graph.output[:]
    model.graph.output.extend(kept)
    return model.SerializeToString()


# ---- bundles -------------------------------------------------------------------------------------
def build_card(
    net: SpikingNet,
    *,
    classes: Sequence[str],
    sensor: Sensor | dict[str, int] | Sequence[int],
    ds: int,
    dt_us: int,
    name: str | None = None,
    version: str = "0.1.0",
    hop: int | None = None,
    metrics: dict[str, Any] | None = None,
    dataset: str | None = None,
    command: str | None = None,
    train_config: dict[str, Any] | None = None,
) -> ModelCard:
    """A card for ``net``; ``mode`` follows from its attention (step when it can be stepped)."""
    cfg = net.cfg
    if isinstance(sensor, Sensor):
        s = sensor
    elif isinstance(sensor, dict):
        s = Sensor(**sensor)
    else:
        s = Sensor(width=int(sensor[0]), height=int(sensor[1]))
    mode: Mode = "step" if cfg.stepwise else "window"
    return ModelCard(
        name=name or cfg.name,
        version=version,
        mode=mode,
        timesteps=cfg.timesteps,
        hop=hop if hop is not None else (1 if mode == "step" else max(1, cfg.timesteps // 4)),
        config=cfg.to_dict(),
        classes=[str(c) for c in classes],
        sensor=s,
        ds=ds,
        dt_us=dt_us,
        dataset=dataset,
        metrics=Metrics(**(metrics or {})),
        command=command,
        train_config=train_config,
        software=software_versions(),
    )


def export_bundle(
    net: SpikingNet,
    card: ModelCard,
    out_dir: Path | str,
    *,
    real_frames: np.ndarray | None = None,
    steps: int | None = None,
    min_agreement: float = MIN_AGREEMENT,
    rate_tol: float | None = None,
    overwrite: bool = False,
) -> ModelCard:
    """Export, verify and write a bundle; raises :class:`VerificationError` (writing nothing) on a mismatch.

    Returns the card as written (with the ``onnx`` and ``verification`` sections filled in).
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass overwrite=True / --force)")
    net = net.cpu().float().eval()
    mode = card.mode
    steps = (steps or card.timesteps) if mode == "step" else card.timesteps
    full = export_onnx(net, mode, with_spikes=True)
    sets = default_frame_sets(card, steps, real_frames)
    report = verify_onnx(net, full, mode, sets, min_agreement, rate_tol)
    if not report.passed:
        raise VerificationError(report)
    ins, outs = expected_io(net, mode)
    shipped = strip_outputs(full, outs)
    card = card.model_copy(
        update={"onnx": OnnxInfo(opset=OPSET, inputs=ins, outputs=outs), "verification": report}
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_bundle(tmp, card, net, shipped)
        load_bundle(tmp)  # what we wrote reads back
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return card


__all__ = [
    "OPSET",
    "StepGraph",
    "VerificationError",
    "WindowGraph",
    "add_spike_outputs",
    "build_card",
    "default_frame_sets",
    "export_bundle",
    "export_onnx",
    "fold_batchnorm",
    "random_frames",
    "strip_outputs",
    "synthetic_frames",
    "verify_bundle",
    "verify_onnx",
]
