"""Running predictions from the per-step output rows of a runner.

A network's output layer emits spikes; training fits their rate, averaged over the window, to the
one-hot label (docs/training.md). A stream has no window, so :class:`Readout` keeps a running score per
class from the rows ``StepResult.out[i]`` of one stream:

* ``mode="horizon"``: the mean of the last ``horizon`` rows (all rows so far while fewer arrived).
  ``horizon = T`` reproduces the training readout once ``T`` steps have passed.
* ``mode="ema"``: ``score <- (1 - alpha) * score + alpha * row`` from zero, bias-corrected
  (divided by ``1 - (1 - alpha)^n``, so the first rows are not shrunk towards zero). The effective
  memory is about ``1 / alpha`` steps.

``probs`` is the score normalised to sum 1 (uniform while the score is all zeros: no output spike
in the memory yet), ``label`` its arg-max (lowest index on ties), ``score`` the raw running rate.
For window-mode runners feed only rows with ``evaluated`` set, or use ``horizon=1``.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import numpy as np

ReadoutMode = Literal["horizon", "ema"]


class Prediction(NamedTuple):
    probs: np.ndarray  # [K] float32, sums to 1
    label: int
    score: np.ndarray  # [K] float32, running output rate per class
    steps: int  # rows seen since the last reset


class Readout:
    """Running prediction of one stream (see the module docstring)."""

    def __init__(
        self, num_classes: int, mode: ReadoutMode = "horizon", horizon: int = 16, alpha: float = 0.1
    ) -> None:
        if mode not in ("horizon", "ema"):
            raise ValueError(f"mode must be 'horizon' or 'ema', got {mode!r}")
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.num_classes, self.mode, self.horizon, self.alpha = num_classes, mode, horizon, alpha
        self.reset()

    def reset(self) -> None:
        self._ring = np.zeros((self.horizon, self.num_classes), dtype=np.float64)
        self._sum = np.zeros(self.num_classes, dtype=np.float64)
        self._ema = np.zeros(self.num_classes, dtype=np.float64)
        self.steps = 0

    def update(self, out_row: np.ndarray) -> Prediction:
        """Take one step's output row ``[K]``; return the prediction after it."""
        row = np.asarray(out_row, dtype=np.float64).reshape(-1)
        if row.shape[0] != self.num_classes:
            raise ValueError(f"expected {self.num_classes} outputs, got {row.shape[0]}")
        if self.mode == "horizon":
            i = self.steps % self.horizon
            self._sum += row - self._ring[i]
            self._ring[i] = row
            if i == self.horizon - 1:  # re-sum now and then: no drift on endless streams
                self._sum = self._ring.sum(0)
        else:
            self._ema += self.alpha * (row - self._ema)
        self.steps += 1
        return self.prediction()

    def state_dict(self) -> dict[str, Any]:
        """The running score (step count and float64 sums), for resumable sessions."""
        return {"steps": self.steps, "ring": self._ring.copy(), "sum": self._sum.copy(), "ema": self._ema.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ring, total, ema = (np.asarray(state[k], dtype=np.float64) for k in ("ring", "sum", "ema"))
        if ring.shape != self._ring.shape or total.shape != self._sum.shape or ema.shape != self._ema.shape:
            raise ValueError(f"readout state of shape {ring.shape}, this readout keeps {self._ring.shape}")
        if type(state["steps"]) is not int or state["steps"] < 0:
            raise ValueError(f"readout steps {state['steps']!r} is not a count")
        self._ring, self._sum, self._ema, self.steps = ring.copy(), total.copy(), ema.copy(), state["steps"]

    def prediction(self) -> Prediction:
        if self.mode == "horizon":
            score = self._sum / max(1, min(self.steps, self.horizon))
        else:
            score = self._ema / (1 - (1 - self.alpha) ** self.steps) if self.steps else self._ema
        score = np.maximum(score, 0.0)
        total = score.sum()
        probs = score / total if total > 0 else np.full(self.num_classes, 1.0 / self.num_classes)
        return Prediction(
            probs.astype(np.float32), int(np.argmax(score)), score.astype(np.float32), self.steps
        )


__all__ = ["Prediction", "Readout", "ReadoutMode"]
