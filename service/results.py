"""What a session reports at its end: the running totals of its steps.

Pure arithmetic on the step outputs (no I/O), shared by streams (the ``end`` message) and recordings
(``POST /v1/classify``), so both report the same numbers the same way; the per-step ``prediction``
message is built in service/messages.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.messages import top_k
from service.scheduler import StepOutput


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
