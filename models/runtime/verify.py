"""The export check: an ONNX graph against the PyTorch network it came from.

:func:`verify_onnx` runs a graph that exposes every layer's spikes (``<layer>.spikes`` outputs)
under ONNX Runtime (CPU, float32, one thread) against the unfolded PyTorch network, each stepping
with its own state over whole sequences of frames, and counts:

* the **spike agreement**: equal spikes over every layer, neuron, timestep and stream;
* the largest output difference per step, and of the output averaged over the sequence;
* the largest membrane difference while every spike still agreed;
* each layer's firing rate (a silent layer would make the agreement vacuous).

The frames (:func:`default_frame_sets`) are random Poisson event counts and real ones: given frames,
or synthetic gestures of the card's sensor binned with the shared binner. :func:`verify_bundle`
re-runs the check on a written bundle (the shipped graph keeps the spike values named inside, and
:func:`add_spike_outputs` exposes them again).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from models.network import SpikingNet
from models.runtime.bundle import BundleError, Mode, ModelCard, Sensor, Verification, expected_io, load_bundle

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


class SpikeProbe:
    """Probe that keeps each layer's spikes (time-major)."""

    wants_membrane = False

    def __init__(self) -> None:
        self.spikes: list[Tensor] = []

    def __call__(self, layer: int, spikes: Tensor, u: Tensor | None) -> None:
        self.spikes.append(spikes)


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
        probe = SpikeProbe()
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
    probe = SpikeProbe()
    with torch.no_grad():
        o = ref(torch.from_numpy(frames), probe)
    res = sess.run([*outs, *spike_names], {"frames": frames})
    tally.spikes_([s.numpy() for s in probe.spikes], res[2:])
    out_t = o.out.mean(0).numpy()
    tally.max_out = max(tally.max_out, float(np.abs(out_t - res[0]).max()))
    tally.max_rate = max(tally.max_rate, tally.max_out)


# ---- frame sets and bundles --------------------------------------------------------------------
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
        raise BundleError(b.onnx_path, str(err)) from None
    return verify_onnx(b.net, graph, b.card.mode, sets, min_agreement, rate_tol)


__all__ = [
    "MIN_AGREEMENT",
    "SpikeProbe",
    "VerificationError",
    "add_spike_outputs",
    "default_frame_sets",
    "random_frames",
    "synthetic_frames",
    "verify_bundle",
    "verify_onnx",
]
