"""DVS events: the record type, binning into frames (shared by training and serving), file I/O."""

from models.events.binner import BinnerConfig, FrameBinner, TimedFrames, encode_events
from models.events.readers import read_events, read_events_bytes, write_aedat4, write_numpy
from models.events.types import (
    EVENT_BYTES,
    EVENT_DTYPE,
    MAX_T_US,
    EventError,
    SensorSize,
    make_events,
    validate_events,
)

__all__ = [
    "EVENT_BYTES",
    "EVENT_DTYPE",
    "MAX_T_US",
    "BinnerConfig",
    "EventError",
    "FrameBinner",
    "SensorSize",
    "TimedFrames",
    "encode_events",
    "make_events",
    "read_events",
    "read_events_bytes",
    "validate_events",
    "write_aedat4",
    "write_numpy",
]
