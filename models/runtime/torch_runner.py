"""The PyTorch step runner (CPU or CUDA): the exact network stepped on slot tables of torch tensors.

State tensors ``[capacity + 1, ...]`` (the last row is scratch for padding) live on the device,
gathered with ``index_select`` and written back with ``index_copy_``. On CUDA, TF32 is switched off
for the step: its 10-bit products would break the exact sums (docs/exact.md).
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import replace

import numpy as np
import torch

from models.network import SpikingNet
from models.runtime.bundle import ModelCard
from models.runtime.slots import Device, StepRunner


def resolve_device(device: Device) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' asked for, but torch sees no CUDA device")
    return device


@contextlib.contextmanager
def _no_tf32():
    """Full float32 products in cuDNN convolutions and cuBLAS matrix products (no-op on the CPU)."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False, deterministic=True):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


class TorchStepRunner(StepRunner):
    """PyTorch backend (CPU or CUDA) on an exact network (:func:`~models.runtime.exact.exact_network`,
    a bundle's ``exact``). ``rewrite=True`` runs the export's inference rewrites
    (models/runtime/rewrite.py): pools folded into the convolutions, fused causal ASA, spike-driven FC
    layers on the CPU; the same values, faster. ``compile=True`` wraps the step in ``torch.compile``
    (once per power-of-two batch size; CUDA graphs on a GPU); the compiler may fuse a multiply and
    an add into one rounding, so a compiled step is outside the exactness guarantee."""

    def __init__(
        self,
        net: SpikingNet,
        card: ModelCard,
        device: Device = "auto",
        capacity: int = 8,
        compile: bool = False,
        rewrite: bool = False,
    ) -> None:
        from models.runtime.rewrite import TORCH_REWRITES, inference_graph

        self._device = torch.device(resolve_device(device))
        self.device = self._device.type
        if rewrite:  # ranking ties as the original; no data-dependent shapes on a GPU
            rewrites = replace(TORCH_REWRITES, spike_driven=self._device.type == "cpu")
            model = inference_graph(net, rewrites)
        else:
            model = copy.deepcopy(net).eval().requires_grad_(False)
        self.net = model.to(self._device)
        self._state: list[torch.Tensor] = []
        self.compiled = compile
        self._fn = self.net.step
        if compile:
            mode = "reduce-overhead" if self._device.type == "cuda" else None
            self._fn = torch.compile(self.net.step, mode=mode, dynamic=False)
        super().__init__(card, net, capacity)

    def _resize(self, capacity: int) -> None:
        new = [
            torch.zeros(capacity + 1, *s, device=self._device) for s in self.state_shapes
        ]  # +1: scratch row
        for a, b in zip(new, self._state):
            a[: b.shape[0] - 1].copy_(b[:-1])
        self._state = new

    def _clear(self, rows: np.ndarray) -> None:
        ii = torch.from_numpy(rows).to(self._device)
        for s in self._state:
            s.index_fill_(0, ii, 0.0)

    def _read(self, row: int) -> list[np.ndarray]:
        return [s[row].cpu().numpy().copy() for s in self._state]

    def _write(self, row: int, state: list[np.ndarray]) -> None:
        for table, value in zip(self._state, state):
            table[row].copy_(torch.from_numpy(value))

    @torch.inference_mode()
    def _advance(self, rows: np.ndarray, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = rows.shape[0]
        if self.compiled:  # pad to a power of two with the scratch row, so few shapes get compiled
            m = 1 << (n - 1).bit_length()
            if m != n:
                rows = np.concatenate([rows, np.full(m - n, self._capacity, dtype=np.int64)])
                frames = np.concatenate([frames, np.zeros((m - n, *frames.shape[1:]), np.float32)])
        ii = torch.from_numpy(rows).to(self._device, non_blocking=True)
        x = torch.from_numpy(frames).to(self._device, non_blocking=True)
        state = [s.index_select(0, ii) for s in self._state]
        with _no_tf32():
            o, new = self._fn(x, state)
        for s, v in zip(self._state, new):
            s.index_copy_(0, ii[:n], v[:n])
        out = o.out[:n].float().cpu().numpy()
        counts = o.counts[:n].float().cpu().numpy()
        return out, counts, np.ones(n, dtype=bool)


__all__ = ["TorchStepRunner", "resolve_device"]
