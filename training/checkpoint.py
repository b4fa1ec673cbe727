"""Training checkpoints: what one holds, how it is written and read, the network it rebuilds.

A checkpoint is a file written by ``torch.save`` of a plain dict, read with
``torch.load(weights_only=True)`` (tensors, numbers, strings, lists and dicts; nothing that runs
code)::

    config        NetworkConfig.to_dict()
    model         the network's state_dict (unwrapped, no ``module.`` prefix)
    data          {classes: [names], sensor: [width, height] or {width, height}, ds, dt_us,
                   dataset (optional), timesteps (optional)}: how to build its frames
    metrics       {accuracy (vote, 0..1), nasfr, split, data} of the validation at that epoch (optional)
    command       the command line that trained it (optional)
    machines      the machines that trained it, one line each in order of first use
                  (``models.machine.describe``; optional)
    train_config  TrainConfig.to_dict() (optional)
    optimizer, scheduler, scaler, epoch (epochs completed), best, rng (one entry per rank)
                  the training state ``asasnn train --resume`` restores (optional)

:func:`load_checkpoint` is the one reader: every failure (no file, a corrupt zip, a truncated file, a
pickle that asks for code, missing keys, weights that do not fit the config) is a ``ValueError``
that names the file. :func:`save_checkpoint` writes atomically. :func:`load_model` also takes
bundle directories (``models.runtime.bundle``) and is what ``asasnn eval`` and ``asasnn analyze`` load.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import torch

if TYPE_CHECKING:
    from models.config import NetworkConfig
    from models.network import SpikingNet

REQUIRED = ("config", "model", "data")
DATA_REQUIRED = ("classes", "sensor", "ds", "dt_us")
# what `asasnn train --resume` needs beyond the weights (``scaler`` and ``metrics`` may be absent)
RESUME_KEYS = ("train_config", "optimizer", "scheduler", "epoch", "best", "rng")
CHECKPOINT_FILES = ("best.pt", "last.pt")  # looked for, in this order, in a run directory


class _DataRequired(TypedDict):
    classes: list[str]
    sensor: list[int] | dict[str, int]  # [width, height] or {width, height}
    ds: int
    dt_us: int


class DataInfo(_DataRequired, total=False):
    """``data``: how the model's input frames are made from events."""

    dataset: str | None
    timesteps: int


class Metrics(TypedDict, total=False):
    """``metrics``: the validation at the checkpoint's epoch (other keys are kept as they are)."""

    accuracy: float  # majority vote over each recording's clips, in [0, 1]
    nasfr: float
    split: str
    data: str


