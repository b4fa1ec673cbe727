"""Pydantic messages: the JSON side of protocol v1 (docs/protocol.md) and the REST responses.

Client messages are validated strictly (unknown fields are an error, so a typo is reported instead of
silently ignored). Server messages on the WebSocket are typed dicts (one per timestep, so they skip
validation), all of them built in service/messages.py; their shapes are documented in
docs/protocol.md.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from models.events.types import MAX_T_US

PROTOCOL_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SensorSpec(_Strict):
    width: int = Field(ge=1, le=65535)
    height: int = Field(ge=1, le=65535)


class ReadoutOptions(_Strict):
    """How per-step network outputs become a label. ``horizon``: mean output over the last
    ``horizon`` steps (default: the model's training window T). ``ema``: exponential moving average
    with weight ``alpha`` on the newest step."""

    mode: Literal["horizon", "ema"] = "horizon"
    horizon: int | None = Field(None, ge=1, le=100_000)
    alpha: float | None = Field(None, gt=0, le=1)


class OutputOptions(_Strict):
    top_k: int = Field(3, ge=1, le=1000)
    probabilities: bool = False  # the full probability vector in every prediction
    layer_rates: bool = True


class StartMessage(_Strict):
    type: Literal["start"]
    version: StrictInt = PROTOCOL_VERSION
    model: str | None = None
    sensor: SensorSpec | None = None  # default: the model card's sensor
    dt_us: int | None = Field(None, ge=100, le=10_000_000)  # default: the model card's dt
    ds: int | None = Field(None, ge=1, le=1024)  # default: the model card's ds
    t_start_us: int | None = Field(None, ge=0, le=MAX_T_US)  # grid origin; default: the first event's time
    readout: ReadoutOptions = Field(default_factory=ReadoutOptions)
    output: OutputOptions = Field(default_factory=OutputOptions)
    # continue from a snapshot, sent as the next (binary) message (docs/protocol.md, "Snapshots")
    resume: bool = False


class ResetMessage(_Strict):
    type: Literal["reset"]


class FlushMessage(_Strict):
    type: Literal["flush"]


class AdvanceMessage(_Strict):
    type: Literal["advance"]
    t_us: int = Field(ge=0, le=MAX_T_US)


class StopMessage(_Strict):
    type: Literal["stop"]


class SnapshotMessage(_Strict):
    """Ask for the session's snapshot (docs/protocol.md, "Snapshots")."""

    type: Literal["snapshot"]


ControlMessage = Annotated[
    ResetMessage | FlushMessage | AdvanceMessage | StopMessage | SnapshotMessage, Field(discriminator="type")
]
CLIENT_TYPES = ("start", "reset", "flush", "advance", "stop", "snapshot")


# ---- REST -------------------------------------------------------------------------------------------
class ModelSummary(BaseModel):
    name: str
    version: str
    default: bool
    classes: list[str]
    sensor: SensorSpec
    ds: int
    dt_us: int
    mode: str
    timesteps: int
    frame_shape: list[int]
    layers: list[str]
    backend: str
    device: str
    streaming: bool
    hop: int = 1  # window models: a fresh prediction every `hop` steps


class ModelCardPublic(ModelSummary):
    card: dict[str, Any]  # the bundle's full model card (training metrics, attention, network)


class ModelList(BaseModel):
    default: str | None
    models: list[ModelSummary]


class LabelProb(BaseModel):
    label: str
    p: float


class StepPrediction(BaseModel):
    step: int
    t_start_us: int
    t_end_us: int
    label: str
    probabilities: list[float]


class ClassifyResult(BaseModel):
    """Outcome of one recording: the same numbers the stream's ``end`` message carries."""

    filename: str | None = None
    model: str
    label: str | None  # None when the recording produced no timestep
    label_index: int | None
    probabilities: list[float]
    top_k: list[LabelProb]
    steps: int
    events: int
    duration_us: int
    skipped_steps: int  # empty timesteps left out by the gap cap
    late_events: int
    layer_rates: dict[str, float]  # spikes per neuron per timestep, per layer
    nasfr: float
    spikes: int
    sops: float
    energy_j: float
    step_predictions: list[StepPrediction] | None = None


class ClassifyBatchResult(BaseModel):
    model: str
    results: list[ClassifyResult]


class Health(BaseModel):
    status: str
    detail: dict[str, Any] = Field(default_factory=dict)


class ErrorBody(BaseModel):
    code: str  # machine-readable, e.g. "upload_too_large", "bad_request", "unauthorized"
    message: str  # what a person can do about it


class ErrorResponse(BaseModel):
    """Every REST error: ``{"detail": {"code": ..., "message": ...}}`` (service/errors.py)."""

    detail: ErrorBody
