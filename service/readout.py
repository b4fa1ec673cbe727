"""Per-step network outputs -> class probabilities (provisional; replaced by models.runtime.Readout)."""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from service.schemas import ReadoutOptions


class _Readout:
    def __init__(self, mode: str, k: int, horizon: int, alpha: float) -> None:
        self.mode, self.k, self.alpha = mode, k, alpha
        self._win: deque[np.ndarray] = deque(maxlen=horizon)
        self._sum = np.zeros(k, np.float64)
        self._ema: np.ndarray | None = None

    def update(self, out: np.ndarray) -> np.ndarray:
        out = np.asarray(out, dtype=np.float64)
        if self.mode == "ema":
            self._ema = out.copy() if self._ema is None else self._ema + self.alpha * (out - self._ema)
            score = self._ema
        else:
            if len(self._win) == self._win.maxlen:
                self._sum -= self._win[0]
            self._win.append(out)
            self._sum += out
            score = self._sum / len(self._win)
        total = score.sum()
        return score / total if total > 0 else np.full(self.k, 1.0 / self.k)


def make_readout(opts: ReadoutOptions, runner: Any) -> _Readout:
    k = len(runner.card.classes)
    horizon = opts.horizon or int(runner.card.timesteps)
    return _Readout(opts.mode, k, horizon, opts.alpha or 0.2)
