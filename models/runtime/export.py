"""Export a network to a verified bundle: its exact form, the ONNX step / window graph and the check.

* :func:`~models.runtime.exact.exact_spec` picks the exact form's constants for the trained network
  (weight grids per layer, ...) and :func:`~models.runtime.exact.exact_network` builds that form:
  what every runner computes, bit for bit (docs/exact.md).
* The graphs are traced from :func:`~models.runtime.rewrite.inference_graph` of the exact network:
  average pools folded into the convolutions and operator-level rewrites that ONNX Runtime runs
  faster, each computing the same values (see models/runtime/rewrite.py).
* :func:`export_onnx` writes one of two graphs (dynamo exporter, opset 18, dynamic batch ``batch``):

  - **step** (networks with attention ``none`` / ``causal-asa``): inputs ``frames [B, 2, H, W]`` and
    one input per state tensor named by ``SpikingNet.state_names()`` (``conv1.h``, ``conv1.asa_num``,
    ...); outputs ``out [B, K]``, ``counts [B, L]`` and ``<state name>.next`` for every state tensor.
  - **window** (the paper's ``asa`` and ``sa``, which need the whole window): input
    ``frames [T, B, 2, H, W]``; outputs ``out [B, K]`` and ``counts [B, L]``, both averaged over T
    (output-layer spike rate, spikes per layer and timestep).

  With ``with_spikes=True`` every layer's spikes are extra outputs ``<layer>.spikes``; verification
  runs that graph, and the bundle ships the same graph with those outputs removed.
* :func:`verify_onnx` runs the graph under ONNX Runtime against the exact network in PyTorch on
  random and real frames and compares every output of every step for equality
  (:class:`~models.runtime.bundle.Verification`).
* :func:`export_bundle` does all of it and writes the bundle only if nothing differs.
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
from torch import Tensor, nn

from models.network import SpikingNet
from models.runtime.bundle import (
    ExactArithmetic,
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
from models.runtime.exact import exact_network, exact_spec
from models.runtime.rewrite import ALL_REWRITES, Rewrites, inference_graph
from models.runtime.verify import (  # re-exported: the check is part of the export's interface
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
        from models.runtime.window import window_means

        probe = SpikeProbe() if self.with_spikes else None
        out, counts = window_means(self.net(frames, probe))
        extra = tuple(probe.spikes) if probe is not None else ()
        return (out, counts, *extra)


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


def export_onnx(
    net: SpikingNet, mode: Mode, with_spikes: bool = False, rewrites: Rewrites | None = ALL_REWRITES
) -> bytes:
    """Serialized ONNX graph of ``net`` (an exact network for a bundle; see the module docstring).
    ``net`` is not modified; ``rewrites=None`` traces it as it is (no folding, no rewrites)."""
    from torch.export import Dim

    model = (
        inference_graph(net, rewrites)
        if rewrites is not None
        else copy.deepcopy(net).cpu().float().eval().requires_grad_(False)
    )
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
    proto.doc_string = f"asasnn {mode} graph of {cfg.name} (attention {cfg.attention.kind})" + (
        f", BatchNorm folded, {rewrites}" if rewrites is not None else ""
    )
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
    trained_on: Sequence[str] = (),
    max_count: int = 1023,
) -> ModelCard:
    """A card for ``net``; ``mode`` follows from its attention (step when it can be stepped), the
    ``arithmetic`` section is :func:`exact_spec` of ``net`` with frames saturating at ``max_count``."""
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
        trained_on=list(trained_on),
        arithmetic=exact_spec(net, max_count=max_count),
        software=software_versions(),
    )


def export_bundle(
    net: SpikingNet,
    card: ModelCard,
    out_dir: Path | str,
    *,
    real_frames: np.ndarray | None = None,
    steps: int | None = None,
    arithmetic: ExactArithmetic | None = None,
    overwrite: bool = False,
) -> ModelCard:
    """Export, verify and write a bundle; raises :class:`VerificationError` (writing nothing) when the
    graph differs from the exact network in any value, :class:`~models.runtime.exact.ExactRangeError`
    when the network has no exact form. ``arithmetic`` defaults to :func:`exact_spec` of ``net``
    (frames saturating at the card's ``max_count``, else 1023).

    Returns the card as written (with the ``arithmetic``, ``onnx`` and ``verification`` sections).
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass overwrite=True / --force)")
    net = net.cpu().float().eval()
    spec = arithmetic or exact_spec(net, max_count=card.arithmetic.max_count if card.arithmetic else 1023)
    exact = exact_network(net, spec)
    mode = card.mode
    steps = (steps or card.timesteps) if mode == "step" else card.timesteps
    full = export_onnx(exact, mode, with_spikes=True)
    sets = default_frame_sets(card, steps, real_frames)
    report = verify_onnx(exact, full, mode, sets)
    if not report.passed:
        raise VerificationError(report)
    ins, outs = expected_io(net, mode)
    shipped = strip_outputs(full, outs)
    card = card.model_copy(
        update={"arithmetic": spec, "onnx": OnnxInfo(opset=OPSET, inputs=ins, outputs=outs), "verification": report}
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
    "random_frames",
    "strip_outputs",
    "synthetic_frames",
    "verify_bundle",
    "verify_onnx",
]
