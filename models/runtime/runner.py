"""The stateful stepwise runtime: a slot table of streams on the device, two backends.

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
``_resize`` / ``_clear`` / ``_advance`` on its own storage:

* :class:`TorchStepRunner`: state tensors ``[capacity, ...]`` on the CPU or a CUDA device, gathered
  with ``index_select`` and written back with ``index_copy_``; BatchNorm folded; optional
  ``torch.compile`` (CUDA graphs on a GPU), with batches padded to powers of two so that only a few
  shapes are compiled.
* :class:`OrtStepRunner`: ONNX Runtime on the bundle's step graph. On the CPU the state lives in
  numpy arrays gathered with ``np.take`` into preallocated buffers, the outputs are bound to
  preallocated buffers (IO binding) and scattered back with fancy indexing. With the CUDA execution
  provider the state table is a set of torch CUDA tensors bound to the graph by pointer, so the
  state never leaves the GPU.

Calls are serialised by a lock; the service drives a runner from one worker thread.
"""

from __future__ import annotations

import copy
import heapq
import math
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from models.instrument import EnergyModel
from models.network import SpikingNet
from models.runtime.bundle import Bundle, ModelCard, load_bundle

Backend = Literal["torch", "onnx"]
Device = Literal["cpu", "cuda", "auto"]


class StepResult(NamedTuple):
    """One row per stepped slot, in the order of the ``slots`` argument."""

    out: np.ndarray  # [n, K] float32: output-layer spike rate per class at this step (0..1)
    counts: np.ndarray  # [n, L] float32: spikes per layer at this step
    sops: np.ndarray  # [n] float32: synaptic operations at this step
    energy_j: np.ndarray  # [n] float32: energy proxy of this step (joules)
    evaluated: np.ndarray | None = None  # [n] bool: the row is fresh (always True in step mode)


