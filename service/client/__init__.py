"""Client side of the service: a Python API (``service.client.api``), event sources and ``asasnn stream``."""

from service.client.api import (
    Reconnect,
    ServiceError,
    StreamSession,
    classify,
    classify_batch,
    stream_async,
    stream_events,
)
from service.client.sources import Source, open_source

__all__ = [
    "Reconnect",
    "ServiceError",
    "Source",
    "StreamSession",
    "classify",
    "classify_batch",
    "open_source",
    "stream_async",
    "stream_events",
]
