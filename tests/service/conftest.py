"""Fixtures of the service tests: the model bundles, a synthetic gesture, a shared live server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.service.helpers import LiveServer, make_bundle, settings_for


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """Three bundles: ``default`` and ``other`` (step mode, different weights) and ``asa-window``
    (the paper's window ASA), served side by side."""
    root = tmp_path_factory.mktemp("models")
    make_bundle(root / "default", 0, "tiny-default")
    make_bundle(root / "other", 1, "tiny-other")
    make_bundle(root / "asa-window", 2, "tiny-asa", attention="asa")
    return root


@pytest.fixture(scope="session")
def gesture() -> np.ndarray:
    """One synthetic gesture (1.5 s, ~tens of thousands of events)."""
    from models.synthetic import SyntheticConfig, generate, sample_list

    cfg = SyntheticConfig()
    return generate(sample_list(cfg, "test")[3], cfg)


@pytest.fixture(scope="module")
def server(model_dir) -> Iterator[LiveServer]:
    """A shared server with default settings (tests that need other settings start their own)."""
    with LiveServer(settings_for(model_dir)) as s:
        yield s
