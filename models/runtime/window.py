"""Window mode: networks whose attention needs the whole window (the paper's ASA, SA).

:class:`WindowRunner` has the slot interface of :class:`~models.runtime.runner.StepRunner`. Each slot
keeps a rolling buffer of its last ``T`` frames. A slot is **evaluated** at the step that brings its
frame count ``c`` (since open / reset) to ``c >= T`` with ``(c - T) % hop == 0``: the network runs
on the ordered window of the last ``T`` frames (batched over every slot due at that call). So the
first evaluation comes with the ``T``-th frame, then one every ``hop`` frames.

Rows of :class:`~models.runtime.runner.StepResult` for a window runner:

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

from models.network import SpikingNet
from models.runtime.bundle import Bundle, ModelCard
from models.runtime.runner import Device, StepRunner, _resolve_device, make_session

Evaluator = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # [T, m, C, H, W] -> ([m, K], [m, L])


class TorchWindowEval:
    """Multi-step forward of the network (BatchNorm folded) on a batch of windows."""

    def __init__(self, net: SpikingNet, device: Device = "auto") -> None:
        from models.runtime.rewrite import fold_batchnorm

        self.device = torch.device(_resolve_device(device))
        self.net = fold_batchnorm(net).to(self.device)

    @torch.inference_mode()
    def __call__(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        o = self.net(torch.from_numpy(windows).to(self.device))
        return o.out.mean(0).float().cpu().numpy(), o.counts.mean(0).float().cpu().numpy()


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
            ev: Evaluator = TorchWindowEval(bundle.net, device)
        else:
            ev = OrtWindowEval(bundle.onnx_path, device, threads)
        return cls(bundle.net, bundle.card, ev, hop=hop, capacity=capacity)

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


__all__ = ["OrtWindowEval", "TorchWindowEval", "WindowRunner"]
