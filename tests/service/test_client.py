"""The client: event sources (file, synthetic, camera and DV network wiring), pacing, ``asasnn stream``."""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from models.events import EVENT_DTYPE, write_numpy
from service.client import cli
from service.client.api import http_base, ws_url
from service.client.sources import Pacer, open_source, parse_synthetic, split_packets, split_random
from service.client.wait import free_port
from tests.service.helpers import SENSOR, events


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    return p.parse_args(list(argv))


def test_split_packets_and_random_split_keep_every_event(gesture):
    parts = list(split_packets(gesture, 10_000))
    assert np.array_equal(np.concatenate(parts), gesture)
    assert all(int(p["t"][-1]) - int(p["t"][0]) < 10_000 for p in parts)
    parts = list(split_random(gesture, np.random.default_rng(0), 50))
    assert np.array_equal(np.concatenate(parts), gesture) and max(p.size for p in parts) <= 50


def test_pacer():
    p = Pacer(None)
    assert p.delay(events(0, 2, dt=1_000_000)) == 0
    p = Pacer(10.0)
    assert p.delay(events(0, 1)) == 0
    d = p.delay(events(1_000_000, 1))  # 1 s of stream time at 10x: due 0.1 s after the first
    assert 0.05 < d <= 0.1


def test_url_helpers():
    assert ws_url("http://h:1") == "ws://h:1/ws/infer" and ws_url("ws://h:1/ws/infer") == "ws://h:1/ws/infer"
    assert http_base("ws://h:1/ws/infer?token=x") == "http://h:1" and http_base("wss://h") == "https://h"


def test_synthetic_source_specs():
    assert parse_synthetic("synthetic") is None and parse_synthetic("synthetic:3 gestures") == 3
    with pytest.raises(ValueError, match="synthetic:N"):
        parse_synthetic("synthetic:many")
    src = open_source("synthetic:2", realtime=False, packet_us=50_000)
    packets = list(src.packets)
    assert len(packets) == 2 * 30 and src.sensor == SENSOR and not src.live
    assert all(ev.dtype == EVENT_DTYPE for ev, _ in packets)
    assert {label for _, label in packets} <= set(__import__("models.synthetic").synthetic.CLASSES)
    t = np.concatenate([ev["t"] for ev, _ in packets])
    assert np.all(np.diff(t) >= 0)


def test_file_source(tmp_path, gesture):
    p = tmp_path / "g.npz"
    write_numpy(p, gesture, SENSOR)
    src = open_source(str(p), packet_us=20_000)
    assert src.sensor == SENSOR and src.total_events == gesture.size
    assert np.array_equal(np.concatenate([ev for ev, _ in src.packets]), gesture)
    w = tmp_path / "g.evt"
    w.write_bytes(gesture.tobytes())
    assert sum(ev.size for ev, _ in open_source(str(w)).packets) == gesture.size
    with pytest.raises(ValueError, match="camera"):
        open_source(str(tmp_path / "missing.aedat4"))
    with pytest.raises(ValueError, match="tcp://HOST:PORT"):
        open_source("tcp://nohost")


class FakeBatch:
    def __init__(self, ev):
        self.ev = ev

    def __len__(self):
        return self.ev.size

    def numpy(self):
        out = np.zeros(self.ev.size, [("timestamp", "<i8"), ("x", "<i2"), ("y", "<i2"), ("polarity", "u1")])
        out["timestamp"], out["x"], out["y"], out["polarity"] = (
            self.ev["t"],
            self.ev["x"],
            self.ev["y"],
            self.ev["p"],
        )
        return out


class FakeCamera:
    """What dv-processing's camera reader offers, fed from a recording."""

    def __init__(self, ev, packets=30):
        self.batches = [FakeBatch(p) for p in np.array_split(ev, packets)] + [None]

    def isEventStreamAvailable(self):
        return True

    def getEventResolution(self):
        return (128, 128)

    def isRunning(self):
        return bool(self.batches)

    def getNextEventBatch(self):
        return self.batches.pop(0)


