"""``load_runner``: the runner for a bundle, by mode and backend."""

from __future__ import annotations

from pathlib import Path

from models.runtime.bundle import Bundle, load_bundle
from models.runtime.ort_runner import OrtStepRunner
from models.runtime.slots import Backend, Device, StepRunner
from models.runtime.torch_runner import TorchStepRunner
from models.runtime.window import WindowRunner


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
    threads (default: all cores), or the event runner's batch parts stepped at once (default 1);
    ``compile``: ``torch.compile`` and ``rewrite``: the export's inference rewrites (torch backend,
    step mode; see :class:`TorchStepRunner`); ``hop``: window mode, evaluate every ``hop`` steps
    (default: the card's). ``backend="event"``: the event-driven CPU
    runner (:class:`~models.runtime.event.EventStepRunner`, step-mode bundles only)."""
    if backend not in ("torch", "onnx", "event"):
        raise ValueError(f"backend must be 'torch', 'onnx' or 'event', got {backend!r}")
    if isinstance(bundle_dir, Bundle):
        bundle = bundle_dir
    else:
        bundle = load_bundle(bundle_dir, check_graph=backend == "onnx")
    if bundle.card.mode == "window":
        if backend == "event":
            raise ValueError("the event backend runs step-mode bundles; a window-mode bundle needs torch or onnx")
        return WindowRunner.from_bundle(bundle, backend, device, capacity=capacity, threads=threads, hop=hop)
    if backend == "event":
        from models.runtime.event import EventStepRunner  # numba: imported only when used

        if device == "cuda":
            raise ValueError("the event backend runs on the CPU")
        return EventStepRunner(bundle.exact, bundle.card, capacity, threads=threads or 1)
    if backend == "torch":
        return TorchStepRunner(bundle.exact, bundle.card, device, capacity, compile=compile, rewrite=rewrite)
    return OrtStepRunner(bundle.onnx_path, bundle.card, bundle.exact, device, capacity, threads=threads)


__all__ = ["load_runner"]
