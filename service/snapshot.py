"""Session snapshots: a stream's complete state as one binary message (docs/protocol.md, "Snapshots").

Layout, little-endian::

    magic    4 bytes   b"ASNS"
    version  uint16    FORMAT_VERSION
    length   uint64    the snapshot's total size in bytes (a cut-short copy is told from a forged one)
    hlen     uint32    size of the header
    header   hlen      UTF-8 JSON: what the snapshot is bound to and the session's scalars, and a
                       table of the arrays that follow (name, dtype, shape)
    arrays   ...       each array's bytes, in the table's order (dtypes <f4, <f8 and <i8 only)
    mac      32 bytes  HMAC-SHA256 under the server secret of everything before it

No pickle: the header is JSON, the arrays raw. :func:`decode` checks, in this order, magic and
version, the length (``snapshot_truncated``), the MAC (``snapshot_tampered``, compared in constant
time, before anything else is parsed), the header and the array table (``snapshot_malformed``),
then :func:`check_binding` the model (``snapshot_foreign_model``, ``snapshot_model_version``) and
the age (``snapshot_expired``). Every refusal is a :class:`SnapshotError` with its code.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

MAGIC = b"ASNS"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<4sHQI")  # magic, version, total length, header length
MAC_BYTES = 32
DTYPES = {"<f4": np.float32, "<f8": np.float64, "<i8": np.int64}
HEADER_RESERVE = 16 * 1024  # header bytes a snapshot may need beyond its arrays (the size bound)
OVERHEAD_BYTES = 4 + 2 + 8 + 4 + HEADER_RESERVE + MAC_BYTES


class SnapshotError(ValueError):
    """A snapshot that cannot be used; ``code`` says why (see the module docstring)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class Snapshot:
    header: dict[str, Any]  # JSON scalars (the array table is added by encode)
    arrays: dict[str, np.ndarray]


def encode(snap: Snapshot, secret: bytes) -> bytes:
    table, blobs = [], []
    for name, a in snap.arrays.items():
        a = np.ascontiguousarray(a)
        dtype = a.dtype.newbyteorder("<").str
        if dtype not in DTYPES:
            raise TypeError(f"array {name!r} of dtype {a.dtype} cannot go into a snapshot")
        table.append({"name": name, "dtype": dtype, "shape": list(a.shape)})
        blobs.append(a.astype(dtype, copy=False).tobytes())
    header = json.dumps({**snap.header, "arrays": table}, separators=(",", ":")).encode()
    total = _PREFIX.size + len(header) + sum(map(len, blobs)) + MAC_BYTES
    body = _PREFIX.pack(MAGIC, FORMAT_VERSION, total, len(header)) + header + b"".join(blobs)
    return body + hmac.new(secret, body, hashlib.sha256).digest()


def decode(data: bytes, secret: bytes) -> Snapshot:
    """The snapshot in ``data``, verified (see the module docstring); :class:`SnapshotError` if not."""
    if len(data) < _PREFIX.size + MAC_BYTES:
        raise SnapshotError("snapshot_truncated", f"{len(data)} bytes is too short for a snapshot")
    magic, version, total, hlen = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise SnapshotError("snapshot_malformed", "not a snapshot (no ASNS magic)")
    if version != FORMAT_VERSION:
        raise SnapshotError(
            "snapshot_version", f"snapshot format {version}; this server reads format {FORMAT_VERSION}"
        )
    if len(data) != total:
        raise SnapshotError(
            "snapshot_truncated" if len(data) < total else "snapshot_malformed",
            f"snapshot of {len(data)} bytes declares {total} bytes",
        )
    body, mac = data[:-MAC_BYTES], data[-MAC_BYTES:]
    if not hmac.compare_digest(mac, hmac.new(secret, body, hashlib.sha256).digest()):
        raise SnapshotError(
            "snapshot_tampered",
            "the snapshot's signature does not match: it was changed, or signed by a server with another secret",
        )
    try:
        header = json.loads(body[_PREFIX.size : _PREFIX.size + hlen])
        arrays, at = {}, _PREFIX.size + hlen
        for entry in header.pop("arrays"):
            dtype, shape = np.dtype(DTYPES[entry["dtype"]]), tuple(int(n) for n in entry["shape"])
            n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if n < 0 or at + n > len(body):
                raise ValueError(f"array {entry['name']!r} runs past the end")
            arrays[str(entry["name"])] = np.frombuffer(body, dtype.newbyteorder("<"), n // dtype.itemsize, at).reshape(shape).copy()
            at += n
        if at != len(body):
            raise ValueError(f"{len(body) - at} bytes after the last array")
    except (ValueError, KeyError, TypeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SnapshotError("snapshot_malformed", f"the snapshot's contents do not parse: {e}") from None
    if not isinstance(header, dict):
        raise SnapshotError("snapshot_malformed", "the snapshot's header is not a JSON object")
    return Snapshot(header, arrays)


def check_binding(snap: Snapshot, model: dict[str, str], max_age_s: float, now: float | None = None) -> None:
    """Refuse a snapshot of another model, another version of it, or an old one."""
    got = snap.header.get("model")
    if not isinstance(got, dict) or got.get("fingerprint") != model["fingerprint"]:
        name = got.get("name") if isinstance(got, dict) else None
        if name == model["name"] and got.get("version") != model["version"]:
            raise SnapshotError(
                "snapshot_model_version",
                f"snapshot of {name!r} version {got.get('version')}; this server serves version {model['version']}",
            )
        raise SnapshotError(
            "snapshot_foreign_model",
            f"snapshot of model {name!r} (other weights); this session's model is {model['name']!r} "
            f"version {model['version']}",
        )
    created = snap.header.get("created_s")
    age = (time.time() if now is None else now) - created if isinstance(created, (int, float)) else float("inf")
    if not 0 <= age <= max_age_s + 60:  # a minute of clock skew between replicas
        raise SnapshotError("snapshot_expired", f"snapshot taken {age:.0f} s ago; snapshots are kept {max_age_s:.0f} s")


def fingerprint(weights: bytes, card_json: str) -> str:
    """What a snapshot is bound to: the weights and the card's network and arithmetic sections."""
    return hashlib.sha256(weights + b"\0" + card_json.encode()).hexdigest()


__all__ = [
    "FORMAT_VERSION",
    "HEADER_RESERVE",
    "OVERHEAD_BYTES",
    "Snapshot",
    "SnapshotError",
    "check_binding",
    "decode",
    "encode",
    "fingerprint",
]
