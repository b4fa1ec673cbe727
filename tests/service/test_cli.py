"""``asasnn serve``: clear failures, and a real start from the command line with no other set-up."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx

from asasnn.cli import main
from service.client.wait import free_port


def test_serve_without_a_model_says_how_to_get_one(tmp_path, capsys):
    assert main(["serve", "--model-dir", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "no model bundle found" in err and "asasnn export" in err


def test_serve_refuses_bad_settings(model_dir, capsys):
    assert main(["serve", "--model-dir", str(model_dir), "--port", "99999"]) == 2
    assert "bad settings" in capsys.readouterr().err
    assert main(["serve", "--model-dir", str(model_dir), "--environment", "production"]) == 2
    assert "needs at least one API key" in capsys.readouterr().err
    assert main(["serve", "--model-dir", str(model_dir), "--model", "nope"]) == 2
    assert "default model 'nope' not found" in capsys.readouterr().err


def test_serve_starts_from_the_command_line(model_dir, tmp_path):
    port = free_port()
    cfg = tmp_path / "serve.toml"
    cfg.write_text(f"port = {port}\nmax_sessions = 3\n")
    env = {**os.environ, "ASASNN_API_KEYS": "env-key-12345", "ASASNN_BACKEND": "torch"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "asasnn",
            "serve",
            "--config",
            str(cfg),
            "--model-dir",
            str(model_dir),
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.2)
        assert httpx.get(url + "/v1/models").status_code == 401
        r = httpx.get(url + "/v1/models", headers={"X-API-Key": "env-key-12345"}).json()
        assert r["default"] == "default" and r["models"][0]["backend"] == "torch"
        assert httpx.get(url + "/readyz").json()["detail"]["max_sessions"] == 3
    finally:
        proc.terminate()
        proc.wait(10)