@dataclass(frozen=True, eq=False)  # tensors have no truth value: compared by identity
class Checkpoint:
    """The contents of a checkpoint (see the module docstring); ``path`` is where it was read from."""

    config: dict[str, Any]
    model: dict[str, torch.Tensor]
    data: DataInfo
    metrics: Metrics | None = None
    command: str | None = None
    train_config: dict[str, Any] | None = None
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    epoch: int | None = None
    best: float | None = None
    rng: list[dict[str, Any]] | None = None
    machines: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys this module does not know, kept
    path: Path | None = None  # where it was read from; not stored in the file

    @property
    def name(self) -> str:
        return str(self.path) if self.path is not None else "checkpoint"

    @property
    def resumable(self) -> bool:
        """Whether it holds the training state ``asasnn train --resume`` restores."""
        return all(getattr(self, k) is not None for k in RESUME_KEYS)

    # ---- conversion ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The dict written to disk (absent optional entries left out)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in ("extra", "path"):
                continue
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = value
        return {**self.extra, **out}

    @classmethod
    def from_dict(cls, d: Any, path: str | Path | None = None) -> Checkpoint:
        """Checks the structure (not the weights: :meth:`network` does); ``ValueError`` naming ``path``."""
        name = str(path) if path is not None else "checkpoint"
        if not isinstance(d, Mapping):
            # bad content, not a bad argument
            raise ValueError(f"{name}: a checkpoint must be a dict, got {type(d).__name__}")  # noqa: TRY004
        missing = [k for k in REQUIRED if k not in d]
        if missing:
            raise ValueError(f"{name}: checkpoint lacks {missing} (docs/training.md lists what one holds)")
        data = d["data"]
        if not isinstance(data, Mapping) or any(k not in data for k in DATA_REQUIRED):
            raise ValueError(f"{name}: checkpoint 'data' must hold classes, sensor, ds and dt_us")
        if not isinstance(d["config"], Mapping):
            kind = type(d["config"]).__name__
            raise ValueError(f"{name}: 'config' is not a network configuration (a {kind})")  # noqa: TRY004
        model = d["model"]
        if not isinstance(model, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()
        ):
            raise ValueError(f"{name}: 'model' must be a state_dict (parameter names -> tensors)")
        kinds: dict[str, type | tuple[type, ...]] = {
            "metrics": Mapping, "command": str, "train_config": Mapping, "optimizer": Mapping,
            "scheduler": Mapping, "scaler": Mapping, "epoch": int, "best": (int, float), "rng": list,
            "machines": list,
        }
        for key, kind in kinds.items():
            value = d.get(key)
            if value is not None and not isinstance(value, kind):
                raise ValueError(f"{name}: checkpoint '{key}' has the wrong type ({type(value).__name__})")
        if not all(isinstance(m, str) for m in d.get("machines") or []):
            raise ValueError(f"{name}: checkpoint 'machines' must be a list of strings")
        known = {f.name for f in fields(cls)} - {"extra", "path"}
        kw = {k: v for k, v in d.items() if k in known}
        for key in ("config", "model", "data", "metrics", "train_config"):
            if kw.get(key) is not None:
                kw[key] = dict(kw[key])
        extra = {k: v for k, v in d.items() if k not in known}
        return cls(**kw, extra=extra, path=Path(path) if path is not None else None)

    # ---- the network -----------------------------------------------------------------------------
    def network_config(self) -> NetworkConfig:
        from models.config import NetworkConfig

        try:
            return NetworkConfig.from_dict(self.config)
        except (TypeError, KeyError, ValueError) as err:
            detail = f"no {err}" if isinstance(err, KeyError) else str(err)
            raise ValueError(f"{self.name}: 'config' is not a network configuration ({detail})") from None

    def network(self) -> SpikingNet:
        """The :class:`SpikingNet` of ``config`` with the weights of ``model``, on the CPU, in eval mode."""
        from models.network import SpikingNet

        cfg = self.network_config()
        try:
            net = SpikingNet(cfg)
        except (TypeError, KeyError, ValueError, AssertionError) as err:
            raise ValueError(f"{self.name}: 'config' is not a network configuration ({err})") from None
        problem = _weights_mismatch(net.state_dict(), self.model)
        if not problem:
            try:
                net.load_state_dict(self.model, strict=True)
            except (RuntimeError, TypeError, AttributeError) as err:
                problem = " ".join(str(err).split())[:300]
        if problem:
            raise ValueError(f"{self.name}: weights do not match the network config: {problem}")
        return net.eval()

    def info(self) -> dict[str, Any]:
        """What ``asasnn eval`` / ``analyze`` read: config, data, train_config, metrics, command,
        machines, path."""
        return {
            "config": self.config,
            "data": self.data,
            "train_config": self.train_config,
            "metrics": self.metrics,
            "command": self.command,
            "machines": self.machines,
            "path": self.name,
        }


# ---- files ---------------------------------------------------------------------------------------
def checkpoint_file(path: str | Path, resume: bool = False) -> Path:
    """``path`` itself, or for a run directory its ``best.pt`` (else ``last.pt``); ``last.pt`` to resume."""
    path = Path(path)
    if not path.is_dir():
        return path
    names = ("last.pt",) if resume else CHECKPOINT_FILES
    return next((path / n for n in names if (path / n).is_file()), path / names[0])


def save_checkpoint(path: str | Path, checkpoint: Checkpoint | Mapping[str, Any]) -> Path:
    """Write ``checkpoint`` to ``path`` atomically (a temporary file, then a rename); returns ``path``."""
    path = Path(path)
    ck = checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint.from_dict(checkpoint, path)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(ck.to_dict(), tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, resume: bool = False) -> Checkpoint:
    """Read and check a checkpoint file (or run directory, see :func:`checkpoint_file`).

    ``resume``: a run directory means its ``last.pt`` and the training state must be there. Any
    failure is a ``ValueError`` that names the file; the weights are checked against the config.
    """
    return _load(path, resume)[1]


