"""Window mode: networks whose attention needs the whole window (the paper's ASA, SA).

:class:`WindowRunner` has the slot interface of :class:`~models.runtime.slots.StepRunner`. Each slot
keeps a rolling buffer of its last ``T`` frames. A slot is **evaluated** at the step that brings its
frame count ``c`` (since open / reset) to ``c >= T`` with ``(c - T) % hop == 0``: the network runs
on the ordered window of the last ``T`` frames (batched over every slot due at that call). So the
first evaluation comes with the ``T``-th frame, then one every ``hop`` frames.

Rows of :class:`~models.runtime.slots.StepResult` for a window runner:

* ``evaluated[i]`` is True when slot ``i`` was evaluated at this call;
* ``out[i]`` is the output-layer spike rate (mean over the window) of the slot's **latest**
  evaluation, zeros before the first one;
* ``counts[i]`` are that evaluation's spikes per layer *per timestep* (window sum / T), and
  ``sops`` / ``energy_j`` follow from them: per-timestep figures comparable with step mode. Summing
  energy over steps therefore counts a window's cost once per step, as if each step cost one
  timestep's worth; the true cost of a window evaluation is ``T`` times ``energy_j``.

The rolling buffer stays in host memory; an evaluation moves the due windows to the device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from models.network import NetOutput, SpikingNet
from models.runtime.bundle import Bundle, ModelCard
from models.runtime.ort_runner import make_session
from models.runtime.slots import Device, StepRunner
from models.runtime.torch_runner import resolve_device

Evaluator = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # [T, m, C, H, W] -> ([m, K], [m, L])


def window_means(o: NetOutput) -> tuple[torch.Tensor, torch.Tensor]:
    """A window's output rate and spikes per layer per timestep: sums over T divided by T (an exact
    sum and one division, which every backend rounds alike; a mean may multiply by 1/T instead)."""
    t = o.out.shape[0]
    return o.out.sum(0) / t, o.counts.sum(0) / t


class TorchWindowEval:
    """Multi-step forward of an exact network (a bundle's ``exact``) on a batch of windows."""

    def __init__(self, net: SpikingNet, device: Device = "auto") -> None:
        self.device = torch.device(resolve_device(device))
        self.net = net.to(self.device).eval()

    @torch.inference_mode()
    def __call__(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out, counts = window_means(self.net(torch.from_numpy(windows).to(self.device)))
        return out.float().cpu().numpy(), counts.float().cpu().numpy()


class OrtWindowEval:
    """ONNX Runtime on a window graph (``frames [T, B, C, H, W] -> out, counts``)."""

    def __init__(self, onnx: Path | str | bytes, device: Device = "auto", threads: int | None = None) -> None:
        self.session = make_session(onnx, device, threads)

    def __call__(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out, counts = self.session.run(["out", "counts"], {"frames": windows})
        return out, counts


class WindowRunner(StepRunner):
    """Rolling buffer of the last ``T`` frames per slot, evaluated every ``hop`` steps."""

    def __init__(
        self,
        net: SpikingNet,
        card: ModelCard,
        evaluator: Evaluator,
        timesteps: int | None = None,
        hop: int | None = None,
        capacity: int = 8,
    ) -> None:
        self.timesteps = int(timesteps or card.timesteps)
        self.hop = int(hop or card.hop)
        if self.timesteps < 1 or self.hop < 1:
            raise ValueError(f"timesteps and hop must be >= 1, got {self.timesteps}, {self.hop}")
        self.evaluator = evaluator
        self._buf = np.zeros((0, self.timesteps, net.cfg.in_channels, *net.cfg.input_size), dtype=np.float32)
        self._seen = np.zeros(0, dtype=np.int64)
        self._out = np.zeros((0, net.cfg.num_classes), dtype=np.float32)
        self._counts = np.zeros((0, len(net.layers)), dtype=np.float32)
        super().__init__(card, net, capacity)
        # a slot's state: its last T frames oldest first, its frame count (reduced: only the position
        # in the hop cycle matters), its latest output and counts
        self.state_names = ("window.frames", "window.seen", "window.out", "window.counts")
        self.state_shapes = (self._buf.shape[1:], (1,), self._out.shape[1:], self._counts.shape[1:])

    @classmethod
    def from_bundle(
        cls,
        bundle: Bundle,
        backend: str = "onnx",
        device: Device = "auto",
        *,
        capacity: int = 8,
        threads: int | None = None,
        hop: int | None = None,
    ) -> WindowRunner:
        if backend == "torch":
            ev: Evaluator = TorchWindowEval(bundle.exact, device)
            where = ev.device.type
        else:
            ev = OrtWindowEval(bundle.onnx_path, device, threads)
            where = "cuda" if ev.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        runner = cls(bundle.exact, bundle.card, ev, hop=hop, capacity=capacity)
        runner.device = where
        if backend != "torch":
            runner.providers = list(ev.session.get_providers())
        return runner

    def bytes_per_stream(self) -> int:
        """Host memory of one slot: its frame buffer and latest outputs (float32)."""
        return 4 * (math.prod(self._buf.shape[1:]) + self._out.shape[1] + self._counts.shape[1]) + 8

    def _resize(self, capacity: int) -> None:
        def grow(a: np.ndarray) -> np.ndarray:
            new = np.zeros((capacity, *a.shape[1:]), dtype=a.dtype)
            new[: a.shape[0]] = a
            return new

        self._buf, self._seen = grow(self._buf), grow(self._seen)
        self._out, self._counts = grow(self._out), grow(self._counts)

    def _clear(self, rows: np.ndarray) -> None:
        self._buf[rows] = 0.0
        self._seen[rows] = 0
        self._out[rows] = 0.0
        self._counts[rows] = 0.0

    def _read(self, row: int) -> list[np.ndarray]:
        t, seen = self.timesteps, int(self._seen[row])
        order = (seen - t + np.arange(t)) % t if seen >= t else np.arange(t)
        reduced = seen if seen < t else t + (seen - t) % self.hop
        return [self._buf[row, order].copy(), np.array([reduced], np.float32), self._out[row].copy(), self._counts[row].copy()]

    def _write(self, row: int, state: list[np.ndarray]) -> None:
        frames, seen, out, counts = state
        t, n = self.timesteps, int(seen[0])
        if n != seen[0] or not 0 <= n < t + self.hop:
            raise ValueError(f"window frame count {seen[0]} is not an integer in 0..{t + self.hop - 1}")
        order = (n - t + np.arange(t)) % t if n >= t else np.arange(t)
        self._buf[row, order] = frames
        self._seen[row], self._out[row], self._counts[row] = n, out, counts

    def _advance(self, rows: np.ndarray, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        t = self.timesteps
        seen = self._seen[rows]
        self._buf[rows, seen % t] = frames
        seen = seen + 1
        self._seen[rows] = seen
        due = (seen >= t) & ((seen - t) % self.hop == 0)
        if due.any():
            r = rows[due]
            order = (seen[due][:, None] + np.arange(t)) % t  # oldest first: position seen % t
            windows = np.ascontiguousarray(self._buf[r[:, None], order].swapaxes(0, 1))  # [T, m, C, H, W]
            out, counts = self.evaluator(windows)
            self._out[r], self._counts[r] = out, counts
        return self._out[rows].copy(), self._counts[rows].copy(), due


__all__ = ["OrtWindowEval", "TorchWindowEval", "WindowRunner", "window_means"]
