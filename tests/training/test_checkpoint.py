"""training.checkpoint: the one reader and writer of checkpoints; every bad file is one ValueError
that names it, and nothing in a file runs code."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import torch

from models.attention import AttentionConfig
from models.config import preset
from models.network import SpikingNet
from training.checkpoint import (
    Checkpoint,
    checkpoint_file,
    load_checkpoint,
    load_model,
    load_network,
    save_checkpoint,
)

TRAINING = Path(__file__).resolve().parents[2] / "training"
DATA = {"dataset": "synthetic", "classes": ["a", "b", "c"], "sensor": [32, 32], "ds": 2, "dt_us": 20_000, "timesteps": 4}


def tiny(kind: str = "asa") -> SpikingNet:
    torch.manual_seed(0)
    return SpikingNet(preset("tiny", 3, AttentionConfig(kind=kind), 4, (16, 16)))


def weights_only(net: SpikingNet, **extra) -> Checkpoint:
    return Checkpoint(config=net.cfg.to_dict(), model=net.state_dict(), data=dict(DATA), **extra)  # type: ignore[arg-type]


def test_round_trip_and_network(tmp_path: Path) -> None:
    net = tiny()
    ck = weights_only(net, metrics={"accuracy": 0.5}, command="asasnn train", extra={"note": "kept"})
    save_checkpoint(tmp_path / "best.pt", ck)
    raw = torch.load(tmp_path / "best.pt", weights_only=True)  # the plain-dict format
    assert set(raw) == {"config", "model", "data", "metrics", "command", "note"}
    back = load_checkpoint(tmp_path)  # a run directory: its best.pt
    assert back.path == tmp_path / "best.pt" and not back.resumable
    assert (back.config, back.data, back.metrics, back.command) == (ck.config, ck.data, ck.metrics, ck.command)
    assert back.info()["path"] == str(tmp_path / "best.pt") and back.extra == {"note": "kept"}
    rebuilt, _ = load_network(tmp_path / "best.pt")
    assert not rebuilt.training
    for k, v in net.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[k], v), k
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, nothing left over


def test_run_directory_resolution(tmp_path: Path) -> None:
    assert checkpoint_file(tmp_path) == tmp_path / "best.pt"  # neither exists: the name an error reports
    (tmp_path / "last.pt").touch()
    assert checkpoint_file(tmp_path) == tmp_path / "last.pt"
    (tmp_path / "best.pt").touch()
    assert checkpoint_file(tmp_path) == tmp_path / "best.pt"
    assert checkpoint_file(tmp_path, resume=True) == tmp_path / "last.pt"
    assert checkpoint_file(tmp_path / "x.pt") == tmp_path / "x.pt"


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    net = tiny()
    good = weights_only(net).to_dict()
    torch.save(good, tmp_path / "good.pt")
    whole = (tmp_path / "good.pt").read_bytes()
    cases: dict[str, tuple[object, str]] = {
        "zip": (b"PK\x03\x04 this is not a zip", "not a readable checkpoint"),
        "truncated": (whole[: len(whole) // 2], "not a readable checkpoint"),
        "empty": (b"", "not a readable checkpoint"),
        "text": (b"hello, world", "not a readable checkpoint"),
        "code": ({**good, "config": RunsCode()}, "not a readable checkpoint (it holds objects other than"),
        "list": ([1, 2], "a checkpoint must be a dict"),
        "partial": ({"model": {}}, "lacks ['config', 'data']"),
        "data": ({**good, "data": {"classes": ["a"]}}, "'data' must hold classes, sensor, ds and dt_us"),
        "model": ({**good, "model": [1]}, "'model' must be a state_dict"),
        "types": ({**good, "epoch": "one"}, "'epoch' has the wrong type"),
        "config": ({**good, "config": {"name": "x"}}, "'config' is not a network configuration"),
        "weights": ({**good, "model": {"nope": torch.zeros(1)}}, "weights do not match the network config"),
        "shapes": ({**good, "config": tiny("none").cfg.to_dict()}, "weights do not match the network config"),
    }
    out = {}
    for name, (content, message) in cases.items():
        path = tmp_path / f"{name}.pt"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path)
        out[name] = (path, message)
    return out


def test_every_bad_file_is_one_value_error_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name, (path, message) in _bad_files(tmp_path).items():
        for load in (load_checkpoint, load_network, load_model):
            with pytest.raises(ValueError) as err:
                load(path)
            assert str(err.value).startswith(f"{path}: ") and message in str(err.value), (name, str(err.value))
            assert "\n" not in str(err.value)
    assert not (tmp_path / "pwned").exists()  # the pickle's code never ran
    with pytest.raises(ValueError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"empty.*: no such checkpoint file"):
        (tmp_path / "empty-run").mkdir()
        load_checkpoint(tmp_path / "empty-run")


def test_resume_needs_the_training_state(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "last.pt", weights_only(tiny()))
    assert not load_checkpoint(tmp_path / "last.pt").resumable  # fine for eval and export
    with pytest.raises(ValueError, match=r"last.pt: holds no training state to resume \(lacks \['train_config'"):
        load_checkpoint(tmp_path, resume=True)


def test_load_model_float_and_exact(tmp_path: Path) -> None:
    net = tiny("causal-asa")
    save_checkpoint(tmp_path / "m.pt", weights_only(net, train_config={"epochs": 1}))
    floats, info = load_model(tmp_path / "m.pt")
    assert info["arithmetic"] == "float32" and info["data"] == DATA and info["train_config"] == {"epochs": 1}
    assert info["path"] == str(tmp_path / "m.pt") and isinstance(floats, SpikingNet)
    exact, info = load_model(tmp_path / "m.pt", "exact")
    assert info["arithmetic"] == "exact" and exact.cfg.to_dict() == net.cfg.to_dict()


def test_torch_load_only_in_the_checkpoint_module() -> None:
    """One reader: ``torch.load`` is called in training/checkpoint.py only, and the analysis package
    does not import the command-line modules."""
    for path in TRAINING.rglob("*.py"):
        tree = ast.parse(path.read_text())
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "load"
                 and isinstance(n.value, ast.Name) and n.value.id == "torch"]
        if path.name != "checkpoint.py":
            assert not calls, path
        if "analysis" in path.parts:
            imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
            imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
            assert not [m for m in imported if m.startswith("training.cli")], path
