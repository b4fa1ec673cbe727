"""Every server message of ``WS /ws/infer``, typed and built in one place (docs/protocol.md, section 7).

The messages are ``TypedDict``s, not pydantic models: one ``prediction`` per stream and timestep is
built on the hot path, and a plain dict is what the encoder (:func:`service.protocol.message_text`)
takes. The client's messages, which are validated, are pydantic models in service/schemas.py.
Read-only watchers (``WS /ws/watch``) get their own messages (service/watch.py).
"""

from __future__ import annotations

import time
from typing import Any, Literal, NotRequired, TypedDict

import numpy as np

from service.scheduler import StepOutput
from service.schemas import PROTOCOL_VERSION, OutputOptions

WarningCode = Literal["late_events", "time_gap", "backpressure", "draining"]


class ErrorMessage(TypedDict):
    type: Literal["error"]
    code: str
    message: str
    fatal: bool


class WarningMessage(TypedDict):
    type: Literal["warning"]
    code: WarningCode
    message: str
    skipped_steps: NotRequired[int]  # time_gap
    timeout_s: NotRequired[float]  # draining


class ReadyMessage(TypedDict):
    type: Literal["ready"]
    version: int
    session: str
    resumed: dict[str, int] | None
    model: dict[str, Any]
    binning: dict[str, Any]
    readout: dict[str, Any]
    output: dict[str, Any]
    limits: dict[str, Any]


class PredictionMessage(TypedDict):
    type: Literal["prediction"]
    step: int
    t_start_us: int
    t_end_us: int
    label: str
    label_index: int
    top_k: list[dict[str, Any]]
    probabilities: NotRequired[list[float]]
    layer_rates: NotRequired[dict[str, float]]
    nasfr: float
    spikes: int
    sops: float
    energy_j: float
    evaluated: bool
    batch_size: int
    latency_ms: dict[str, float]


class ResetMessage(TypedDict):
    type: Literal["reset"]
    dropped_steps: int


class SnapshotMessage(TypedDict):
    """Announces the binary message that follows: the snapshot itself."""

    type: Literal["snapshot"]
    step: int
    messages: int
    bytes: int


class EndMessage(TypedDict, total=False):
    type: Literal["end"]
    session: str
    # plus the session's totals (service/results.py Totals.summary)


ServerMessage = (
    ErrorMessage | WarningMessage | ReadyMessage | PredictionMessage | ResetMessage | SnapshotMessage | EndMessage
)


def error(code: str, message: str, fatal: bool = False) -> ErrorMessage:
    return {"type": "error", "code": code, "message": message, "fatal": fatal}


def warning(code: WarningCode, message: str, **extra: Any) -> WarningMessage:
    msg: WarningMessage = {"type": "warning", "code": code, "message": message}
    msg.update(extra)  # type: ignore[typeddict-item]
    return msg


def ready(
    session: str,
    resumed: dict[str, int] | None,
    *,
    model: dict[str, Any],
    binning: dict[str, Any],
    readout: dict[str, Any],
    output: dict[str, Any],
    limits: dict[str, Any],
) -> ReadyMessage:
    return {
        "type": "ready",
        "version": PROTOCOL_VERSION,
        "session": session,
        "resumed": resumed,
        "model": model,
        "binning": binning,
        "readout": readout,
        "output": output,
        "limits": limits,
    }


def reset(dropped_steps: int) -> ResetMessage:
    return {"type": "reset", "dropped_steps": dropped_steps}


def snapshot(step: int, messages: int, n_bytes: int) -> SnapshotMessage:
    return {"type": "snapshot", "step": step, "messages": messages, "bytes": n_bytes}


def end(session: str, summary: dict[str, Any]) -> EndMessage:
    return {"type": "end", "session": session, **summary}  # type: ignore[typeddict-item]


def top_k(probs: np.ndarray, classes: list[str], k: int) -> list[dict[str, Any]]:
    """The ``k`` most probable classes, ties in class order."""
    return [{"label": classes[i], "p": float(probs[i])} for i in np.argsort(-probs, kind="stable")[:k]]


def prediction(
    r: StepOutput,
    probs: np.ndarray,
    label: int,
    classes: list[str],
    layers: tuple[str, ...],
    neurons: np.ndarray,
    opts: OutputOptions,
    dt_us: int,
) -> PredictionMessage:
    """The ``prediction`` message of one timestep."""
    req = r.request
    msg: dict[str, Any] = {
        "type": "prediction",
        "step": req.index,
        "t_start_us": req.t_start_us,
        "t_end_us": req.t_start_us + dt_us,
        "label": classes[label],
        "label_index": label,
        "top_k": top_k(probs, classes, opts.top_k),
    }
    if opts.probabilities:
        msg["probabilities"] = probs.tolist()
    if opts.layer_rates:
        msg["layer_rates"] = dict(zip(layers, (r.counts / neurons).tolist()))
    msg.update(
        {
            "nasfr": float(r.counts.sum() / neurons.sum()),
            "spikes": int(r.counts.sum()),
            "sops": r.sops,
            "energy_j": r.energy_j,
            "evaluated": r.evaluated,
            "batch_size": r.batch_size,
            "latency_ms": {
                "queue": max(r.started_at - req.arrived_at, 0.0) * 1e3,
                "step": r.step_s * 1e3,
                "total": (time.perf_counter() - req.arrived_at) * 1e3,
            },
        }
    )
    return msg  # type: ignore[return-value]  # built in the documented key order