def load_network(path: str | Path) -> tuple[SpikingNet, Checkpoint]:
    """``(network in eval mode, checkpoint)`` from a checkpoint file or run directory."""
    return _load(path, resume=False)


def _load(path: str | Path, resume: bool) -> tuple[SpikingNet, Checkpoint]:
    path = checkpoint_file(path, resume)
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint file")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 (whatever the file is, the caller gets one ValueError)
        raise ValueError(f"{path}: not a readable checkpoint ({_reason(err)})") from None
    ck = Checkpoint.from_dict(raw, path)
    net = ck.network()  # the weights fit the config
    if resume and not ck.resumable:
        lacking = [k for k in RESUME_KEYS if getattr(ck, k) is None]
        raise ValueError(f"{path}: holds no training state to resume (lacks {lacking})")
    return net, ck


def _reason(err: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in a line."""
    text = str(err)
    if isinstance(err, pickle.UnpicklingError) and "weights only load failed" in text.lower():
        found = re.search(r"(GLOBAL [\w.]+|Unsupported operand \d+)", text, re.IGNORECASE)
        what = f": {found.group(1)}" if found else ""
        return f"it holds objects other than tensors, numbers, strings, lists and dicts{what}; not loaded"
    first = next((line for line in text.splitlines() if line.strip()), "").split(". ")[0][:200]
    kind = type(err).__name__ if type(err).__module__ == "builtins" else f"{type(err).__module__}.{type(err).__name__}"
    return f"damaged, truncated or not written by torch.save; {kind}{': ' + first if first else ''}"


def _weights_mismatch(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> str:
    """The missing, unexpected and misshapen entries of a state_dict (a few of each), or ``""``."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        f"{k} {list(given[k].shape)} != {list(expected[k].shape)}"
        for k in expected
        if k in given and given[k].shape != expected[k].shape
    ]
    parts = []
    for what, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if names:
            more = f", ... ({len(names)} in all)" if len(names) > 3 else ""
            parts.append(f"{what}: {', '.join(names[:3])}{more}")
    return "; ".join(parts)


# ---- checkpoints and bundles ---------------------------------------------------------------------
def load_model(path: str | Path, arithmetic: str | None = None) -> tuple[Any, dict[str, Any]]:
    """``(network in eval mode, checkpoint-like dict with config, data, train_config, metrics, command)``.

    Accepts a checkpoint file, a run directory (``best.pt``, else ``last.pt``) or a bundle directory
    (``models.runtime.bundle.load_bundle``). ``arithmetic``: ``"exact"`` (a bundle's exact network;
    for a checkpoint the exact form an export would give it) or ``"float32"`` (the weights as
    trained); default exact for a bundle, float32 for a checkpoint. The dict's ``arithmetic`` says.
    """
    path = Path(path)
    if path.is_dir() and not any((path / n).exists() for n in CHECKPOINT_FILES):
        from models.runtime.bundle import load_bundle  # a bundle directory

        return _from_bundle(load_bundle(path, check_graph=False), path, arithmetic or "exact")
    net, ck = load_network(path)
    info = ck.info()
    if arithmetic == "exact":
        from models.runtime.exact import exact_network, exact_spec

        return exact_network(net, exact_spec(net)), info | {"arithmetic": "exact"}
    return net, info | {"arithmetic": "float32"}


def _from_bundle(bundle: Any, path: Path, arithmetic: str) -> tuple[Any, dict[str, Any]]:
    """A bundle's exact (or float32) network and its card's checkpoint-style description."""
    card = bundle.card.to_dict()
    info = {k: card.get(k) for k in ("config", "data", "train_config", "metrics", "command")}
    info["machines"] = card.get("trained_on")
    net = bundle.exact if arithmetic == "exact" else bundle.net.eval()
    return net, info | {"path": str(path), "arithmetic": arithmetic}


__all__ = [
    "Checkpoint",
    "DataInfo",
    "Metrics",
    "checkpoint_file",
    "load_checkpoint",
    "load_model",
    "load_network",
    "save_checkpoint",
]
