"""Model bundles: a directory holding a model card, safetensors weights and a verified ONNX graph.

Layout (docs/bundle.md)::

    card.json            ModelCard: what the model is, what data it expects, how well it did
    weights.safetensors  the network's state_dict (BatchNorm unfolded); never a pickle
    step.onnx            one timestep, every piece of state as explicit inputs/outputs  (mode "step")
    window.onnx          a whole window [T, B, 2, H, W] -> output                       (mode "window")

:func:`load_bundle` validates everything it reads and raises :class:`BundleError` naming the file at
fault: a missing directory or file, JSON that does not parse, a card that does not fit the schema,
weights that are not safetensors or do not fit the network the card describes, an ONNX file that does
not parse, does not check, or does not have the inputs and outputs the card implies.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from models.config import NetworkConfig
from models.network import SpikingNet
from models.runtime.exact import ExactArithmetic, ExactRangeError, exact_network

CARD_FILE = "card.json"
WEIGHTS_FILE = "weights.safetensors"
ONNX_FILES = {"step": "step.onnx", "window": "window.onnx"}
FORMAT = "asasnn-bundle"
FORMAT_VERSION = 2  # 2: exact arithmetic (card section `arithmetic`), equality verification

Mode = Literal["step", "window"]


class BundleError(ValueError):
    """A bundle that cannot be used; the message names the file and what is wrong with it."""

    def __init__(self, path: Path | str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = Path(path)


class Sensor(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = Field(gt=0, le=65535)
    height: int = Field(gt=0, le=65535)


class Metrics(BaseModel):
    """Quality figures and the data they were measured on (free extra keys are kept)."""

    model_config = ConfigDict(extra="allow")
    accuracy: float | None = None  # 0..1
    nasfr: float | None = None  # network average spike firing rate
    data: str | None = None  # what they were measured on, e.g. "synthetic test split, 10 clips/recording"


class Verification(BaseModel):
    """What the export check found: the ONNX graph against the exact PyTorch network, compared
    value for value (models/runtime/verify.py)."""

    model_config = ConfigDict(extra="forbid")
    passed: bool  # no value of any output differed
    compared: dict[str, int]  # values compared per output (out, counts, each state, each layer's spikes)
    mismatches: dict[str, int]  # values that differed per output
    first_mismatch: str | None = None  # "<output> at step t of <frames>"
    steps: int
    streams: int
    frames: list[str]  # the frame sets used ("random", "synthetic ...", "real")
    layer_rates: list[float]  # firing rate per layer in the check (shows the check was not vacuous)


class OnnxInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    opset: int
    inputs: list[str]
    outputs: list[str]
    batch_dim: str = "batch"
    bn_folded: bool = True


class ModelCard(BaseModel):
    """The bundle's ``card.json``. ``config`` is :meth:`NetworkConfig.to_dict`."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["asasnn-bundle"] = FORMAT
    format_version: Literal[2] = FORMAT_VERSION
    name: str = Field(min_length=1)
    version: str = "0.1.0"
    created: str = Field(
        default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    )
    mode: Mode
    timesteps: int = Field(gt=0)  # T of the window (window mode) / of training (step mode)
    hop: int = Field(default=1, gt=0)  # window mode: evaluate every `hop` steps
    config: dict[str, Any]
    classes: list[str] = Field(min_length=1)
    sensor: Sensor
    ds: int = Field(ge=1)
    dt_us: int = Field(gt=0)
    dataset: str | None = None
    metrics: Metrics = Field(default_factory=Metrics)
    command: str | None = None  # the training command
    train_config: dict[str, Any] | None = None
    trained_on: list[str] = Field(default_factory=list)  # the machines that trained it (models.machine)
    arithmetic: ExactArithmetic | None = None  # the exact form's constants (docs/exact.md); set by the export
    onnx: OnnxInfo | None = None
    verification: Verification | None = None
    software: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        cfg = self.network_config  # raises ValueError on a config that does not parse
        if len(self.classes) != cfg.num_classes:
            raise ValueError(f"{len(self.classes)} class names for a network with {cfg.num_classes} outputs")
        if self.mode == "step" and not cfg.stepwise:
            raise ValueError(
                f"mode 'step' for attention {cfg.attention.kind!r}, which needs the whole window"
            )
        if self.mode == "window" and self.timesteps != cfg.timesteps:
            raise ValueError(
                f"window of {self.timesteps} timesteps for a network built for T={cfg.timesteps}"
            )
        frame = (-(-self.sensor.height // self.ds), -(-self.sensor.width // self.ds))
        if frame != tuple(cfg.input_size):
            raise ValueError(
                f"a {self.sensor.width}x{self.sensor.height} sensor with ds={self.ds} gives frames of "
                f"{frame[0]}x{frame[1]}, the network takes {cfg.input_size[0]}x{cfg.input_size[1]}"
            )
        return self

    @property
    def network_config(self) -> NetworkConfig:
        try:
            return NetworkConfig.from_dict(self.config)
        except (TypeError, KeyError, ValueError) as err:
            raise ValueError(f"config is not a network configuration: {err}") from err

    @property
    def attention(self) -> str:
        return str(self.config.get("attention", {}).get("kind", "none"))

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        h, w = self.config["input_size"]
        return (int(self.config.get("in_channels", 2)), int(h), int(w))

    def data(self) -> dict[str, Any]:
        """The checkpoint form of the data description (see training/cli/export.py)."""
        return {
            "dataset": self.dataset,
            "classes": list(self.classes),
            "sensor": [self.sensor.width, self.sensor.height],
            "ds": self.ds,
            "dt_us": self.dt_us,
            "timesteps": self.timesteps,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the card plus ``data`` in the checkpoint form."""
        return self.model_dump(mode="json") | {"data": self.data()}


@dataclass
class Bundle:
    """A loaded bundle: its card, the network with its weights (eval mode, CPU), the network's exact
    form under the card's arithmetic (what every runner computes) and its files."""

    path: Path
    card: ModelCard
    net: SpikingNet
    exact: SpikingNet

    @property
    def onnx_path(self) -> Path:
        return self.path / ONNX_FILES[self.card.mode]

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_FILE


def expected_io(net: SpikingNet, mode: Mode) -> tuple[list[str], list[str]]:
    """Input and output names of the bundle's ONNX graph."""
    if mode == "window":
        return ["frames"], ["out", "counts"]
    names = net.state_names()
    return ["frames", *names], ["out", "counts", *(f"{n}.next" for n in names)]


def software_versions() -> dict[str, str]:
    import numpy
    import onnx

    from asasnn import __version__

    out = {
        "asasnn": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "numpy": numpy.__version__,
    }
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:  # pragma: no cover - the runtime is optional for writing weights
        pass
    return out


def save_bundle(directory: Path | str, card: ModelCard, net: SpikingNet, onnx_bytes: bytes | None) -> Path:
    """Write card, weights and (if given) the ONNX graph into ``directory`` (created if missing).

    :func:`models.runtime.export.export_bundle` is the normal way in: it verifies the graph first and
    writes through a temporary directory, so a failed export leaves nothing behind.
    """
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}
    save_file(tensors, str(d / WEIGHTS_FILE), metadata={"format": "pt", "bundle": FORMAT})
    if onnx_bytes is not None:
        (d / ONNX_FILES[card.mode]).write_bytes(onnx_bytes)
    (d / CARD_FILE).write_text(card.model_dump_json(indent=2) + "\n")
    return d


def read_card(directory: Path | str) -> ModelCard:
    """Parse and validate ``card.json`` alone."""
    d = Path(directory)
    if not d.is_dir():
        raise BundleError(d, "bundle directory does not exist" if not d.exists() else "not a directory")
    p = d / CARD_FILE
    if not p.is_file():
        raise BundleError(p, "model card missing")
    try:
        raw = json.loads(p.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(p, f"not valid JSON ({err})") from err
    if not isinstance(raw, dict):
        raise BundleError(p, f"model card must be a JSON object, got {type(raw).__name__}")
    if raw.get("format") not in (None, FORMAT) or raw.get("format_version") not in (None, FORMAT_VERSION):
        hint = (
            "; a version-1 bundle (float arithmetic) becomes a version-2 one with `asasnn export OLD -o NEW`"
            if raw.get("format_version") == 1
            else ""
        )
        raise BundleError(
            p, f"unsupported bundle format {raw.get('format')!r} v{raw.get('format_version')!r}{hint}"
        )
    try:
        return ModelCard.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'card'}: {e['msg']}" for e in err.errors()[:5]
        )
        raise BundleError(p, f"model card does not fit the schema: {problems}") from None


def load_weights(path: Path, net: SpikingNet) -> None:
    """Load safetensors weights into ``net`` (strict); :class:`BundleError` on any mismatch."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise BundleError(path, "weights file missing")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise BundleError(path, f"not a readable safetensors file ({err})") from err
    try:
        net.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:400]
        raise BundleError(path, f"weights do not match the network in the card: {detail}") from None


def check_onnx(path: Path, net: SpikingNet, mode: Mode) -> None:
    """Parse, check and compare the graph's inputs/outputs with the network's."""
    import onnx

    if not path.is_file():
        raise BundleError(path, "ONNX graph missing")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as err:  # DecodeError, ValidationError, ... all mean "not a usable graph"
        raise BundleError(path, f"not a valid ONNX model ({type(err).__name__}: {str(err)[:200]})") from err
    ins, outs = expected_io(net, mode)
    got_in = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    got_out = [o.name for o in model.graph.output]
    if got_in != ins or got_out != outs:
        raise BundleError(path, f"graph has inputs {got_in} and outputs {got_out}, expected {ins} and {outs}")
    dims = model.graph.input[0].type.tensor_type.shape.dim
    frame, want = [d.dim_value for d in dims][-3:], [net.cfg.in_channels, *net.cfg.input_size]
    if frame != want:
        raise BundleError(path, f"graph takes frames of shape {frame}, the network {want}")


def load_for_export(directory: Path | str) -> tuple[ModelCard, SpikingNet]:
    """A bundle's card and float network for re-export, format 1 (float arithmetic) included; the
    card's ``onnx``, ``verification`` and ``arithmetic`` are dropped: the export writes them anew."""
    d = Path(directory)
    p = d / CARD_FILE
    try:
        raw = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(p, f"not a readable model card ({err})") from err
    if not isinstance(raw, dict) or raw.get("format") not in (None, FORMAT):
        raise BundleError(p, "not an asasnn bundle card")
    fresh = {k: v for k, v in raw.items() if k not in ("onnx", "verification", "arithmetic", "data")}
    try:
        card = ModelCard.model_validate(fresh | {"format_version": FORMAT_VERSION})
    except ValidationError as err:
        raise BundleError(p, f"model card does not fit the schema: {err.errors()[0]['msg']}") from None
    net = SpikingNet(card.network_config)
    load_weights(d / WEIGHTS_FILE, net)
    return card, net.eval()


def load_bundle(directory: Path | str, check_graph: bool = True) -> Bundle:
    """Read and validate a bundle directory. ``check_graph=False`` skips the ONNX file (torch-only use)."""
    d = Path(directory)
    card = read_card(d)
    net = SpikingNet(card.network_config)
    load_weights(d / WEIGHTS_FILE, net)
    net.eval()
    if card.arithmetic is None:
        raise BundleError(d / CARD_FILE, "card has no `arithmetic` section (write bundles with `asasnn export`)")
    try:
        exact = exact_network(net, card.arithmetic)
    except ExactRangeError as err:
        raise BundleError(d / CARD_FILE, f"arithmetic does not fit the weights: {err}") from None
    if check_graph:
        check_onnx(d / ONNX_FILES[card.mode], net, card.mode)
    return Bundle(d, card, net, exact)


__all__ = [
    "CARD_FILE",
    "ONNX_FILES",
    "WEIGHTS_FILE",
    "Bundle",
    "BundleError",
    "Metrics",
    "ModelCard",
    "OnnxInfo",
    "Sensor",
    "Verification",
    "expected_io",
    "load_bundle",
    "load_for_export",
    "read_card",
    "save_bundle",
    "software_versions",
]
