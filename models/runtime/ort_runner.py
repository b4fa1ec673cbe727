"""The ONNX Runtime step runner: a bundle's step graph on slot tables of host (or CUDA) memory.

On the CPU the state lives in two numpy pages per table; a contiguous range of slots on one page is
stepped in place (ONNX Runtime reads one page and writes the other), any other composition is
gathered into buffers and scattered back (see :meth:`OrtStepRunner._advance`). Outputs are bound to
preallocated buffers (IO binding). With the CUDA execution provider the tables are torch CUDA
tensors bound to the graph by pointer, so the state never leaves the GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.network import SpikingNet
from models.runtime.bundle import ModelCard
from models.runtime.slots import Device, StepRunner

# Exact sums on the GPU: full float32 products (no TF32) and cuDNN's GEMM-based convolution (the
# default algorithm), not an FFT or Winograd transform whose fractions are not dyadic.
CUDA_OPTIONS = {"device_id": 0, "use_tf32": 0, "cudnn_conv_algo_search": "DEFAULT"}


# Graph fusions that change what is summed: MatMul + Add into Gemm starts the product's
# accumulator at the added tensor (a membrane, not on the weight grid), so each partial sum rounds.
# Measured on the gesture3 step: 1-ulp membrane differences in fc1 with it, none without.
EXACT_UNSAFE_FUSIONS = ["MatMulAddFusion"]


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
        return [("CUDAExecutionProvider", dict(CUDA_OPTIONS)), "CPUExecutionProvider"]
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
    return ort.InferenceSession(src, so, providers=ort_providers(device), disabled_optimizers=EXACT_UNSAFE_FUSIONS)


class OrtStepRunner(StepRunner):
    """ONNX Runtime backend on a bundle's step graph (see the module docstring); ``net`` gives the
    state layout (a bundle's ``exact``)."""

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
        self.device = "cuda" if self.on_cuda else "cpu"
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

    def _read(self, row: int) -> list[np.ndarray]:
        if self._gpu_tables:
            return [t[row].cpu().numpy() for t in self._tables]
        return [t[row].copy() for t in self._pages[int(self._side[row])]]

    def _write(self, row: int, state: list[np.ndarray]) -> None:
        if self._gpu_tables:
            for t, value in zip(self._tables, state):
                t[row].copy_(torch.from_numpy(value))
            return
        for t, value in zip(self._pages[int(self._side[row])], state):
            t[row] = value

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


__all__ = ["CUDA_OPTIONS", "OrtStepRunner", "make_session", "ort_providers"]
