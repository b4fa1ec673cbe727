"""Protocol v1 of ``WS /ws/infer``: binary event packets and JSON control messages (docs/protocol.md).

A binary message is a whole number of 13-byte event records, packed little-endian, in this order::

    offset 0  t  int64   timestamp, microseconds (stream time)
    offset 8  x  uint16  pixel column, 0 .. width-1
    offset 10 y  uint16  pixel row, 0 .. height-1
    offset 12 p  uint8   polarity, 1 = ON (brighter), 0 = OFF

which is exactly ``models.events.EVENT_DTYPE`` (``events.tobytes()`` in numpy). No header: the
WebSocket frame delimits the packet, the version is agreed in the ``start`` message. Text messages
are JSON objects with a ``type``. Everything here is pure (bytes / str in, arrays / models out) and
raises :class:`ProtocolError` with a machine-readable code and a message a person can act on.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson
from pydantic import TypeAdapter, ValidationError

from models.events.types import EVENT_BYTES, EVENT_DTYPE, EventError
from service import messages
from service.schemas import CLIENT_TYPES, PROTOCOL_VERSION, ControlMessage, StartMessage

# close codes (RFC 6455 leaves 4000-4999 to applications; ours mirror HTTP statuses)
CLOSE_NORMAL = 1000
CLOSE_RESTART = 1012  # RFC 6455 "service restart": the replica is draining; reconnect
CLOSE_BAD_START = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_UNKNOWN_MODEL = 4404
CLOSE_IDLE = 4408
CLOSE_FORBIDDEN = 4403
CLOSE_TOO_MANY = 4429
CLOSE_INTERNAL = 4500
CLOSE_UNAVAILABLE = 4503

_control = TypeAdapter(ControlMessage)

# Every error code a metric may carry as its ``reason`` (the metrics start every series at 0, so a
# dashboard panel or alert sees the first event as an increase; docs/protocol.md lists them all).
EVENT_ERRORS = (
    "misaligned_packet",
    "packet_too_large",
    "out_of_range",
    "bad_polarity",
    "negative_time",
    "time_out_of_range",
    "unsorted",
    "time_backwards",
    "rate_limited",
    "overloaded",
)
MESSAGE_ERRORS = (*EVENT_ERRORS, "bad_json", "bad_message", "unknown_type", "already_started")
SNAPSHOT_REFUSALS = (
    "snapshot_missing",
    "snapshot_truncated",
    "snapshot_malformed",
    "snapshot_version",
    "snapshot_tampered",
    "snapshot_foreign_model",
    "snapshot_model_version",
    "snapshot_expired",
    "snapshot_mismatch",
)
SNAPSHOT_OUTCOMES = ("taken", "resumed", *SNAPSHOT_REFUSALS)
SESSION_REFUSALS = (
    "unauthorized",
    "forbidden_origin",
    "draining",
    "not_ready",
    "too_many_pending",
    "start_timeout",
    "too_many_sessions",
    "not_started",
    "bad_json",
    "bad_message",
    "unknown_type",
    "unsupported_version",
    "unknown_model",
    "model_unavailable",
    "bad_sensor",
)


class ProtocolError(Exception):
    """A client message that cannot be accepted. ``fatal`` errors end the session."""

    def __init__(self, code: str, message: str, fatal: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.fatal = fatal

    @classmethod
    def from_event_error(cls, e: EventError) -> ProtocolError:
        return cls(e.code, str(e))

    def to_message(self) -> messages.ErrorMessage:
        return messages.error(self.code, self.message, self.fatal)


def message_text(msg: dict[str, Any]) -> str:
    """A server message as JSON text. orjson takes a tenth of ``json.dumps``' time, which counts at
    one prediction per stream and timestep; numpy scalars in a message are written as numbers."""
    return orjson.dumps(msg, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def encode_packet(events: np.ndarray) -> bytes:
    """Events -> one binary message (the records, back to back)."""
    if events.dtype != EVENT_DTYPE:
        raise ValueError(f"events must have dtype {EVENT_DTYPE}, got {events.dtype}")
    return np.ascontiguousarray(events).tobytes()


def decode_packet(data: bytes, max_bytes: int) -> np.ndarray:
    """One binary message -> events (a read-only view of ``data``; no copy).

    Checks only the framing: size limit and record alignment. Field values (sensor bounds, polarity,
    time order) are checked by the binner against the session's sensor and stream time.
    """
    n = len(data)
    if n > max_bytes:
        raise ProtocolError(
            "packet_too_large",
            f"binary packet of {n} bytes ({n // EVENT_BYTES} events) exceeds the limit of {max_bytes} bytes "
            f"({max_bytes // EVENT_BYTES} events); split it into smaller packets",
        )
    whole, rest = divmod(n, EVENT_BYTES)
    if rest:
        raise ProtocolError(
            "misaligned_packet",
            f"binary packet of {n} bytes is not a whole number of {EVENT_BYTES}-byte event records "
            f"({whole} records + {rest} stray bytes); it was truncated or its records are misaligned",
        )
    return np.frombuffer(data, dtype=EVENT_DTYPE)


def _load_object(text: str) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ProtocolError("bad_json", f"text message is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_message", f"text message must be a JSON object, got {type(obj).__name__}")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("bad_message", "text message needs a string field 'type'")
    if kind not in CLIENT_TYPES:
        raise ProtocolError(
            "unknown_type", f"unknown message type {kind!r}; expected one of {list(CLIENT_TYPES)}"
        )
    return obj


def _describe(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:3]:
        loc = ".".join(str(x) for x in err["loc"] if x not in ("reset", "flush", "advance", "stop"))
        parts.append(f"{loc or 'message'}: {err['msg']}")
    return "; ".join(parts)


def parse_start(text: str) -> StartMessage:
    """The first message of a session. Errors here are fatal (there is no session to continue)."""
    try:
        obj = _load_object(text)
    except ProtocolError as e:
        raise ProtocolError(e.code, e.message, fatal=True) from None
    if obj["type"] != "start":
        raise ProtocolError(
            "not_started", f"the first message must be 'start', got {obj['type']!r}", fatal=True
        )
    version = obj.get("version", PROTOCOL_VERSION)
    if type(version) is not int or version != PROTOCOL_VERSION:  # ``true`` and ``1.0`` are not version 1
        raise ProtocolError(
            "unsupported_version",
            f"protocol version {version!r} is not supported; this server speaks version {PROTOCOL_VERSION}",
            fatal=True,
        )
    try:
        return StartMessage.model_validate(obj)
    except ValidationError as e:
        raise ProtocolError("bad_message", f"invalid start message: {_describe(e)}", fatal=True) from None


def parse_control(text: str) -> Any:
    """A text message after ``start``: reset / flush / advance / stop."""
    obj = _load_object(text)
    if obj["type"] == "start":
        raise ProtocolError("already_started", "the session has already started; send 'reset' to start over")
    try:
        return _control.validate_python(obj)
    except ValidationError as e:
        raise ProtocolError("bad_message", f"invalid {obj['type']!r} message: {_describe(e)}") from None
