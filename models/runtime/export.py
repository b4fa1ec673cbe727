"""Export a network to a verified bundle: BatchNorm folding, the ONNX step / window graph, the check.

* :func:`fold_batchnorm` folds each conv block's BatchNorm into its convolution (a copy; the
  original is untouched). ``W' = W * g / sqrt(v + eps)``, ``b' = beta - m * g / sqrt(v + eps)``,
  computed in float64. For the exported graphs a following 2x2 average pool is folded as well
  (a 4x4 stride-2 convolution: the same function with 2.25x fewer multiply-accumulates).
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
from torch import Tensor, nn

from models.network import SpikingNet
from models.runtime.bundle import (
    Metrics,
    Mode,
    ModelCard,
    OnnxInfo,
    Sensor,
    Verification,
    expected_io,
    load_bundle,
    save_bundle,
    software_versions,
)

OPSET = 18
MIN_AGREEMENT = 0.9999


class VerificationError(RuntimeError):
    """The ONNX graph disagrees with the PyTorch network; ``report`` holds the numbers."""

    def __init__(self, report: Verification) -> None:
        super().__init__(
            f"ONNX graph disagrees with the PyTorch network: spike agreement {report.spike_agreement:.6%} "
            f"(need >= {report.min_agreement:.4%}), output rate difference {report.max_rate_diff:.4g} "
            f"(tolerance {report.rate_tol:.4g}), max output difference {report.max_out_diff:.4g}"
        )
        self.report = report


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


# ---- graphs --------------------------------------------------------------------------------------
class _Spikes:
    """Probe that keeps each layer's spikes (time-major)."""

    wants_membrane = False

    def __init__(self) -> None:
        self.spikes: list[Tensor] = []

    def __call__(self, layer: int, spikes: Tensor, u: Tensor | None) -> None:
        self.spikes.append(spikes)


