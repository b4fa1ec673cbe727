"""Compiled kernels: the one way this project builds numba functions, and runs them on several threads.

``kernel`` is ``numba.njit`` with the GIL released (a kernel runs beside the service's event loop)
and numpy's error model (division by zero gives inf, as in numpy), the compiled code cached on disk
(next to the module, or in ``NUMBA_CACHE_DIR`` / the user's cache directory). Where no cache is
writable (a read-only installation) it compiles once per process rather than failing.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TypeVar

import numba
import numpy as np

R = TypeVar("R")

_JIT = {"nogil": True, "error_model": "numpy"}


def kernel(fn):
    try:
        return numba.njit(cache=True, **_JIT)(fn)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        return numba.njit(cache=False, **_JIT)(fn)


def in_parts(call: Callable[[int, int, int], R], n: int, parts: int, pool: Executor | None) -> list[R]:
    """``call(lo, hi, lane)`` over ``n`` items cut into ``parts`` contiguous parts run at once: part 0
    on the caller's thread, the others on ``pool`` (GIL-free kernels run truly in parallel); the
    results in order. Callers cut only where items are independent, so the cut changes no value."""
    parts = max(1, min(parts, n))
    if parts == 1 or pool is None:
        return [call(0, n, 0)]
    (a0, b0), *others = itertools.pairwise(np.linspace(0, n, parts + 1).round().astype(int).tolist())
    pending = [pool.submit(call, a, b, lane) for lane, (a, b) in enumerate(others, start=1)]
    first = call(a0, b0, 0)
    return [first, *(f.result() for f in pending)]


__all__ = ["in_parts", "kernel"]
