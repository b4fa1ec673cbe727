"""Test helpers: a small bundle from an untrained ``tiny`` network, real uvicorn servers on loopback."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
import uvicorn

from models.events import SensorSize, make_events
from service.config import Settings
from service.main import create_app
from service.server import DrainingServer

SENSOR = SensorSize(128, 128)
DT_US = 50_000


def make_bundle(directory: Path, seed: int, name: str, attention: str = "none") -> None:
    """An untrained tiny network, BatchNorm calibrated so every layer spikes, saved as a bundle
    (weights and card only: the tests run the PyTorch backend, exporting ONNX takes most of a minute).
    ``attention="asa"`` gives a window-mode model (the paper's ASA)."""
    from models.attention import AttentionConfig
    from models.config import preset
    from models.network import SpikingNet
    from models.runtime.bundle import save_bundle
    from models.runtime.calibrate import calibrate_untrained
    from models.runtime.export import build_card
    from models.synthetic import CLASSES

    torch.manual_seed(seed)
    net = SpikingNet(preset("tiny", num_classes=len(CLASSES), attention=AttentionConfig(kind=attention)))
    g = torch.Generator().manual_seed(seed)
    frames = (torch.rand(16, 4, 2, 32, 32, generator=g) < 0.08).float() * 2
    calibrate_untrained(net, frames)
    card = build_card(
        net, classes=CLASSES, sensor=(SENSOR.width, SENSOR.height), ds=4, dt_us=DT_US, name=name
    )
    save_bundle(directory, card, net, None)


def settings_for(model_dir: Path, **kw: Any) -> Settings:
    base: dict[str, Any] = {"model_dir": model_dir, "device": "cpu", "backend": "torch", "idle_timeout_s": 20}
    base.update(kw)
    return Settings(**base)


class LiveServer:
    """A real uvicorn server on a free loopback port, in a thread."""

    def __init__(self, settings: Settings, loader: Any = None, port: int = 0) -> None:
        self.settings = settings
        self.app = create_app(settings, loader=loader)
        cfg = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            **settings.uvicorn_ws_options,
            lifespan="on",
        )
        self.server = DrainingServer(cfg, self.app.state.service)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:  # noqa: PYI034 - final class
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        port = self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.http = f"http://127.0.0.1:{port}"
        self.ws = f"ws://127.0.0.1:{port}/ws/infer"
        while httpx.get(self.http + "/readyz").status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("server not ready: " + httpx.get(self.http + "/readyz").text)
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def begin_drain(self) -> None:
        """What SIGTERM does to ``asasnn serve`` (signals only reach the main thread, not this server's)."""
        loop = self.server._loop
        assert loop is not None
        loop.call_soon_threadsafe(self.server.begin_drain)

    @property
    def state(self):
        return self.app.state.service

    def metric(self, name: str, **labels: str) -> float:
        v = self.state.metrics.registry.get_sample_value(name, labels)
        return 0.0 if v is None else v


@contextlib.contextmanager
def live_server(model_dir: Path, loader: Any = None, port: int = 0, **kw: Any) -> Iterator[LiveServer]:
    """A server with settings ``kw`` on top of the test defaults (on ``port``; 0: a free one)."""
    with LiveServer(settings_for(model_dir, **kw), loader=loader, port=port) as s:
        yield s


def wrapping_loader(store: dict[str, Any]) -> Any:
    """A loader that wraps each runner in :class:`tests.service.fakes.WrappedRunner`, kept in ``store``."""
    from tests.service.fakes import WrappedRunner

    def load(path: Path, **kw: Any) -> Any:
        from models.runtime import load_runner

        inner = load_runner(path, **kw)
        store[path.name] = WrappedRunner(inner)
        return store[path.name]

    return load


def events(t0: int, n: int, dt: int = 1000, x: int = 10, y: int = 10) -> np.ndarray:
    """``n`` events every ``dt`` us from ``t0`` at one pixel, alternating polarity."""
    return make_events(np.arange(n) * dt + t0, np.full(n, x), np.full(n, y), np.arange(n) % 2)