class StepGraph(nn.Module):
    """``(frames, state tuple) -> (out, counts, *next_state[, *spikes])``: the exported step."""

    def __init__(self, net: SpikingNet, with_spikes: bool = False) -> None:
        super().__init__()
        self.net, self.with_spikes = net, with_spikes

    def forward(self, frames: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        probe = _Spikes() if self.with_spikes else None
        o, new = self.net.step(frames, list(state), probe)
        extra = tuple(s[0] for s in probe.spikes) if probe is not None else ()
        return (o.out, o.counts, *new, *extra)


class WindowGraph(nn.Module):
    """``frames [T, B, C, H, W] -> (out [B, K], counts [B, L][, *spikes [T, B, ...]])``, means over T."""

    def __init__(self, net: SpikingNet, with_spikes: bool = False) -> None:
        super().__init__()
        self.net, self.with_spikes = net, with_spikes

    def forward(self, frames: Tensor) -> tuple[Tensor, ...]:
        probe = _Spikes() if self.with_spikes else None
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
    model = model.cpu().float()
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


# ---- frames for the check ------------------------------------------------------------------------
def random_frames(
    steps: int, batch: int, shape: Sequence[int], rate: float = 0.6, seed: int = 0
) -> np.ndarray:
    """Poisson event counts ``[steps, batch, *shape]`` float32 (mean ``rate`` events per pixel)."""
    rng = np.random.default_rng(seed)
    return rng.poisson(rate, size=(steps, batch, *shape)).astype(np.float32)


def synthetic_frames(
    sensor: Sensor, ds: int, dt_us: int, steps: int, clips: int = 2, seed: int = 0
) -> np.ndarray | None:
    """Frames ``[steps, clips, 2, H, W]`` of synthetic DVS gestures, binned with the shared binner.

    ``None`` when the synthetic source is not available in this installation.
    """
    try:
        from models.events import BinnerConfig, SensorSize, encode_events
        from models.synthetic import SyntheticConfig, generate, sample_list
    except ImportError:
        return None
    size = SensorSize(sensor.width, sensor.height)
    cfg = SyntheticConfig(
        sensor=size,
        duration_us=max(steps * dt_us, 100_000),
        num_subjects_train=0,
        num_subjects_test=1,
        clips_per_class_per_subject=1,
        seed=seed,
    )
    specs = sample_list(cfg, "test")
    specs = [specs[i * len(specs) // clips] for i in range(clips)]  # spread over the classes
    binner = BinnerConfig(size, dt_us, ds)
    frames = [
        encode_events(generate(s, cfg), binner, t_start=0, t_end=steps * dt_us, num_bins=steps) for s in specs
    ]
    return np.stack(frames, axis=1).astype(np.float32)


# ---- verification --------------------------------------------------------------------------------
def _ort_session(onnx_bytes: bytes):
    from models.runtime.runner import make_session

    return make_session(onnx_bytes, "cpu", threads=1)


@contextlib.contextmanager
def _torch_threads(n: int):
    """Small networks gain nothing from threads; a shared machine loses a lot to spinning ones."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class _Tally:
    def __init__(self, layers: int) -> None:
        self.equal = 0
        self.total = 0
        self.max_out = 0.0
        self.max_rate = 0.0
        self.max_state = 0.0
        self.spikes = np.zeros(layers)
        self.neuron_steps = np.zeros(layers)

    def spikes_(self, ref: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> bool:
        clean = True
        for i, (a, b) in enumerate(zip(ref, got)):
            eq = int(np.count_nonzero(a == b))
            clean &= eq == a.size
            self.equal += eq
            self.total += a.size
            self.spikes[i] += float(a.sum())
            self.neuron_steps[i] += a.size
        return clean


def verify_onnx(
    net: SpikingNet,
    onnx_bytes: bytes,
    mode: Mode,
    frame_sets: dict[str, np.ndarray],
    min_agreement: float = MIN_AGREEMENT,
    rate_tol: float | None = None,
) -> Verification:
    """Compare a ``with_spikes`` graph with ``net`` (PyTorch, CPU float32) on each ``[T, B, C, H, W]`` set.

    Passes when the spike agreement over every layer, timestep and stream is at least
    ``min_agreement`` and the output averaged over the sequence differs by at most ``rate_tol``
    (default ``max(0.1, 1.5 / T)``). One spike flipped by float32 rounding (a membrane within an
    ulp of the threshold, BatchNorm folding) can shift a neuron's later spikes and so a few output
    spikes; a graph that computes something else fails the agreement by orders of magnitude.
    """
    ref = copy.deepcopy(net).cpu().float().eval()
    sess = _ort_session(onnx_bytes)
    ins, outs = expected_io(ref, mode)
    n_layers = len(ref.layers)
    spike_names = [f"{n}.spikes" for n in ref.layer_names]
    tally = _Tally(n_layers)
    steps_max, streams = 0, 0
    for frames in frame_sets.values():
        frames = np.ascontiguousarray(frames, dtype=np.float32)
        steps, batch = frames.shape[:2]
        steps_max, streams = max(steps_max, steps), streams + batch
        with _torch_threads(1):
            if mode == "window":
                _verify_window(ref, sess, frames, outs, spike_names, tally)
            else:
                _verify_steps(ref, sess, frames, ins, outs, spike_names, tally)
    tol = max(0.1, 1.5 / max(steps_max, 1)) if rate_tol is None else rate_tol
    agreement = tally.equal / max(tally.total, 1)
    rates = (tally.spikes / np.maximum(tally.neuron_steps, 1)).tolist()
    return Verification(
        passed=bool(agreement >= min_agreement and tally.max_rate <= tol),
        spike_agreement=float(agreement),
        max_out_diff=tally.max_out,
        max_rate_diff=tally.max_rate,
        max_state_diff=tally.max_state,
        steps=steps_max,
        streams=streams,
        frames=list(frame_sets),
        layer_rates=[float(r) for r in rates],
        min_agreement=min_agreement,
        rate_tol=float(tol),
    )


def _verify_steps(ref, sess, frames, ins, outs, spike_names, tally: _Tally) -> None:
    steps, batch = frames.shape[:2]
    state_t = ref.init_state(batch)
    state_o = [s.numpy().copy() for s in state_t]
    out_t_sum = np.zeros((batch, ref.cfg.num_classes))
    out_o_sum = np.zeros_like(out_t_sum)
    clean = True
    for t in range(steps):
        probe = _Spikes()
        with torch.no_grad():
            o, state_t = ref.step(torch.from_numpy(frames[t]), state_t, probe)
        res = sess.run([*outs, *spike_names], {"frames": frames[t], **dict(zip(ins[1:], state_o))})
        n_state = len(ins) - 1
        out_o, state_o, spk_o = res[0], res[2 : 2 + n_state], res[2 + n_state :]
        clean &= tally.spikes_([s[0].numpy() for s in probe.spikes], spk_o)
        out_t = o.out.numpy()
        tally.max_out = max(tally.max_out, float(np.abs(out_t - out_o).max()))
        out_t_sum += out_t
        out_o_sum += out_o
        if clean:
            diff = max(float(np.abs(a.numpy() - b).max()) for a, b in zip(state_t, state_o))
            tally.max_state = max(tally.max_state, diff)
    tally.max_rate = max(tally.max_rate, float(np.abs(out_t_sum - out_o_sum).max()) / steps)


def _verify_window(ref, sess, frames, outs, spike_names, tally: _Tally) -> None:
    probe = _Spikes()
    with torch.no_grad():
        o = ref(torch.from_numpy(frames), probe)
    res = sess.run([*outs, *spike_names], {"frames": frames})
    tally.spikes_([s.numpy() for s in probe.spikes], res[2:])
    out_t = o.out.mean(0).numpy()
    tally.max_out = max(tally.max_out, float(np.abs(out_t - res[0]).max()))
    tally.max_rate = max(tally.max_rate, tally.max_out)


# ---- bundles -------------------------------------------------------------------------------------
def default_frame_sets(
    card: ModelCard, steps: int, real: np.ndarray | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """Random frames (3 streams) and real ones: ``real`` if given, else synthetic gestures (2 streams)."""
    shape = card.frame_shape
    sets = {"random": random_frames(steps, 3, shape, seed=seed)}
    if real is not None:
        if real.ndim == 4:
            real = real[:, None]
        if tuple(real.shape[2:]) != shape:
            raise ValueError(f"real frames have shape {tuple(real.shape[2:])}, the network takes {shape}")
        sets["real"] = real[:steps] if card.mode == "step" else _fit(real, steps)
    else:
        syn = synthetic_frames(card.sensor, card.ds, card.dt_us, steps, seed=seed)
        if syn is not None:
            sets[
                f"synthetic gestures ({card.sensor.width}x{card.sensor.height}, ds={card.ds}, dt={card.dt_us} us)"
            ] = syn
    return sets


def _fit(frames: np.ndarray, steps: int) -> np.ndarray:
    if frames.shape[0] >= steps:
        return frames[:steps]
    pad = np.zeros((steps - frames.shape[0], *frames.shape[1:]), dtype=frames.dtype)
    return np.concatenate([frames, pad])


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


def add_spike_outputs(onnx_bytes: bytes, layer_names: Sequence[str]) -> bytes:
    """Expose ``<layer>.spikes`` again as graph outputs of a shipped graph (they stay named inside)."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    produced = {o for node in model.graph.node for o in node.output}
    names = [f"{n}.spikes" for n in layer_names]
    missing = [n for n in names if n not in produced]
    if missing:
        raise ValueError(f"graph has no values named {missing}; it was not written by this exporter")
    model.graph.output.extend(
        onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names
    )
    return model.SerializeToString()


def verify_bundle(
    bundle_dir: Path | str,
    real_frames: np.ndarray | None = None,
    min_agreement: float = MIN_AGREEMENT,
    rate_tol: float | None = None,
) -> Verification:
    """Re-run the export check on a written bundle: its ONNX graph against its safetensors weights."""
    b = load_bundle(bundle_dir)
    sets = default_frame_sets(b.card, b.card.timesteps, real_frames)
    try:
        graph = add_spike_outputs(b.onnx_path.read_bytes(), b.net.layer_names)
    except ValueError as err:
        from models.runtime.bundle import BundleError

        raise BundleError(b.onnx_path, str(err)) from None
    return verify_onnx(b.net, graph, b.card.mode, sets, min_agreement, rate_tol)


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
