"""What an operator sees: one log format with session lifecycle and request ids, the backend choice
logged with its reason, metrics from the first event, the classify query parameter."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from models.events import make_events
from service.client.api import StreamSession
from service.client.wait import free_port, wait_ready
from service.logs import JsonFormatter, TextFormatter, configure_logging, fields
from tests.service.helpers import DT_US, events

REPO = Path(__file__).resolve().parents[2]


def _record(msg: str, **kw) -> logging.LogRecord:
    r = logging.LogRecord("asasnn.ws", logging.INFO, __file__, 1, msg, (), None)
    r.fields = kw
    return r


def test_text_and_json_formats_carry_the_structured_fields():
    text = TextFormatter().format(_record("session opened", session="abc", model="default"))
    assert text.endswith("INFO asasnn.ws: session opened session=abc model=default")
    assert text[:4].isdigit() and "T" in text.split()[0] and text.split()[0].endswith("Z")  # ISO-8601 UTC
    obj = json.loads(JsonFormatter().format(_record("session ended", steps=3, reason="stop")))
    assert obj["message"] == "session ended" and obj["steps"] == 3 and obj["reason"] == "stop"
    assert obj["level"] == "INFO" and obj["logger"] == "asasnn.ws" and obj["ts"].endswith("Z")


def test_configure_logging_routes_uvicorn_and_the_app_to_one_handler(capfd):
    try:
        configure_logging("info", "json")
        logging.getLogger("uvicorn.error").info("uvicorn says")
        logging.getLogger("asasnn.engine").info("app says", extra=fields(model="m"))
        lines = [json.loads(x) for x in capfd.readouterr().err.strip().splitlines()]
        assert [x["logger"] for x in lines] == ["uvicorn.error", "asasnn.engine"]
        assert lines[1]["model"] == "m"
    finally:
        configure_logging("warning", "text")


def test_serve_logs_json_with_lifecycle_backend_and_request_ids(tmp_path, model_dir):
    """A real ``asasnn serve --log-format json``: every stderr line is JSON; the backend choice, a
    session's open and end, a refused session and REST requests with their ids are there."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASASNN_")} | {
        "ASASNN_MODEL_DIR": str(model_dir),
        "ASASNN_DEVICE": "cpu",
    }
    log = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "asasnn.cli", "serve", "--port", str(port), "--log-format", "json"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", 120)
        r = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"X-Request-ID": "req-42"})
        assert r.headers["x-request-id"] == "req-42"
        assert len(httpx.get(f"http://127.0.0.1:{port}/healthz").headers["x-request-id"]) == 32  # made up

        async def stream():
            async with await StreamSession.connect(f"ws://127.0.0.1:{port}/ws/infer") as s:
                await s.send_events(events(0, 20, dt=DT_US // 5))
                await s.stop()
            from websockets.asyncio.client import connect

            async with connect(f"ws://127.0.0.1:{port}/ws/infer") as ws:
                await ws.send('{"type": "start", "model": "nope"}')
                await ws.recv()

        import asyncio

        asyncio.run(stream())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "session ended" not in log.read_text():
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(30)
    lines = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]  # every line is JSON
    by_msg = {x["message"]: x for x in lines}
    assert any(x["logger"].startswith("uvicorn") for x in lines)  # uvicorn's lines in the same format
    backend = next(x for x in lines if x["message"].startswith("model default: backend"))
    assert "auto:" in backend["message"] and "on cpu" in backend["message"]
    opened, ended = by_msg["session opened"], by_msg["session ended"]
    assert opened["session"] == ended["session"] and opened["model"] == "default"
    assert ended["reason"] == "stop" and ended["steps"] >= 1 and ended["events"] == 20 and ended["duration_s"] >= 0
    assert by_msg["session refused"]["reason"] == "unknown_model"
    access = [x for x in lines if x["logger"] == "asasnn.access"]
    assert any(x["request_id"] == "req-42" and x["status"] == 200 and x["message"] == "GET /v1/models 200"
               for x in access)


def test_request_ids_are_returned_and_replaced_when_malformed(server):
    assert httpx.get(server.http + "/healthz", headers={"X-Request-ID": "abc-1"}).headers["x-request-id"] == "abc-1"
    made = httpx.get(server.http + "/healthz", headers={"X-Request-ID": "bad id, spaces"}).headers["x-request-id"]
    assert made != "bad id, spaces" and len(made) == 32


def test_classify_takes_the_model_as_a_query_parameter_too(server):
    wire = make_events([0, 1000, 60_000], [1, 2, 3], [1, 2, 3], [1, 0, 1]).tobytes()
    r = httpx.post(server.http + "/v1/classify?model=other", files={"file": ("a.evt", wire)})
    assert r.status_code == 200 and r.json()["model"] == "other"
    r = httpx.post(server.http + "/v1/classify?model=other", data={"model": "default"}, files={"file": ("a.evt", wire)})
    assert r.status_code == 422 and r.json()["detail"]["code"] == "bad_option"


def test_every_reason_and_class_series_exists_from_the_start(server):
    """Counters split by a label start at 0, so increase() sees the first event."""
    m = server.metric
    assert m("asasnn_sessions_rejected_total", reason="unknown_model") >= 0
    text = httpx.get(server.http + "/metrics").text
    for series in (
        'asasnn_sessions_rejected_total{reason="too_many_sessions"}',
        'asasnn_events_rejected_total{model="default",reason="out_of_range"}',
        'asasnn_messages_rejected_total{model="default",reason="bad_json"}',
        'asasnn_events_dropped_total{model="default",reason="late"}',
        'asasnn_backpressure_total{action="drop",model="default"}',
        'asasnn_energy_first_layer_joules_total{model="default"}',
        'asasnn_energy_synaptic_joules_total{model="default"}',
        "process_resident_memory_bytes",
        "python_gc_collections_total",
    ):
        assert series in text, series
    assert 'asasnn_predictions_total{label=' in text


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_log_format_setting(fmt, monkeypatch):
    from service.config import Settings

    monkeypatch.setenv("ASASNN_LOG_FORMAT", fmt)
    assert Settings().log_format == fmt
