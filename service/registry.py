"""The model registry: which bundles are served, loaded once, looked up by a safe name.

``model_dir`` is either one bundle or a directory of bundles (one sub-directory each, the directory
name is the model name), so a vanilla and an ASA model can be served side by side. The default model
is ``settings.default_model``, else ``default``, else the first name in sort order.

Names are checked against ``NAME_RE`` and looked up in the table built at start-up; a request can
never name a path, and bundles whose real path lies outside ``model_dir`` (symlinks) are refused,
so nothing outside the model directory is ever read.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.runtime.slots import Runner

Loader = Callable[..., Any]

from models.runtime.bundle import CARD_FILE, ONNX_FILES, BundleError, read_card

log = logging.getLogger("asasnn.registry")

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ModelNotFound(LookupError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown model {name!r}; served models: {known}")
        self.name = name


class NoModels(RuntimeError):
    pass


@dataclass
class ModelEntry:
    name: str
    path: Path
    runner: Runner | None = None  # once loaded
    error: str | None = None
    backend: str = "torch"  # the backend it was loaded with

    @property
    def loaded(self) -> bool:
        return self.runner is not None


@dataclass
class ModelRegistry:
    model_dir: Path
    default_name: str | None = None
    backend: str = "auto"
    device: str = "auto"
    torch_rewrite: bool = False  # torch backend: load_runner(..., rewrite=True)
    entries: dict[str, ModelEntry] = field(default_factory=dict)

    @classmethod
    def scan(
        cls,
        model_dir: Path,
        default: str | None = None,
        backend: str = "auto",
        device: str = "auto",
        torch_rewrite: bool = False,
    ) -> ModelRegistry:
        """Find the bundles (nothing is loaded yet). Raises :class:`NoModels` with a how-to-fix message."""
        root = Path(model_dir).expanduser()
        if not root.is_dir():
            raise NoModels(_missing_message(root))
        root = root.resolve()
        reg = cls(root, None, backend, device, torch_rewrite)
        if is_bundle(root):
            reg.entries[_safe_name(root.name)] = ModelEntry(_safe_name(root.name), root)
        else:
            for d in sorted(root.iterdir()):
                if not d.is_dir() or not NAME_RE.match(d.name):
                    continue
                real = d.resolve()
                if not real.is_relative_to(root):
                    log.warning(
                        "model %s: %s points outside the model directory %s; not served", d.name, real, root
                    )
                    continue
                if is_bundle(real):
                    reg.entries[d.name] = ModelEntry(d.name, real)
        if not reg.entries:
            raise NoModels(_missing_message(root))
        if default is not None:
            if default not in reg.entries:
                raise NoModels(f"default model {default!r} not found in {root}; found {sorted(reg.entries)}")
            reg.default_name = default
        else:
            reg.default_name = "default" if "default" in reg.entries else min(reg.entries)
        return reg

    def load_all(self, loader: Loader | None = None, threads: int | None = None) -> None:
        """Load every bundle (blocking; the app calls it on the engine's worker thread).

        ``loader(path, backend, device[, threads])`` defaults to :func:`models.runtime.load_runner`;
        ``threads`` (intra-op threads of ONNX Runtime) is passed only when given. Failures are kept per
        model, so one broken bundle does not hide the others.
        """
        if loader is None:
            from models.runtime import load_runner as loader
        for e in self.entries.values():
            if e.runner is not None:
                continue
            try:
                e.backend, why = resolve_backend(self.backend, e.path)
                kw: dict[str, object] = {} if threads is None else {"threads": threads}
                if e.backend == "torch" and self.torch_rewrite:
                    kw["rewrite"] = True
                e.runner = loader(e.path, backend=e.backend, device=self.device, **kw)
            except Exception as exc:  # noqa: BLE001 - one broken bundle must not hide the others
                e.error = f"{type(exc).__name__}: {exc}"
                log.error("model %s: cannot load %s: %s", e.name, e.path, e.error)
                continue
            providers = e.runner.providers  # ONNX Runtime's execution providers (none for torch)
            log.info(
                "model %s: backend %s (%s) on %s%s",
                e.name,
                e.backend,
                why,
                e.runner.device,
                f", providers {providers}" if providers else "",
            )

    @property
    def names(self) -> list[str]:
        return sorted(self.entries)

    def get(self, name: str | None) -> ModelEntry:
        """The entry of ``name`` (None: the default). Raises :class:`ModelNotFound`."""
        name = self.default_name if name is None else name
        if name is None or not NAME_RE.match(name) or name not in self.entries:
            raise ModelNotFound(str(name), self.names)
        return self.entries[name]


def is_bundle(d: Path) -> bool:
    return (d / CARD_FILE).is_file()


def resolve_backend(backend: str, path: Path) -> tuple[str, str]:
    """The backend for a bundle and why: ``auto`` picks ONNX Runtime when it is installed and the
    bundle has its graph (faster on a CPU, docs/performance.md), else PyTorch. ``event`` serves
    step-mode bundles; a window-mode bundle (which needs the whole window) falls back to ``auto``."""
    if backend == "event" and _card_mode(path) == "window":
        chosen, why = resolve_backend("auto", path)
        return chosen, f"event asked for, but the bundle is window-mode; {why}"
    if backend != "auto":
        return backend, "asked for"
    if importlib.util.find_spec("onnxruntime") is None:
        return "torch", "auto: onnxruntime is not installed (pip install onnxruntime for the faster backend)"
    if not any((path / f).is_file() for f in ONNX_FILES.values()):
        return "torch", "auto: the bundle has no ONNX graph"
    return "onnx", "auto: onnxruntime installed and the bundle has its graph"


def _card_mode(path: Path) -> str | None:
    try:
        return read_card(path).mode
    except (BundleError, OSError):
        return None  # the loader reports a broken card


def _safe_name(name: str) -> str:
    return name if NAME_RE.match(name) else "default"


def _missing_message(root: Path) -> str:
    return (
        f"no model bundle found in {root}. The server needs a bundle (model card + weights): train and export "
        "one (`asasnn train ...` then `asasnn export CHECKPOINT --output models/bundled/default`), or point "
        "--model-dir / ASASNN_MODEL_DIR at a bundle or a directory of bundles"
    )