def test_camera_source_wiring(monkeypatch, gesture, server, capsys):
    opened = []

    def fake_open(name):
        opened.append(name)
        return FakeCamera(gesture[:20_000])

    monkeypatch.setattr("service.client.sources.open_camera", fake_open)
    src = open_source("camera:DVXplorer_DXA00093")
    assert opened == ["DVXplorer_DXA00093"] and src.live and src.sensor == SENSOR
    assert np.array_equal(np.concatenate([ev for ev, _ in src.packets]), gesture[:20_000])
    # and through `asasnn stream camera --url ...` to a live server
    rc = cli.run(parse("camera", "--url", server.ws, "--every", "1"))
    out = capsys.readouterr().out
    assert rc == 0 and opened == ["DVXplorer_DXA00093", None]
    assert "events 20000" in out and "final label" in out and "step      0" in out


# The dv-processing NetworkWriter runs in a child process: destroying a writer blocks while a client
# is connected (and a reader blocks once its writer is gone), so the test ends the writer with a kill
# instead of a destructor that could hang the test process.
_DV_WRITER = """
import sys, time
import numpy as np
import dv_processing as dv
port, path = int(sys.argv[1]), sys.argv[2]
part = np.load(path)
writer = dv.io.NetworkWriter("127.0.0.1", port, dv.io.Stream.EventStream(0, "events", "TEST", (128, 128)))
print("ready", flush=True)
sys.stdin.readline()
for chunk in np.array_split(part, 5):
    store = dv.EventStore()
    for t, x, y, p in chunk.tolist():
        store.push_back(t, x, y, bool(p))
    writer.writeEvents(store)
print("written", flush=True)
time.sleep(120)
"""


def test_dv_network_source(gesture, tmp_path):
    port = free_port()
    part = gesture[:5000]
    np.save(tmp_path / "part.npy", part)
    proc = subprocess.Popen(
        [sys.executable, "-c", _DV_WRITER, str(port), str(tmp_path / "part.npy")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        src = open_source(f"tcp://127.0.0.1:{port}")
        assert src.sensor == SENSOR and src.live
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "written"
        got, deadline = [], time.monotonic() + 10
        it = iter(src.packets)
        while sum(g.size for g in got) < part.size and time.monotonic() < deadline:
            got.append(next(it)[0])
        assert np.array_equal(np.concatenate(got), part)
        src.close()
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_stream_cli_synthetic_and_file(server, tmp_path, gesture, capsys):
    rc = cli.run(parse("synthetic:1", "--url", server.ws, "--fast", "--packet-ms", "20"))
    out = capsys.readouterr().out
    assert rc == 0
    assert "steps 30" in out and "per-step accuracy vs. true label" in out and "NASFR" in out
    p = tmp_path / "g.npz"
    write_numpy(p, gesture, SENSOR)
    rc = cli.run(parse(str(p), "--url", server.ws, "--speed", "50", "--quiet"))
    out = capsys.readouterr().out
    assert rc == 0 and "steps 30" in out and f"events {gesture.size}" in out and "step      0" not in out


def test_stream_cli_errors(tmp_path, capsys, server):
    assert cli.run(parse(str(tmp_path / "nope.npz"), "--url", server.ws)) == 2
    assert "cannot open source" in capsys.readouterr().err
    port = free_port()
    assert cli.run(parse("synthetic:1", "--fast", "--url", f"ws://127.0.0.1:{port}/ws/infer")) == 1
    assert "cannot start a session" in capsys.readouterr().err
    assert cli.run(parse("synthetic:1", "--fast", "--url", server.ws, "--model", "nope")) == 1
    assert "unknown model" in capsys.readouterr().err


def test_max_seconds_stops_an_endless_source(server, capsys):
    rc = cli.run(parse("synthetic", "--url", server.ws, "--speed", "4", "--max-seconds", "1", "--quiet"))
    assert rc == 0  # it returned at all: the source is endless
    assert "final label" in capsys.readouterr().out
    assert threading.active_count() < 50
