"""Compiled kernels: the one way this project builds numba functions.

``kernel`` is ``numba.njit`` with the GIL released (a kernel runs beside the service's event loop)
and numpy's error model (division by zero gives inf, as in numpy), the compiled code cached on disk
(next to the module, or in ``NUMBA_CACHE_DIR`` / the user's cache directory). Where no cache is
writable (a read-only installation) it compiles once per process rather than failing.
"""

from __future__ import annotations

import numba

_JIT = {"nogil": True, "error_model": "numpy"}


def kernel(fn):
    try:
        return numba.njit(cache=True, **_JIT)(fn)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        return numba.njit(cache=False, **_JIT)(fn)


__all__ = ["kernel"]
