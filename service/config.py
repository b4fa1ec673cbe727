"""Server settings: one pydantic-settings object, from flags, environment variables or a file.

Precedence, highest first: values passed in code (the ``asasnn serve`` flags), environment variables
(``ASASNN_*``, e.g. ``ASASNN_PORT=9000``, ``ASASNN_API_KEYS=key1,key2``), a settings file (TOML, JSON
or YAML, from ``--config`` or ``ASASNN_CONFIG``), then the defaults below. The defaults serve the
bundled model on loopback with no API key; ``environment="production"`` refuses to start without API
keys (the template's "no unsafe defaults outside development").
"""

from __future__ import annotations

import contextvars
import json
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from models.machine import usable_cores

# models/bundled: the directory that holds the bundled default model (models/bundled/default).
BUNDLED_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "bundled"

_config_file: contextvars.ContextVar[Path | None] = contextvars.ContextVar("asasnn_config_file", default=None)


class Settings(BaseSettings):
    """Everything the server can be told. Served to routes through ``deps.SettingsDep``."""

    model_config = SettingsConfigDict(env_prefix="ASASNN_", extra="forbid", validate_default=True)

    environment: Literal["development", "production"] = "development"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    log_format: Literal["text", "json"] = "text"  # one format for uvicorn's lines and the app's (service/logs.py)
    # server processes on one socket (service/workers.py): each a whole server with its own event loop,
    # engine and sessions; the cores are shared out between them (step_threads, decode_workers)
    workers: int = Field(1, ge=1, le=256)
    # uvicorn's WebSocket implementation (docs/performance.md, "Capacity", compares them)
    ws_protocol: Literal["auto", "websockets", "websockets-sansio", "wsproto"] = "auto"

    # Models
    model_dir: Path = BUNDLED_MODEL_DIR
    default_model: str | None = None  # None: "default" if present, else the first bundle by name
    device: Literal["cpu", "cuda", "auto"] = "auto"
    backend: Literal["auto", "torch", "onnx", "event"] = "auto"  # auto: onnx when installed and in the bundle
    # torch backend: run the export's inference rewrites (pool folding, fused causal ASA) in PyTorch
    torch_rewrite: bool = False
    max_batch: int = Field(64, ge=1, le=4096)  # steps per model call (one per session)
    # threads of one model call (torch intra-op, ONNX Runtime intra-op); None: all cores but one, which
    # is left to the event loop (binning, JSON, sockets): more threads than cores stall both
    step_threads: int | None = Field(None, ge=1, le=1024)

    # Security and limits
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_sessions: int = Field(64, ge=1)
    # connections that have not sent 'start' yet: a separate, smaller budget with a short timeout, so
    # idle sockets cannot hold the session slots
    max_pending_connections: int = Field(256, ge=1)
    start_timeout_s: float = Field(10.0, gt=0)
    # browser pages allowed to open /ws/infer (Origin header), e.g. "https://viewer.example.org";
    # empty: only pages served by this server; "*": any. Clients without an Origin are not affected.
    allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_packet_bytes: int = Field(4 * 1024 * 1024, ge=13)
    max_events_per_second: float = Field(5_000_000, gt=0)  # per session, token bucket
    rate_burst_s: float = Field(1.0, gt=0)  # bucket size in seconds of max_events_per_second
    idle_timeout_s: float = Field(60.0, gt=0)
    max_queue_steps: int = Field(64, ge=1)  # ready timesteps waiting per session
    max_outbox: int = Field(256, ge=1)  # messages waiting to be sent per session
    backpressure: Literal["block", "drop"] = "block"
    max_gap_steps: int = Field(32, ge=0)  # empty timesteps emitted per silence (binner gap cap)
    # SIGTERM: the longest wait for open streams to end before they are closed with 1012 (keep it well
    # under the orchestrator's grace period: Kubernetes' terminationGracePeriodSeconds is 120 here)
    drain_timeout_s: float = Field(30.0, ge=0, le=3600)
    max_upload_bytes: int = Field(64 * 1024 * 1024, ge=1)  # per recording, POST /v1/classify
    max_batch_files: int = Field(16, ge=1)
    max_recording_steps: int = Field(200_000, ge=1)
    # Session snapshots (docs/protocol.md): the HMAC key every replica shares, so that a stream can
    # resume on any of them (a Kubernetes Secret); unset, a random key per process (resumable only
    # on this process). Snapshots older than snapshot_max_age_s are refused.
    snapshot_secret: SecretStr | None = None
    snapshot_max_age_s: float = Field(3600.0, gt=0)
    max_recording_events: int = Field(10_000_000, ge=1)  # decoded events per recording
    # uploads are decoded in child processes (service/decoding.py) with these limits
    decode_timeout_s: float = Field(20.0, gt=0, le=3600)
    decode_memory_mb: int = Field(2048, ge=256)
    decode_workers: int | None = Field(None, ge=1, le=64)  # None: half the cores (1 on 2 cores)

    @field_validator("api_keys", "allowed_origins", mode="before")
    @classmethod
    def _split_keys(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.strip()
            if v.startswith("["):
                return json.loads(v)
            return [k.strip() for k in v.split(",") if k.strip()]
        return v

    @model_validator(mode="after")
    def _safe(self) -> Settings:
        if self.environment == "production" and not self.api_keys:
            raise ValueError("environment=production needs at least one API key (ASASNN_API_KEYS)")
        if any(len(k) < 8 for k in self.api_keys):
            raise ValueError("API keys must be at least 8 characters long")
        if self.snapshot_secret is not None and len(self.snapshot_secret.get_secret_value()) < 16:
            raise ValueError("snapshot_secret must be at least 16 characters long (openssl rand -hex 32)")
        return self

    @property
    def resolved_step_threads(self) -> int:
        """``step_threads``, or a worker's share of the cores but one (at least one)."""
        if self.step_threads is not None:
            return self.step_threads
        cores = usable_cores()
        return max(1, cores // self.workers - 1)

    @property
    def resolved_decode_workers(self) -> int:
        """``decode_workers``, or half of a worker's share of the cores (at least one): a decoder
        spinning on a hostile file until its timeout then leaves the other half to the streams."""
        if self.decode_workers is not None:
            return self.decode_workers
        cores = usable_cores()
        return max(1, cores // self.workers // 2)

    @property
    def ws_max_size(self) -> int:
        """Largest WebSocket message uvicorn buffers: room to reject oversize packets with a message."""
        return max(4 * self.max_packet_bytes, 1024 * 1024)

    @property
    def uvicorn_ws_options(self) -> dict[str, Any]:
        """uvicorn's WebSocket settings for this server:

        * no keepalive pings: while a session is held under backpressure the server stops reading its
          socket, so a pong would sit unread behind the queued packets and the ping would time out,
          killing a client that is doing nothing wrong (1011). Silent peers are caught by
          ``idle_timeout_s``, clients that do not read by the session's stall timeout;
        * at most 4 messages buffered per connection before TCP pushes back, so a connection holds at
          most ``4 * ws_max_size`` bytes however fast it sends;
        * no per-message compression (event packets do not compress, and it costs CPU)."""
        return {
            "ws_max_size": self.ws_max_size,
            "ws_max_queue": 4,
            "ws_ping_interval": None,
            "ws_per_message_deflate": False,
            "ws": self.ws_protocol,
        }

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = _config_file.get()
        sources = [init_settings, env_settings, dotenv_settings]
        if path is not None:
            sources.append(InitSettingsSource(settings_cls, init_kwargs=read_settings_file(path)))
        return (*sources, file_secret_settings)


def read_settings_file(path: Path) -> dict[str, Any]:
    """Read a TOML / JSON / YAML settings file into a dict (an optional ``[asasnn]`` table is unwrapped)."""
    if not path.is_file():
        raise ValueError(f"settings file {path} does not exist")
    text = path.read_text()
    suffix = path.suffix.lower()
    if suffix == ".toml":
        data = tomllib.loads(text)
    elif suffix == ".json":
        data = json.loads(text)
    elif suffix in (".yaml", ".yml"):
        data = yaml.safe_load(text) or {}
    else:
        raise ValueError(f"settings file {path}: use .toml, .json or .yaml, not {path.suffix!r}")
    if not isinstance(data, dict):
        # a file of the wrong shape is a bad value to the settings loader, hence ValueError
        raise ValueError(f"settings file {path} must hold a table of settings")  # noqa: TRY004
    if isinstance(data.get("asasnn"), dict):
        data = data["asasnn"]
    return data


def load_settings(config_file: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Build :class:`Settings`; ``overrides`` (None values ignored) beat the environment and the file."""
    path = config_file if config_file is not None else os.environ.get("ASASNN_CONFIG")
    token = _config_file.set(Path(path) if path else None)
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    finally:
        _config_file.reset(token)
