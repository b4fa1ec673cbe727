"""What a session reports: the per-step ``prediction`` message and the running totals.

Pure functions of the step outputs (no I/O), shared by streams (``prediction`` / ``end`` messages)
and recordings (``POST /v1/classify``), so both report the same numbers the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.scheduler import StepOutput
from service.schemas import OutputOptions


def top_k(probs: np.ndarray, classes: list[str], k: int) -> list[dict[str, Any]]:
    """The ``k`` most probable classes, ties in class order."""
    return [{"label": classes[i], "p": float(probs[i])} for i in np.argsort(-probs, kind="stable")[:k]]


def prediction_message(
    r: StepOutput,
    probs: np.ndarray,
    label: int,
    classes: list[str],
    layers: tuple[str, ...],
    neurons: np.ndarray,
    opts: OutputOptions,
    dt_us: int,
) -> dict[str, Any]:
    """The ``prediction`` message of one timestep (docs/protocol.md section 7)."""
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
    return msg


@dataclass
class Totals:
    """Running sums of one session since its start or last reset."""

    layers: tuple[str, ...]
    neurons: np.ndarray  # [L] neurons per layer
    steps: int = 0
    counts: np.ndarray = field(init=False)
    sops: float = 0.0
    energy_j: float = 0.0
    probabilities: np.ndarray | None = None
    label: int | None = None

    def __post_init__(self) -> None:
        self.counts = np.zeros(len(self.layers), dtype=np.float64)

    def add(self, r: StepOutput, probs: np.ndarray, label: int) -> None:
        self.steps += 1
        self.counts += r.counts
        self.sops += r.sops
        self.energy_j += r.energy_j
        self.probabilities, self.label = probs, label

    def summary(self, classes: list[str], k: int) -> dict[str, Any]:
        """Label, probabilities (of the last step's readout), firing rates, SOPs, energy."""
        steps = max(self.steps, 1)
        probs = self.probabilities
        return {
            "label": None if self.label is None else classes[self.label],
            "label_index": self.label,
            "probabilities": [] if probs is None else probs.tolist(),
            "top_k": [] if probs is None else top_k(probs, classes, k),
            "steps": self.steps,
            "layer_rates": dict(zip(self.layers, (self.counts / self.neurons / steps).tolist())),
            "nasfr": float(self.counts.sum() / self.neurons.sum() / steps),
            "spikes": int(self.counts.sum()),
            "sops": self.sops,
            "energy_j": self.energy_j,
        }
