"""The app's long-lived objects and their start-up / shut-down (owned by the app's lifespan).

Start-up order: scan the model directory (fails fast, with a how-to-fix message, when no bundle is
there), start the engine loop, then load the bundles on the engine's worker thread in the
background; ``/readyz`` turns ready once the default model is loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.events import ingest
from models.events.binner import BinnerConfig
from models.events.types import SensorSize
from models.runtime.bundle import CARD_FILE, WEIGHTS_FILE, ModelCard
from service import messages, snapshot
from service.config import Settings
from service.decoding import DecodeLimits, Decoder
from service.engine import Engine, ModelWorker
from service.protocol import ProtocolError
from service.registry import ModelEntry, ModelRegistry
from service.scheduler import Scheduler
from service.schemas import ModelSummary, OutputOptions, ReadoutOptions, SensorSpec
from service.session import Session, SessionConfig, SessionLimits
from service.telemetry import Metrics

log = logging.getLogger("asasnn.service")


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    registry: ModelRegistry | None = None
    engine: Engine | None = None
    ready: bool = False
    load_error: str | None = None
    connections: int = 0  # WebSocket sessions (started)
    pending: int = 0  # WebSocket connections waiting for their 'start' message
    decoder: Decoder | None = None  # uploads are decoded in child processes (service/decoding.py)
    snapshot_key: bytes = b""  # the HMAC key of session snapshots (settings.snapshot_secret)
    loader: Any = None  # models.runtime.load_runner unless a test injects another
    draining: bool = False  # SIGTERM: no new streams, open ones finish or are closed with 1012
    streams: set[Session] = field(default_factory=set)  # open WebSocket sessions
    _load_task: asyncio.Task[None] | None = None
    _no_streams: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._no_streams.set()
        secret = self.settings.snapshot_secret
        self.snapshot_key = secret.get_secret_value().encode() if secret is not None else os.urandom(32)

    async def start(self) -> None:
        s = self.settings
        self.registry = ModelRegistry.scan(s.model_dir, s.default_model, s.backend, s.device, s.torch_rewrite)
        self.engine = Engine(self.metrics)
        self.engine.start()
        limits = DecodeLimits(s.decode_timeout_s, s.decode_memory_mb << 20, s.max_recording_events)
        self.decoder = Decoder(limits, s.resolved_decode_workers)
        self.decoder.warm_up()
        if s.snapshot_secret is None:
            log.warning(
                "no snapshot_secret set: session snapshots resume only on this process; give every replica "
                "the same ASASNN_SNAPSHOT_SECRET for streams to survive a restart (docs/deploy.md)"
            )
        self._load_task = asyncio.get_running_loop().create_task(self._load(), name="asasnn-load-models")

    async def _load(self) -> None:
        assert self.registry is not None and self.engine is not None
        threads = self.settings.resolved_step_threads
        try:
            await self.engine.call(set_step_threads, threads)
            await self.engine.call(ingest.warm_up)  # the packet check compiled before the first stream
            await self.engine.call(self.registry.load_all, self.loader, threads)
        except Exception as e:  # noqa: BLE001 - reported by /readyz instead of killing the app
            self.load_error = f"{type(e).__name__}: {e}"
            return
        for e in self.registry.entries.values():
            if e.runner is None:
                continue
            r = e.runner
            identity = {"name": e.name, "version": str(r.card.version), "fingerprint": model_fingerprint(e.path)}
            self.engine.add_worker(ModelWorker(e.name, r, Scheduler(self.settings.max_batch), identity=identity))
            self.metrics.register_model(
                e.name,
                str(r.card.version),
                e.backend,
                r.device,
                tuple(r.layer_names),
                tuple(int(n) for n in r.energy.neurons),
                timestep_s=int(r.card.dt_us) / 1e6,
                classes=tuple(r.card.classes),
                first_layer_j=r.energy.e_mac_j * r.energy.first_layer_macs,
            )
        default = self.registry.get(None)
        if default.runner is None:
            self.load_error = f"default model {default.name!r} failed to load: {default.error}"
            log.error(self.load_error)
            return
        self.ready = True
        log.info("serving models %s (default %s)", self.registry.names, self.registry.default_name)

    # ---- streams and the drain ---------------------------------------------------------------------
    def add_stream(self, session: Session) -> None:
        self.streams.add(session)
        self._no_streams.clear()

    def remove_stream(self, session: Session) -> None:
        self.streams.discard(session)
        if not self.streams:
            self._no_streams.set()

    async def drain(self, timeout_s: float, close_wait_s: float = 5.0) -> None:
        """Refuse new streams, warn the open ones, give them ``timeout_s`` to end by themselves, then
        end the rest (error ``draining``, close code 1012) and wait up to ``close_wait_s`` for them to
        close. See :mod:`service.server`."""
        if self.draining:
            return
        self.draining = True
        log.warning(
            "draining: %d open stream(s), closing them in %.0f s at the latest", len(self.streams), timeout_s
        )
        for s in list(self.streams):
            s.emit(
                messages.warning(
                    "draining",
                    f"this server is shutting down: the session is closed (1012) in {timeout_s:.0f} s at the latest, "
                    "after its snapshot; reconnect with it (start with resume) to continue where it stopped",
                    timeout_s=timeout_s,
                )
            )
        if self.streams:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._no_streams.wait(), timeout_s)
        if self.streams:
            log.warning("draining: closing %d stream(s) with 1012, each after its snapshot", len(self.streams))
            await asyncio.gather(*(self._snapshot_then_end(s, close_wait_s) for s in list(self.streams)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._no_streams.wait(), close_wait_s)
        log.warning("drained")

    async def _snapshot_then_end(self, s: Session, within_s: float) -> None:
        """Send the session its snapshot (so that its client resumes on another replica), then close
        it with 1012. A session busy in a message for ``within_s`` (held by backpressure) is closed
        without one: its client resumes from its own last snapshot and replays what followed."""
        try:
            async with asyncio.timeout(within_s), s.lock:
                await s.send_snapshot(self.snapshot_key)
        except (TimeoutError, ProtocolError):
            log.warning("draining: session %s closed without a snapshot (busy or ending)", s.id)
        s.end(ProtocolError("draining", "this server is shutting down; reconnect to continue", fatal=True))

    async def stop(self) -> None:
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        if self.engine is not None:
            await self.engine.stop()
        if self.decoder is not None:
            self.decoder.close()

    # ---- helpers for routes ------------------------------------------------------------------------
    def worker(self, entry: ModelEntry) -> ModelWorker:
        assert self.engine is not None
        return self.engine.workers[entry.name]

    def summary(self, entry: ModelEntry) -> ModelSummary:
        r = entry.runner
        card = r.card
        return ModelSummary(
            name=entry.name,
            version=str(card.version),
            default=entry.name == self.registry.default_name,
            classes=list(card.classes),
            sensor=SensorSpec(width=card.sensor.width, height=card.sensor.height),
            ds=int(card.ds),
            dt_us=int(card.dt_us),
            mode=str(card.mode),
            timesteps=int(card.timesteps),
            frame_shape=[int(x) for x in r.frame_shape],
            layers=list(r.layer_names),
            backend=entry.backend,
            device=r.device,
            streaming=True,
            hop=int(r.hop),
        )

    def session_config(
        self,
        entry: ModelEntry,
        *,
        sensor: SensorSpec | None = None,
        dt_us: int | None = None,
        ds: int | None = None,
        t_start_us: int | None = None,
        readout: ReadoutOptions | None = None,
        output: OutputOptions | None = None,
        live: bool = True,
    ) -> SessionConfig:
        """Binning and limits of a session on ``entry``; options default to the model card.

        Raises :class:`ProtocolError` ``bad_sensor`` when the frames would not fit the model's input.
        """
        card, s = entry.runner.card, self.settings
        sensor = sensor or SensorSpec(width=card.sensor.width, height=card.sensor.height)
        ds = ds or int(card.ds)
        bcfg = BinnerConfig(
            SensorSize(sensor.width, sensor.height),
            dt_us or int(card.dt_us),
            ds,
            "count",  # every bundle's frames are event counts (docs/bundle.md)
            s.max_gap_steps,
        )
        want = tuple(int(x) for x in entry.runner.frame_shape)
        if tuple(bcfg.frame_shape) != want:
            raise ProtocolError(
                "bad_sensor",
                f"a {sensor.width}x{sensor.height} sensor binned with ds={ds} gives frames {list(bcfg.frame_shape)}, "
                f"but model {entry.name!r} takes {list(want)} (trained on {card.sensor.width}x"
                f"{card.sensor.height}, ds={card.ds}); pick ds to match or use a model for this sensor",
                fatal=True,
            )
        if readout is not None and readout.mode == "horizon" and readout.horizon is None:
            readout = readout.model_copy(update={"horizon": int(card.timesteps)})
        n_classes = len(card.classes)
        output = output or OutputOptions()
        if output.top_k > n_classes:
            output = output.model_copy(update={"top_k": n_classes})
        limits = SessionLimits(
            max_queue_steps=s.max_queue_steps,
            max_outbox=s.max_outbox,
            backpressure=s.backpressure if live else "block",
            max_events_per_second=s.max_events_per_second if live else None,
            rate_burst_s=s.rate_burst_s,
            stall_timeout_s=s.idle_timeout_s,
        )
        return SessionConfig(bcfg, t_start_us, readout or default_readout(card), output, limits)


def set_step_threads(n: int) -> None:
    """Intra-op threads of torch for the calling thread (the engine's worker; torch keeps the setting
    per thread with OpenMP). ONNX Runtime gets its thread count when a session is made."""
    import torch

    torch.set_num_threads(n)


def model_fingerprint(bundle_dir: Path) -> str:
    """A bundle's weights and the card's network and arithmetic, hashed: what snapshots bind to."""
    card = json.loads((bundle_dir / CARD_FILE).read_text())
    binding = json.dumps({k: card.get(k) for k in ("config", "arithmetic")}, sort_keys=True)
    return snapshot.fingerprint((bundle_dir / WEIGHTS_FILE).read_bytes(), binding)


def default_readout(card: ModelCard) -> ReadoutOptions:
    return ReadoutOptions(mode="horizon", horizon=int(card.timesteps))