class StepRunner:
    """Slot table and the public interface shared by every backend (see the module docstring)."""

    card: ModelCard
    energy: EnergyModel
    num_classes: int
    layer_names: tuple[str, ...]
    frame_shape: tuple[int, int, int]

    def __init__(self, card: ModelCard, net: SpikingNet, capacity: int = 8) -> None:
        self.card = card
        self.energy = EnergyModel.from_network(net)
        self.num_classes = net.cfg.num_classes
        self.layer_names = tuple(net.layer_names)
        self.frame_shape = (net.cfg.in_channels, *net.cfg.input_size)
        self.state_names = tuple(net.state_names())
        self.state_shapes = tuple(tuple(s) for s in net.state_shapes())
        self._fanout = np.asarray(self.energy.fanout, dtype=np.float32)
        self._e_fixed = np.float32(self.energy.e_mac_j * self.energy.first_layer_macs)
        self._e_ac = np.float32(self.energy.e_ac_j)
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
        sops = counts @ self._fanout
        energy = self._e_fixed + self._e_ac * sops
        return StepResult(out, counts, sops.astype(np.float32), energy.astype(np.float32), evaluated)

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

    def _advance(self, rows: np.ndarray, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Step ``rows`` with ``frames``; write their new state; return ``(out, counts, evaluated)``."""
        raise NotImplementedError


def _resolve_device(device: Device) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' asked for, but torch sees no CUDA device")
    return device


class TorchStepRunner(StepRunner):
    """PyTorch backend (CPU or CUDA). ``compile=True`` wraps the step in ``torch.compile``, compiled
    once per power-of-two batch size (about a minute each on a 2-core CPU; CUDA graphs on a GPU).
    ``rewrite=True`` runs the export's inference rewrites (models/runtime/rewrite.py) instead of the
    network as trained: pools folded into the convolutions, fused causal ASA (ranking ties as the
    original), spike-driven FC layers on the CPU; the default is the BatchNorm fold alone."""

    def __init__(
        self,
        net: SpikingNet,
        card: ModelCard,
        device: Device = "auto",
        capacity: int = 8,
        fold_bn: bool = True,
        compile: bool = False,
        rewrite: bool = False,
    ) -> None:
        from models.runtime.rewrite import TORCH_REWRITES, fold_batchnorm, inference_graph

        self.device = torch.device(_resolve_device(device))
        if rewrite:  # the export's rewrites, ranking ties as the original; no data-dependent shapes on a GPU
            rewrites = replace(TORCH_REWRITES, spike_driven=self.device.type == "cpu")
            model = inference_graph(net, rewrites)
        elif fold_bn:
            model = fold_batchnorm(net)
        else:
            model = copy.deepcopy(net).eval().requires_grad_(False)
        self.net = model.to(self.device)
        self._state: list[torch.Tensor] = []
        self.compiled = compile
        self._fn = self.net.step
        if compile:
            mode = "reduce-overhead" if self.device.type == "cuda" else None
            self._fn = torch.compile(self.net.step, mode=mode, dynamic=False)
        super().__init__(card, net, capacity)

    def _resize(self, capacity: int) -> None:
        new = [
            torch.zeros(capacity + 1, *s, device=self.device) for s in self.state_shapes
        ]  # +1: scratch row
        for a, b in zip(new, self._state):
            a[: b.shape[0] - 1].copy_(b[:-1])
        self._state = new

    def _clear(self, rows: np.ndarray) -> None:
        ii = torch.from_numpy(rows).to(self.device)
        for s in self._state:
            s.index_fill_(0, ii, 0.0)

    @torch.inference_mode()
    def _advance(self, rows: np.ndarray, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = rows.shape[0]
        if self.compiled:  # pad to a power of two with the scratch row, so few shapes get compiled
            m = 1 << (n - 1).bit_length()
            if m != n:
                rows = np.concatenate([rows, np.full(m - n, self._capacity, dtype=np.int64)])
                frames = np.concatenate([frames, np.zeros((m - n, *frames.shape[1:]), np.float32)])
        ii = torch.from_numpy(rows).to(self.device, non_blocking=True)
        x = torch.from_numpy(frames).to(self.device, non_blocking=True)
        state = [s.index_select(0, ii) for s in self._state]
        o, new = self._fn(x, state)
        for s, v in zip(self._state, new):
            s.index_copy_(0, ii[:n], v[:n])
        out = o.out[:n].float().cpu().numpy()
        counts = o.counts[:n].float().cpu().numpy()
        return out, counts, np.ones(n, dtype=bool)


# ---- ONNX Runtime --------------------------------------------------------------------------------
def ort_providers(device: Device = "auto") -> list[Any]:
    """Execution providers, chosen deliberately: CUDA only when ONNX Runtime has it and a GPU is there
    (or ``device="cuda"`` asks for it; then its absence is an error), the CPU otherwise."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    has_cuda_ep = "CUDAExecutionProvider" in available
    if device == "cuda" and not has_cuda_ep:
        raise RuntimeError(
            f"device 'cuda' asked for, but this onnxruntime has only {available}; install onnxruntime-gpu"
        )
    if device == "cuda" or (device == "auto" and has_cuda_ep and torch.cuda.is_available()):
        return [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def make_session(model: Path | str | bytes, device: Device = "auto", threads: int | None = None):
    """An ``InferenceSession`` with the project's options: full graph optimisation, sequential
    execution, ``threads`` intra-op threads (default: all cores), errors only in the log."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads:
        so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, so, providers=ort_providers(device))


class OrtStepRunner(StepRunner):
    """ONNX Runtime backend on a bundle's step graph (see the module docstring)."""

    def __init__(
        self,
        onnx_path: Path | str | bytes,
        card: ModelCard,
        net: SpikingNet,
        device: Device = "auto",
        capacity: int = 8,
        threads: int | None = None,
    ) -> None:
        self.session = make_session(onnx_path, device, threads)
        self.providers = self.session.get_providers()
        self.on_cuda = self.providers[0] == "CUDAExecutionProvider"
        self._gpu_tables = self.on_cuda and torch.cuda.is_available()
        self._in_names = ["frames", *net.state_names()]
        self._out_names = ["out", "counts", *(f"{n}.next" for n in net.state_names())]
        self._tables: list[Any] = []  # GPU
        self._pages: tuple[list[np.ndarray], ...] = ([], [])  # host: two copies, see _advance
        self._side = np.zeros(0, dtype=np.int8)
        super().__init__(card, net, capacity)

    # storage: two numpy copies of every table on the host, torch CUDA tensors on the GPU
    def _resize(self, capacity: int) -> None:
        if self._gpu_tables:
            new = [torch.zeros(capacity, *s, device="cuda") for s in self.state_shapes]
            for a, b in zip(new, self._tables):
                a[: b.shape[0]].copy_(b)
            self._tables = new
        else:
            old = self._side.shape[0]
            pages = tuple([np.zeros((capacity, *s), dtype=np.float32) for s in self.state_shapes] for _ in (0, 1))
            for new_page, old_page in zip(pages, self._pages):
                for a, b in zip(new_page, old_page):
                    a[:old] = b
            self._pages = pages
            self._side = np.concatenate([self._side, np.zeros(capacity - old, dtype=np.int8)])
        self._alloc_buffers(capacity)

    def bytes_per_stream(self) -> int:
        """Host memory per slot: the state twice (see :meth:`_advance`); once on the GPU."""
        return super().bytes_per_stream() * (1 if self._gpu_tables else 2)

    def _alloc_buffers(self, rows: int) -> None:
        """Contiguous buffers for the gathered inputs and the outputs of up to ``rows`` streams."""
        k, layers = self.num_classes, len(self.layer_names)
        shapes = [(k,), (layers,), *self.state_shapes]
        if self._gpu_tables:
            self._frames = torch.empty(rows, *self.frame_shape, device="cuda")
            self._ins = [torch.empty(rows, *s, device="cuda") for s in self.state_shapes]
            self._outs = [torch.empty(rows, *s, device="cuda") for s in shapes]
        else:
            self._frames = np.empty((rows, *self.frame_shape), dtype=np.float32)
            self._ins = [np.empty((rows, *s), dtype=np.float32) for s in self.state_shapes]
            self._outs = [np.empty((rows, *s), dtype=np.float32) for s in shapes]
        self._bindings: dict[Any, Any] = {}  # every binding points into the buffers or pages above
        self._seen: set[tuple[int, int, int]] = set()  # slot ranges met once (see _direct)

    def _bind(self, key: Any, inputs: Sequence[Any], outputs: Sequence[Any]) -> Any:
        """The IO binding of these arrays (built once per ``key`` and reused: the bound memory is
        the arrays themselves, so a call only refills them)."""
        b = self._bindings.get(key)
        if b is None:
            if len(self._bindings) >= 64:  # direct bindings are per slot range; keep a few
                self._bindings.pop(next(iter(self._bindings)))
            b = self.session.io_binding()
            device = "cuda" if self._gpu_tables else "cpu"
            for name, v in zip(self._in_names, inputs):
                ptr = v.data_ptr() if self._gpu_tables else v.ctypes.data
                b.bind_input(name, device, 0, np.float32, tuple(v.shape), ptr)
            for name, v in zip(self._out_names, outputs):
                ptr = v.data_ptr() if self._gpu_tables else v.ctypes.data
                b.bind_output(name, device, 0, np.float32, tuple(v.shape), ptr)
            self._bindings[key] = b
        return b

    def _direct(self, key: tuple[int, int, int]) -> bool:
        """Whether to step the slot range ``key = (first, n, page)`` in place. Building its binding
        costs about as much as one gathered step, so a range gets one on its second call; a one-off
        composition is gathered."""
        if key in self._bindings or key in self._seen:
            return True
        if len(self._seen) > 4096:
            self._seen.clear()
        self._seen.add(key)
        return False

    def _clear(self, rows: np.ndarray) -> None:
        if self._gpu_tables:
            ii = torch.from_numpy(rows).cuda()
            for t in self._tables:
                t.index_fill_(0, ii, 0.0)
        else:
            for page in self._pages:
                for t in page:
                    t[rows] = 0.0
            self._side[rows] = 0

    def _advance(self, rows: np.ndarray, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Host path. A slot's state lives in page ``side[slot]``. When the stepped slots are a
        contiguous range on one page (any order), ONNX Runtime reads that page and writes the other
        in place and the slots flip pages: no gather, no scatter. Otherwise their state is gathered
        into buffers and the result written back to the page it came from."""
        if self._gpu_tables:
            return self._advance_cuda(rows, frames)
        n = rows.shape[0]
        order = np.argsort(rows) if n > 1 else np.zeros(1, dtype=np.int64)
        first, side = int(rows[order[0]]), self._side[rows]
        outs = self._outs[:2]
        contiguous = int(rows[order[-1]]) - first == n - 1 and (side == side[0]).all()
        if contiguous and self._direct((first, n, int(side[0]))):
            p, span = int(side[0]), slice(first, first + n)
            np.take(frames, order, axis=0, out=self._frames[:n])
            ins = [self._frames[:n], *(t[span] for t in self._pages[p])]
            nxt = [o[:n] for o in outs] + [t[span] for t in self._pages[1 - p]]
            self.session.run_with_iobinding(self._bind((first, n, p), ins, nxt))
            self._side[span] = 1 - p
            out, counts = np.empty((n, outs[0].shape[1]), np.float32), np.empty((n, outs[1].shape[1]), np.float32)
            out[order], counts[order] = outs[0][:n], outs[1][:n]
            return out, counts, np.ones(n, dtype=bool)
        np.copyto(self._frames[:n], frames)
        on = [np.flatnonzero(side == p) for p in (0, 1)]
        for k, buf in enumerate(self._ins):
            for p in (0, 1):
                if on[p].size:
                    buf[on[p]] = self._pages[p][k][rows[on[p]]]
        ins = [self._frames[:n], *(b[:n] for b in self._ins)]
        self.session.run_with_iobinding(self._bind(n, ins, [o[:n] for o in self._outs]))
        for k, buf in enumerate(self._outs[2:]):
            for p in (0, 1):
                if on[p].size:
                    self._pages[p][k][rows[on[p]]] = buf[on[p]]
        return outs[0][:n].copy(), outs[1][:n].copy(), np.ones(n, dtype=bool)

    def _advance_cuda(
        self, rows: np.ndarray, frames: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = rows.shape[0]
        b = self._bind(n, [self._frames[:n], *(t[:n] for t in self._ins)], [o[:n] for o in self._outs])
        ii = torch.from_numpy(rows).cuda()
        self._frames[:n].copy_(torch.from_numpy(frames))
        for table, buf in zip(self._tables, self._ins):
            torch.index_select(table, 0, ii, out=buf[:n])
        torch.cuda.current_stream().synchronize()  # ORT runs on its own stream
        self.session.run_with_iobinding(b)
        b.synchronize_outputs()
        for table, buf in zip(self._tables, self._outs[2:]):
            table.index_copy_(0, ii, buf[:n])
        return self._outs[0][:n].cpu().numpy(), self._outs[1][:n].cpu().numpy(), np.ones(n, dtype=bool)


# ---- loading -------------------------------------------------------------------------------------
def load_runner(
    bundle_dir: Path | str | Bundle,
    backend: Backend = "onnx",
    device: Device = "auto",
    *,
    capacity: int = 8,
    threads: int | None = None,
    compile: bool = False,
    rewrite: bool = False,
    hop: int | None = None,
) -> StepRunner:
    """A runner for a bundle. Step-mode bundles give :class:`OrtStepRunner` / :class:`TorchStepRunner`;
    window-mode bundles (paper ASA, SA) a :class:`~models.runtime.window.WindowRunner` with the same
    interface. ``capacity``: initial slots (the table grows); ``threads``: ONNX Runtime intra-op
    threads (default: all cores); ``compile``: ``torch.compile`` and ``rewrite``: the export's
    inference rewrites (torch backend, step mode; see :class:`TorchStepRunner`); ``hop``: window
    mode, evaluate every ``hop`` steps (default: the card's)."""
    if backend not in ("torch", "onnx"):
        raise ValueError(f"backend must be 'torch' or 'onnx', got {backend!r}")
    if isinstance(bundle_dir, Bundle):
        bundle = bundle_dir
    else:
        bundle = load_bundle(bundle_dir, check_graph=backend == "onnx")
    if bundle.card.mode == "window":
        from models.runtime.window import WindowRunner

        return WindowRunner.from_bundle(bundle, backend, device, capacity=capacity, threads=threads, hop=hop)
    if backend == "torch":
        return TorchStepRunner(bundle.net, bundle.card, device, capacity, compile=compile, rewrite=rewrite)
    return OrtStepRunner(bundle.onnx_path, bundle.card, bundle.net, device, capacity, threads=threads)


__all__ = [
    "Backend",
    "Device",
    "OrtStepRunner",
    "StepResult",
    "StepRunner",
    "TorchStepRunner",
    "load_runner",
    "make_session",
    "ort_providers",
]
