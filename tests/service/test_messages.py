"""Every server message is built in service/messages.py, and docs/protocol.md documents each type."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from service import messages

REPO = Path(__file__).resolve().parents[2]


def test_no_server_message_is_built_outside_messages_py():
    """A ``{"type": "<server message>", ...}`` dict literal anywhere else in service/ is a second
    definition of a message shape (the watchers' own messages are pydantic models in service/watch.py)."""
    server_types = {_kind(cls) for cls in typing.get_args(messages.ServerMessage)}
    assert server_types == {"error", "warning", "ready", "prediction", "reset", "snapshot", "end"}
    kinds = "|".join(server_types)
    pattern = re.compile(rf"""["']type["']\s*:\s*["']({kinds})["']""")
    offenders = []
    for path in sorted((REPO / "service").rglob("*.py")):
        if path.name == "messages.py" or "client" in path.parts:
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_every_server_message_type_is_documented():
    text = (REPO / "docs" / "protocol.md").read_text()
    for cls in typing.get_args(messages.ServerMessage):
        kind = _kind(cls)
        assert f'"type": "{kind}"' in text or f"`{kind}`" in text, f"{kind} is not in docs/protocol.md"


def test_builders_give_their_schema():
    assert messages.error("bad_json", "x", True) == {"type": "error", "code": "bad_json", "message": "x", "fatal": True}
    w = messages.warning("time_gap", "gap", skipped_steps=3)
    assert w == {"type": "warning", "code": "time_gap", "message": "gap", "skipped_steps": 3}
    assert set(w) <= set(typing.get_type_hints(messages.WarningMessage))
    assert messages.reset(2) == {"type": "reset", "dropped_steps": 2}
    assert messages.snapshot(5, 7, 100) == {"type": "snapshot", "step": 5, "messages": 7, "bytes": 100}


def _kind(cls: type) -> str:
    (kind,) = typing.get_args(typing.get_type_hints(cls)["type"])
    return kind
