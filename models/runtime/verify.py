"""The export check: an ONNX graph against the exact PyTorch network it came from, value for value.

With exact arithmetic (models/runtime/exact.py, docs/exact.md) the graph and the network compute the
same numbers, so :func:`verify_onnx` compares for **equality**: under ONNX Runtime (CPU, one thread)
and in PyTorch, each stepping with its own state over whole sequences of frames, every output of
every step (``out``, ``counts``, each layer's spikes, each piece of next state) must be equal value
for value. It counts the values compared and those that differ per output, names the first
mismatch, and reports each layer's firing rate (a silent layer would make the check vacuous).
A changed weight, threshold or output row shows up as a differing membrane within a few steps.

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


class VerificationError(RuntimeError):
    """The ONNX graph disagrees with the PyTorch network; ``report`` holds the numbers."""

    def __init__(self, report: Verification) -> None:
        bad = {k: v for k, v in report.mismatches.items() if v}
        super().__init__(
            f"ONNX graph disagrees with the exact PyTorch network: {sum(bad.values())} differing values "
            f"({', '.join(f'{k}: {v}' for k, v in bad.items())}); first: {report.first_mismatch}"
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
    from models.runtime.ort_runner import make_session

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
    """Values compared and values that differ, per output name; each layer's spikes."""

    def __init__(self, layers: int) -> None:
        self.compared: dict[str, int] = {}
        self.mismatches: dict[str, int] = {}
        self.first: str | None = None
        self.spikes = np.zeros(layers)
        self.neuron_steps = np.zeros(layers)

    def compare(self, name: str, ref: np.ndarray, got: np.ndarray, where: str) -> None:
        if ref.shape != got.shape:
            raise ValueError(f"{name}: the graph gives shape {got.shape}, the network {ref.shape}")
        bad = int(np.count_nonzero(ref != got))  # values: -0.0 equals 0.0
        self.compared[name] = self.compared.get(name, 0) + ref.size
        self.mismatches[name] = self.mismatches.get(name, 0) + bad
        if bad and self.first is None:
            self.first = f"{name} {where}"

    def layer_spikes(self, spikes: Sequence[np.ndarray]) -> None:
        for i, s in enumerate(spikes):
            self.spikes[i] += float(s.sum())
            self.neuron_steps[i] += s.size


def verify_onnx(exact: SpikingNet, onnx_bytes: bytes, mode: Mode, frame_sets: dict[str, np.ndarray]) -> Verification:
    """Compare a ``with_spikes`` graph with ``exact`` (the exact network, PyTorch CPU) on each
    ``[T, B, C, H, W]`` frame set; passes when no value of any output differs."""
    ref = copy.deepcopy(exact).cpu().eval()
    sess = _ort_session(onnx_bytes)
    ins, outs = expected_io(ref, mode)
    spike_names = [f"{n}.spikes" for n in ref.layer_names]
    tally = _Tally(len(ref.layers))
    steps_max, streams = 0, 0
    for label, frames in frame_sets.items():
        frames = np.ascontiguousarray(frames, dtype=np.float32)
        steps, batch = frames.shape[:2]
        steps_max, streams = max(steps_max, steps), streams + batch
        with _torch_threads(1):
            if mode == "window":
                _verify_window(ref, sess, frames, outs, spike_names, tally, label)
            else:
                _verify_steps(ref, sess, frames, ins, outs, spike_names, tally, label)
    rates = (tally.spikes / np.maximum(tally.neuron_steps, 1)).tolist()
    return Verification(
        passed=not any(tally.mismatches.values()),
        compared=tally.compared,
        mismatches=tally.mismatches,
        first_mismatch=tally.first,
        steps=steps_max,
        streams=streams,
        frames=list(frame_sets),
        layer_rates=[float(r) for r in rates],
    )


def _verify_steps(ref, sess, frames, ins, outs, spike_names, tally: _Tally, label: str) -> None:
    steps, batch = frames.shape[:2]
    state_t = ref.init_state(batch)
    state_o = [s.numpy().copy() for s in state_t]
    n_state = len(ins) - 1
    for t in range(steps):
        probe = SpikeProbe()
        with torch.no_grad():
            o, state_t = ref.step(torch.from_numpy(frames[t]), state_t, probe)
        res = sess.run([*outs, *spike_names], {"frames": frames[t], **dict(zip(ins[1:], state_o))})
        state_o = res[2 : 2 + n_state]
        where = f"at step {t} of {label}"
        mine = [o.out, o.counts, *state_t, *(s[0] for s in probe.spikes)]
        for name, a, b in zip([*outs, *spike_names], mine, res):
            tally.compare(name, a.numpy(), b, where)
        tally.layer_spikes([s[0].numpy() for s in probe.spikes])


def _verify_window(ref, sess, frames, outs, spike_names, tally: _Tally, label: str) -> None:
    from models.runtime.window import window_means

    probe = SpikeProbe()
    with torch.no_grad():
        out, counts = window_means(ref(torch.from_numpy(frames), probe))
    res = sess.run([*outs, *spike_names], {"frames": frames})
    for name, a, b in zip([*outs, *spike_names], [out, counts, *probe.spikes], res):
        tally.compare(name, a.numpy(), b, f"in the window of {label}")
    tally.layer_spikes([s.numpy() for s in probe.spikes])


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


def verify_bundle(bundle_dir: Path | str, real_frames: np.ndarray | None = None) -> Verification:
    """Re-run the export check on a written bundle: its ONNX graph against the exact form of its
    safetensors weights under its card's arithmetic."""
    b = load_bundle(bundle_dir)
    sets = default_frame_sets(b.card, b.card.timesteps, real_frames)
    try:
        graph = add_spike_outputs(b.onnx_path.read_bytes(), b.net.layer_names)
    except ValueError as err:
        raise BundleError(b.onnx_path, str(err)) from None
    return verify_onnx(b.exact, graph, b.card.mode, sets)


__all__ = [
    "SpikeProbe",
    "VerificationError",
    "add_spike_outputs",
    "default_frame_sets",
    "random_frames",
    "synthetic_frames",
    "verify_bundle",
    "verify_onnx",
]
