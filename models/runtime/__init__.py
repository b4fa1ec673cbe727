"""The stateful stepwise runtime: model bundles, export, step runners (PyTorch, ONNX Runtime), readout.

See docs/bundle.md; the event-driven CPU runner (``backend="event"``): models/runtime/event.py. The usual entry points::

    from models.runtime import load_runner, Readout
    runner = load_runner(bundle_dir, backend="onnx")   # or "torch", "event"; device "auto" | "cpu" | "cuda"
    slot = runner.open()
    res = runner.step([slot], frames)                  # StepResult(out, counts, sops, energy_j, evaluated)

Heavy imports (ONNX Runtime, the exporter) happen only when used.
"""

from models.runtime.bundle import Bundle, BundleError, ModelCard, load_bundle, save_bundle
from models.runtime.loading import load_runner
from models.runtime.ort_runner import OrtStepRunner
from models.runtime.readout import Prediction, Readout
from models.runtime.slots import Runner, StepResult, StepRunner
from models.runtime.torch_runner import TorchStepRunner
from models.runtime.window import WindowRunner

__all__ = [
    "Bundle",
    "BundleError",
    "ModelCard",
    "OrtStepRunner",
    "Prediction",
    "Readout",
    "Runner",
    "StepResult",
    "StepRunner",
    "TorchStepRunner",
    "WindowRunner",
    "load_bundle",
    "load_runner",
    "save_bundle",
]
