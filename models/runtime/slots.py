"""The slot table: the stream bookkeeping every runner shares, and the runner interface.

A *slot* is one stream's state (membrane potentials, causal-ASA running statistics). The caller
opens a slot per stream and then advances any subset of open slots, in any order, with one frame
each per call::

    runner = load_runner("models/bundled/default", backend="onnx")
    a, b = runner.open(), runner.open()
    res = runner.step([b, a], frames)      # frames [2, 2, H, W] float32, row i for slots[i]
    res.out, res.counts, res.sops, res.energy_j   # [2, K], [2, L], [2], [2]
    runner.reset(a); runner.close(b)       # a starts from rest again; b's slot is free for reuse

Only the slots named in a call advance; a slot reused after :meth:`StepRunner.close` (or after
:meth:`StepRunner.reset`) starts from rest (all state zero). The table doubles its capacity when
every slot is taken. :class:`StepRunner` holds this bookkeeping once; a backend implements
``_resize`` / ``_clear`` / ``_advance`` on its own storage (models/runtime/torch_runner.py,
ort_runner.py, window.py). Every backend computes the network's exact form
(models/runtime/exact.py), so a stream's results do not depend on the slots it is stepped with.

Calls are serialised by a lock; the service drives a runner from one worker thread.
"""

from __future__ import annotations

import heapq
import math
import threading
from collections.abc import Sequence
from typing import Literal, NamedTuple, Protocol, runtime_checkable

import numpy as np

from models.instrument import EnergyModel
from models.network import SpikingNet
from models.runtime.bundle import ModelCard

Backend = Literal["torch", "onnx", "event"]
Device = Literal["cpu", "cuda", "auto"]


class StepResult(NamedTuple):
    """One row per stepped slot, in the order of the ``slots`` argument."""

    out: np.ndarray  # [n, K] float32: output-layer spike rate per class at this step (0..1)
    counts: np.ndarray  # [n, L] float32: spikes per layer at this step
    sops: np.ndarray  # [n] float32: synaptic operations at this step
    energy_j: np.ndarray  # [n] float32: energy proxy of this step (joules)
    evaluated: np.ndarray | None = None  # [n] bool: the row is fresh (always True in step mode)


@runtime_checkable
class Runner(Protocol):
    """What the service and the benchmarks use of a runner (:class:`StepRunner` and its backends)."""

    card: ModelCard
    energy: EnergyModel
    num_classes: int
    layer_names: tuple[str, ...]
    frame_shape: tuple[int, int, int]
    hop: int  # steps between fresh results: 1 in step mode, the window hop in window mode
    providers: list[str]  # ONNX Runtime's execution providers, in order (empty for torch)

    @property
    def device(self) -> str: ...  # "cpu" or "cuda": where the step computes

    @property
    def capacity(self) -> int: ...

    @property
    def active_slots(self) -> int: ...

    def open(self) -> int: ...

    def close(self, slot: int) -> None: ...

    def reset(self, slot: int) -> None: ...

    def step(self, slots: Sequence[int] | np.ndarray, frames: np.ndarray) -> StepResult: ...

    def bytes_per_stream(self) -> int: ...


