"""Model cards, health, readiness, OpenAPI, and the model directory's path safety."""

from __future__ import annotations

import os
from types import SimpleNamespace

import httpx
import pytest

from service.registry import ModelNotFound, ModelRegistry, NoModels


def test_health_and_readiness(server):
    assert httpx.get(server.http + "/healthz").json() == {"status": "ok", "detail": {"engine_running": True}}
    r = httpx.get(server.http + "/readyz").json()
    assert r["status"] == "ready" and r["detail"]["default"] == "default"


def test_model_list_and_cards(server):
    r = httpx.get(server.http + "/v1/models").json()
    assert r["default"] == "default"
    names = [m["name"] for m in r["models"]]
    assert names == ["asa-window", "default", "other"]
    d = r["models"][1]
    assert r["models"][0]["mode"] == "window" and r["models"][0]["hop"] == 4
    assert d["default"] and d["streaming"] and d["mode"] == "step"
    assert d["frame_shape"] == [2, 32, 32] and d["sensor"] == {"width": 128, "height": 128}
    assert d["layers"] == ["conv1", "conv2", "conv3", "fc1", "fc2"] and len(d["classes"]) == 10
    card = httpx.get(server.http + "/v1/models/other").json()
    assert card["name"] == "other" and not card["default"]
    assert card["card"]["name"] == "tiny-other" and card["card"]["config"]["name"] == "tiny"


@pytest.mark.parametrize("name", ["nope", "..", "%2e%2e", "default%2F..%2Fother", "..%2F..%2Fetc%2Fpasswd"])
def test_unknown_or_escaping_model_names_are_404(server, name):
    r = httpx.get(server.http + "/v1/models/" + name)
    assert r.status_code == 404
    # every error has the documented shape; ".." may resolve to no route at all (not_found)
    assert r.json()["detail"]["code"] in ("unknown_model", "not_found")


def test_openapi_documents_the_routes(server):
    spec = httpx.get(server.http + "/openapi.json").json()
    for path in (
        "/v1/classify",
        "/v1/classify/batch",
        "/v1/models",
        "/v1/models/{name}",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in spec["paths"], path
    assert httpx.get(server.http + "/docs").status_code == 200


def test_registry_scan_refuses_symlinks_out_of_the_directory(model_dir, tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    os.symlink(model_dir / "default", root / "default")  # a bundle that lives elsewhere
    (root / "inside").symlink_to(root / "default", target_is_directory=True)
    with pytest.raises(NoModels, match="no model bundle found"):
        ModelRegistry.scan(root)
    os.unlink(root / "inside")
    os.unlink(root / "default")
    (root / "real").mkdir()
    for f in (model_dir / "default").iterdir():
        (root / "real" / f.name).write_bytes(f.read_bytes())
    (root / "alias").symlink_to(root / "real", target_is_directory=True)  # inside: fine
    reg = ModelRegistry.scan(root)
    assert reg.names == ["alias", "real"] and reg.default_name == "alias"
    with pytest.raises(ModelNotFound):
        reg.get("../real")
    assert ModelRegistry.scan(root / "real").names == ["real"]  # the directory itself is one bundle


def test_registry_default_and_missing(model_dir, tmp_path):
    assert ModelRegistry.scan(model_dir, default="other").get(None).name == "other"
    with pytest.raises(NoModels, match="default model 'x' not found"):
        ModelRegistry.scan(model_dir, default="x")
    with pytest.raises(NoModels, match="asasnn export"):
        ModelRegistry.scan(tmp_path / "nothing-here")


def test_registry_torch_rewrite_reaches_the_runner(model_dir):
    def modules(reg: ModelRegistry) -> set[str]:
        reg.load_all(threads=1)
        return {type(m).__name__ for m in reg.entries["default"].runner.net.modules()}

    plain = modules(ModelRegistry.scan(model_dir, backend="torch", device="cpu"))
    rewritten = modules(ModelRegistry.scan(model_dir, backend="torch", device="cpu", torch_rewrite=True))
    assert "AvgPool2d" in plain and "AvgPool2d" not in rewritten  # pools folded into the convolutions

    calls: list[dict] = []

    def loader(path, backend, device, **kw):
        calls.append({"backend": backend, **kw})
        return SimpleNamespace(device=device, providers=[])  # what the registry reads of a runner

    ModelRegistry.scan(model_dir, backend="torch", torch_rewrite=True).load_all(loader)
    ModelRegistry.scan(model_dir, backend="torch").load_all(loader)
    step = [c for c in calls if "rewrite" in c]
    assert len(step) == len(calls) // 2 and all(c["rewrite"] is True for c in step)


def test_registry_event_backend_serves_step_bundles_and_leaves_window_ones_to_auto(model_dir):
    reg = ModelRegistry.scan(model_dir, backend="event", device="cpu")
    reg.load_all(threads=1)
    backends = {name: (e.backend, type(e.runner).__name__) for name, e in reg.entries.items()}
    assert backends["default"] == ("event", "EventStepRunner")
    assert backends["other"] == ("event", "EventStepRunner")
    assert backends["asa-window"][1] == "WindowRunner"  # it needs the whole window: auto's choice
    assert backends["asa-window"][0] in ("onnx", "torch")
