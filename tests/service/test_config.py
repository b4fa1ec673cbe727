"""Settings: defaults, environment, settings file, flags, and the production guard."""

import json

import pytest
from pydantic import ValidationError

from service.config import BUNDLED_MODEL_DIR, Settings, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    import os

    for k in list(os.environ):
        if k.startswith("ASASNN_"):
            monkeypatch.delenv(k)


def test_defaults_serve_the_bundled_model_on_loopback():
    s = load_settings()
    assert s.host == "127.0.0.1" and s.port == 8000
    assert s.model_dir == BUNDLED_MODEL_DIR and s.api_keys == []
    assert s.backpressure == "block" and s.ws_max_size >= 4 * s.max_packet_bytes


def test_precedence_flags_over_env_over_file(tmp_path, monkeypatch):
    f = tmp_path / "asasnn.toml"
    f.write_text('port = 7000\nmax_sessions = 5\nhost = "0.0.0.0"\n')
    monkeypatch.setenv("ASASNN_PORT", "7500")
    s = load_settings(f, max_sessions=None)
    assert (s.port, s.max_sessions, s.host) == (7500, 5, "0.0.0.0")
    s = load_settings(f, port=9000)
    assert s.port == 9000


def test_api_keys_from_env_comma_list_or_json(monkeypatch):
    monkeypatch.setenv("ASASNN_API_KEYS", "key-one-1, key-two-2")
    assert load_settings().api_keys == ["key-one-1", "key-two-2"]
    monkeypatch.setenv("ASASNN_API_KEYS", json.dumps(["key-three-3"]))
    assert load_settings().api_keys == ["key-three-3"]


def test_config_file_from_env_in_yaml_and_json(tmp_path, monkeypatch):
    y = tmp_path / "s.yaml"
    y.write_text("asasnn:\n  idle_timeout_s: 5\n")
    monkeypatch.setenv("ASASNN_CONFIG", str(y))
    assert load_settings().idle_timeout_s == 5
    j = tmp_path / "s.json"
    j.write_text('{"backend": "onnx"}')
    assert load_settings(j).backend == "onnx"


def test_bad_files_and_values_are_refused(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")
    bad = tmp_path / "s.ini"
    bad.write_text("x")
    with pytest.raises(ValueError, match=".toml, .json or .yaml"):
        load_settings(bad)
    typo = tmp_path / "t.toml"
    typo.write_text("prot = 1\n")
    with pytest.raises(ValidationError, match="prot"):
        load_settings(typo)
    with pytest.raises(ValidationError):
        Settings(port=70000)
    with pytest.raises(ValidationError):
        Settings(backpressure="maybe")


def test_production_needs_api_keys():
    with pytest.raises(ValidationError, match="needs at least one API key"):
        Settings(environment="production")
    assert Settings(environment="production", api_keys=["a-long-key"]).api_keys == ["a-long-key"]
    with pytest.raises(ValidationError, match="at least 8"):
        Settings(api_keys=["short"])


def test_snapshot_secret_is_long_enough_and_never_printed():
    with pytest.raises(ValidationError, match="at least 16"):
        Settings(snapshot_secret="short-secret")
    s = Settings(snapshot_secret="0123456789abcdef0123")
    assert s.snapshot_secret is not None and s.snapshot_secret.get_secret_value() == "0123456789abcdef0123"
    assert "0123456789abcdef" not in repr(s)