class StepRunner:
    """Slot table and the public interface shared by every backend (see the module docstring)."""

    card: ModelCard
    energy: EnergyModel
    num_classes: int
    layer_names: tuple[str, ...]
    frame_shape: tuple[int, int, int]
    hop: int = 1
    device: str = "cpu"
    providers: list[str] = []  # noqa: RUF012 - set per instance by ONNX Runtime runners, read-only here

    def __init__(self, card: ModelCard, net: SpikingNet, capacity: int = 8) -> None:
        self.card = card
        self.energy = EnergyModel.from_network(net)
        self.num_classes = net.cfg.num_classes
        self.layer_names = tuple(net.layer_names)
        self.frame_shape = (net.cfg.in_channels, *net.cfg.input_size)
        self.state_names = tuple(net.state_names())
        self.state_shapes = tuple(tuple(s) for s in net.state_shapes())
        self._fanout = np.asarray(self.energy.fanout, dtype=np.float64)
        self._e_fixed = self.energy.e_mac_j * self.energy.first_layer_macs
        self._e_ac = self.energy.e_ac_j
        self._lock = threading.RLock()
        self._capacity = 0
        self._is_open = np.zeros(0, dtype=bool)
        self._free: list[int] = []
        self._grow(max(1, int(capacity)))

    # ---- slot table ------------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def active_slots(self) -> int:
        return int(self._is_open.sum())

    def _grow(self, capacity: int) -> None:
        old = self._capacity
        self._resize(capacity)
        self._is_open = np.concatenate([self._is_open, np.zeros(capacity - old, dtype=bool)])
        for s in range(old, capacity):
            heapq.heappush(self._free, s)
        self._capacity = capacity

    def open(self) -> int:
        """A slot at rest for a new stream (the lowest free one); grows the table when full."""
        with self._lock:
            if not self._free:
                self._grow(2 * self._capacity)
            slot = heapq.heappop(self._free)
            self._clear(np.array([slot], dtype=np.int64))
            self._is_open[slot] = True
            return slot

    def _check(self, slot: int) -> int:
        s = int(slot)
        if not (0 <= s < self._capacity and self._is_open[s]):
            raise KeyError(f"slot {slot} is not open")
        return s

    def reset(self, slot: int) -> None:
        """Put an open slot back at rest (its stream continues from zero state)."""
        with self._lock:
            self._clear(np.array([self._check(slot)], dtype=np.int64))

    def close(self, slot: int) -> None:
        """Free a slot; its state is cleared, so whoever gets it next starts from rest."""
        with self._lock:
            s = self._check(slot)
            self._clear(np.array([s], dtype=np.int64))
            self._is_open[s] = False
            heapq.heappush(self._free, s)

    def step(self, slots: Sequence[int] | np.ndarray, frames: np.ndarray) -> StepResult:
        """Advance each slot in ``slots`` by one timestep with ``frames[i]`` (``[n, 2, H, W]``)."""
        idx = np.asarray(slots, dtype=np.int64).reshape(-1)
        n = idx.shape[0]
        x = np.ascontiguousarray(frames, dtype=np.float32)
        if x.shape != (n, *self.frame_shape):
            raise ValueError(
                f"frames must have shape {(n, *self.frame_shape)} for {n} slot(s), got {x.shape}"
            )
        with self._lock:
            if n and (idx.min() < 0 or idx.max() >= self._capacity or not self._is_open[idx].all()):
                bad = [int(s) for s in idx if not (0 <= s < self._capacity and self._is_open[s])]
                raise KeyError(f"slot(s) {bad} are not open")
            if n > 1 and np.unique(idx).shape[0] != n:
                raise ValueError(f"a slot may appear once per step, got {idx.tolist()}")
            if n == 0:
                k, layers = self.num_classes, len(self.layer_names)
                z = np.zeros(0, dtype=np.float32)
                return StepResult(
                    np.zeros((0, k), np.float32), np.zeros((0, layers), np.float32), z, z, z.astype(bool)
                )
            out, counts, evaluated = self._advance(idx, x)
        sops = self.sops(counts)
        energy = self._e_fixed + self._e_ac * sops
        return StepResult(out, counts, sops.astype(np.float32), energy.astype(np.float32), evaluated)

    def sops(self, counts: np.ndarray) -> np.ndarray:
        """Synaptic operations of each row of ``counts [n, L]`` (float64), summed layer by layer in a
        fixed order: a row's figure does not depend on the rows beside it (a matrix-vector product's
        order would)."""
        sops = np.zeros(counts.shape[0], dtype=np.float64)
        for layer, fanout in enumerate(self._fanout):
            sops += counts[:, layer] * fanout
        return sops

    def read_state(self, slot: int) -> list[np.ndarray]:
        """A copy of an open slot's state, one array per state tensor (``state_names`` order)."""
        with self._lock:
            return self._read(self._check(slot))

    def write_state(self, slot: int, state: Sequence[np.ndarray]) -> None:
        """Set an open slot's state (as :meth:`read_state` gave it): the stream continues from there.
        ``ValueError`` unless every array has its tensor's shape, float32 and finite values."""
        arrays = [np.asarray(a) for a in state]
        shapes = [tuple(s) for s in self.state_shapes]
        if [a.shape for a in arrays] != shapes or any(a.dtype != np.float32 for a in arrays):
            got = [(a.shape, str(a.dtype)) for a in arrays]
            raise ValueError(f"state must be float32 arrays of shapes {shapes}, got {got}")
        if not all(np.isfinite(a).all() for a in arrays):
            raise ValueError("state holds non-finite values")
        with self._lock:
            self._write(self._check(slot), arrays)

    def bytes_per_stream(self) -> int:
        """Device memory one slot's state takes (float32)."""
        return 4 * sum(math.prod(s) for s in self.state_shapes)

    # ---- backend hooks ---------------------------------------------------------------------------
    def _resize(self, capacity: int) -> None:
        """Grow the state storage to ``capacity`` slots, keeping the existing rows."""
        raise NotImplementedError

    def _clear(self, rows: np.ndarray) -> None:
        """Zero the state of ``rows``."""
        raise NotImplementedError

    def _read(self, row: int) -> list[np.ndarray]:
        """Copies of the state of ``row``."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its state")

    def _write(self, row: int, state: list[np.ndarray]) -> None:
        """Set the state of ``row`` (arrays checked by :meth:`write_state`)."""
        raise NotImplementedError(f"{type(self).__name__} does not take a state")

    def _advance(self, rows: np.ndarray, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Step ``rows`` with ``frames``; write their new state; return ``(out, counts, evaluated)``."""
        raise NotImplementedError


__all__ = ["Backend", "Device", "Runner", "StepResult", "StepRunner"]
