"""Fixtures of the runtime tests: bundles exported once per session (each export takes seconds)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from models.runtime.bundle import Bundle
from models.runtime.export import random_frames

# Under --import-mode=importlib no test folder is on sys.path; the tests of this folder share
# runtime_support.py (a unique top-level name), so its folder goes on the path here.
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

from runtime_support import export


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Bundle]:
    """Lazily exported bundles by key (see SPECS)."""

    class Lazy(dict):
        def __missing__(self, key: str) -> Bundle:
            self[key] = export(key, tmp_path_factory.mktemp("bundle") / key)
            return self[key]

    return Lazy()


@pytest.fixture(scope="session")
def gesture3_paper(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """The paper-size gesture3 (causal ASA, 2x32x32, T=60), exported once for the exactness tests
    (verified on 12 steps: the full 60 would take several times longer)."""
    return export("gesture3-paper", tmp_path_factory.mktemp("g3") / "b", steps=12)


@pytest.fixture
def frames_for():
    """``frames_for(bundle, steps, streams, seed)`` -> Poisson event frames ``[T, B, 2, H, W]``."""

    def make(bundle: Bundle, steps: int, streams: int, seed: int = 0) -> np.ndarray:
        return random_frames(steps, streams, bundle.card.frame_shape, seed=seed)

    return make
