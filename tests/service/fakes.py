"""Test doubles for the step runner: a broken one (engine failure handling) and a slow one (backpressure)."""

from __future__ import annotations

import threading
import time
from typing import Any


class WrappedRunner:
    """Delegates to a real runner; ``fail_on_step`` / ``delay_s`` change what ``step`` does."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.fail_on_step = False
        self.delay_s = 0.0
        self.gate: threading.Event | None = None  # when set, step waits for the gate
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def step(self, slots, frames):
        self.calls += 1
        if self.gate is not None:
            self.gate.wait(30)
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail_on_step:
            raise RuntimeError("injected failure")
        return self._inner.step(slots, frames)
