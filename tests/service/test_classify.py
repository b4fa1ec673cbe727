"""``POST /v1/classify``: every upload format gives the same result; bad uploads get clear errors."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from models.events import write_aedat4, write_numpy
from service.client.api import ServiceError, classify, classify_batch
from tests.service.helpers import SENSOR, events, live_server

KEYS = ("label", "probabilities", "steps", "events", "spikes", "sops", "energy_j", "nasfr", "layer_rates")


@pytest.fixture(scope="module")
def clip(gesture):
    return gesture[gesture["t"] < gesture["t"][0] + 500_000]  # 10 steps


def test_all_formats_agree(server, clip, tmp_path):
    ref = classify(server.http, clip)  # wire format
    assert ref["steps"] == 10 and ref["events"] == clip.size and ref["label"] in ref["top_k"][0]["label"]
    assert ref["filename"] == "recording.evt" and ref["model"] == "default"
    assert len(ref["probabilities"]) == 10 and np.isclose(sum(ref["probabilities"]), 1)
    assert (
        ref["energy_j"] > 0
        and ref["sops"] > 0
        and set(ref["layer_rates"]) == {"conv1", "conv2", "conv3", "fc1", "fc2"}
    )
    paths = [tmp_path / "r.npz", tmp_path / "r.npy", tmp_path / "r.aedat4"]
    write_numpy(paths[0], clip, SENSOR)
    write_numpy(paths[1], clip)
    write_aedat4(paths[2], clip, SENSOR)
    for p in paths:
        r = classify(server.http, p)
        assert {k: r[k] for k in KEYS} == {k: ref[k] for k in KEYS}, p.suffix
    # a misleading name does not matter: the content is recognised
    renamed = tmp_path / "recording.dat"
    renamed.write_bytes(paths[0].read_bytes())
    assert classify(server.http, renamed)["probabilities"] == ref["probabilities"]


def test_other_model_and_options(server, clip):
    a = classify(server.http, clip)
    b = classify(server.http, clip, model="other")
    assert b["model"] == "other" and b["probabilities"] != a["probabilities"]
    ema = classify(server.http, clip, readout_mode="ema", readout_alpha=0.5, top_k=2)
    assert len(ema["top_k"]) == 2 and ema["steps"] == a["steps"]
    finer = classify(server.http, clip, dt_us=25_000)
    assert finer["steps"] == 20


def test_batch_equals_single(server, clip, gesture):
    second = gesture[gesture["t"] >= gesture["t"][0] + 700_000]
    out = classify_batch(server.http, [clip, second], include_steps=True)
    singles = [classify(server.http, r, include_steps=True) for r in (clip, second)]
    assert out["model"] == "default" and len(out["results"]) == 2
    for got, want in zip(out["results"], singles):
        assert got["step_predictions"] == want["step_predictions"]
        assert {k: got[k] for k in KEYS} == {k: want[k] for k in KEYS}


@pytest.mark.parametrize(
    "name, body, status, code, words",
    [
        ("notes.txt", b"hello, these are not events\n", 415, "unknown_format", "not an event recording"),
        ("fake.npy", b"\x93NUMPY garbage", 422, "bad_file", "fake.npy"),
        ("fake.aedat4", b"#!AER-DAT4.0\r\nnothing else", 422, "bad_file", "fake.aedat4"),
        ("short.evt", bytes(27), 422, "misaligned_packet", "27 bytes"),
        ("off.evt", events(0, 3, x=500).tobytes(), 422, "out_of_range", "x=500"),
        (
            "back.evt",
            np.concatenate([events(100, 2), events(0, 2)]).tobytes(),
            422,
            "unsorted",
            "go backwards",
        ),
    ],
)
def test_bad_uploads(server, name, body, status, code, words):
    r = httpx.post(server.http + "/v1/classify", files={"file": (name, body)})
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert detail["code"] == code and words in detail["message"]
    assert httpx.get(server.http + "/readyz").status_code == 200


def test_unknown_model_and_bad_options(server, clip):
    with pytest.raises(ServiceError) as e:
        classify(server.http, clip, model="../default")
    assert e.value.close_code == 404 and e.value.code == "unknown_model"
    r = httpx.post(
        server.http + "/v1/classify", files={"file": ("a.evt", clip.tobytes())}, data={"sensor_width": "64"}
    )
    assert r.status_code == 422 and "sensor_height" in r.text
    r = httpx.post(
        server.http + "/v1/classify",
        files={"file": ("a.evt", clip.tobytes())},
        data={"sensor_width": "640", "sensor_height": "480"},
    )
    assert r.status_code == 422 and r.json()["detail"]["code"] == "bad_sensor"
    r = httpx.post(server.http + "/v1/classify", data={"model": "default"})
    assert r.status_code == 422  # no file


def test_size_limits(model_dir, clip):
    with live_server(
        model_dir,
        max_upload_bytes=100_000,
        max_batch_files=2,
        max_recording_steps=5,
        api_keys=["k-123456789"],
    ) as srv:
        h = {"X-API-Key": "k-123456789"}
        big = np.zeros(10_000, clip.dtype).tobytes()  # 130 kB
        r = httpx.post(srv.http + "/v1/classify", files={"file": ("big.evt", big)}, headers=h)
        assert r.status_code == 413 and r.json()["detail"]["code"] == "upload_too_large"
        assert "exceeds the limit" in r.json()["detail"]["message"]
        long = events(0, 20, dt=50_000)  # 20 timesteps
        r = httpx.post(srv.http + "/v1/classify", files={"file": ("c.evt", long.tobytes())}, headers=h)
        assert r.status_code == 413 and r.json()["detail"]["code"] == "recording_too_long"
        assert "20 timesteps of 50000 us exceed the limit of 5" in r.json()["detail"]["message"]
        files = [("files", (f"{i}.evt", clip[:10].tobytes())) for i in range(3)]
        r = httpx.post(srv.http + "/v1/classify/batch", files=files, headers=h)
        assert r.status_code == 413 and r.json()["detail"]["code"] == "too_many_files"

        # chunked upload without Content-Length is cut off as it streams
        def gen():
            yield b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="big.evt"\r\n\r\n'
            for _ in range(20):
                yield bytes(13 * 1000)
            yield b"\r\n--xyz--\r\n"

        r = httpx.post(
            srv.http + "/v1/classify",
            content=gen(),
            headers={**h, "content-type": "multipart/form-data; boundary=xyz"},
        )
        assert r.status_code == 413 and r.json()["detail"]["code"] == "upload_too_large"
        # API key on REST
        r = httpx.post(srv.http + "/v1/classify", files={"file": ("c.evt", clip[:10].tobytes())})
        assert r.status_code == 401 and r.json()["detail"]["code"] == "unauthorized"
        r = httpx.post(
            srv.http + "/v1/classify",
            files={"file": ("c.evt", clip[:10].tobytes())},
            headers={"X-API-Key": "nope"},
        )
        assert r.status_code == 401 and r.json()["detail"]["message"] == "invalid API key"
        r = httpx.post(
            srv.http + "/v1/classify",
            files={"file": ("c.evt", clip[:10].tobytes())},
            headers={"Authorization": "Bearer k-123456789"},
        )
        assert r.status_code == 200
        assert httpx.get(srv.http + "/v1/models").status_code == 401
        assert httpx.get(srv.http + "/healthz").status_code == 200  # probes need no key
