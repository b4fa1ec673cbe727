"""Export: BatchNorm folding, the ONNX step graph, verification, refusal of disagreeing graphs, the CLI."""

import argparse
import shutil

import numpy as np
import onnx
import pytest
import torch
from runtime_support import CLASSES, make_net
from safetensors.torch import load_file, save_file

import models.runtime.export as E
from models.runtime.bundle import WEIGHTS_FILE, load_bundle
from models.runtime.runner import make_session
from training.cli import export as cli


def test_step_graph_io_and_dynamic_batch(bundles, frames_for):
    b = bundles["tiny-causal"]
    model = onnx.load(str(b.onnx_path))
    names = b.net.state_names()
    assert [i.name for i in model.graph.input] == ["frames", *names]
    assert [o.name for o in model.graph.output] == ["out", "counts", *(f"{n}.next" for n in names)]
    assert "conv1.asa_num" in names and "conv1.asa_den" in names  # ASA running statistics are state
    assert all(i.type.tensor_type.shape.dim[0].dim_param for i in model.graph.input)  # symbolic batch
    assert not any(n.op_type in ("BatchNormalization", "AveragePool") for n in model.graph.node)
    sess = make_session(b.onnx_path, "cpu", 1)
    for batch in (1, 5):
        frames = frames_for(b, 1, batch)[0]
        state = {n: np.zeros((batch, *s), np.float32) for n, s in zip(names, b.net.state_shapes())}
        out, counts, *new = sess.run(None, {"frames": frames, **state})
        assert out.shape == (batch, 5) and counts.shape == (batch, 5)
        assert [x.shape[1:] for x in new] == [tuple(s) for s in b.net.state_shapes()]


def test_card_records_a_non_vacuous_verification(bundles):
    for key in ("tiny-none", "tiny-causal", "gesture3-causal"):
        v = bundles[key].card.verification
        assert v.passed and v.spike_agreement >= 0.9999 and v.rate_tol > 0
        assert all(r > 0 for r in v.layer_rates), (key, v.layer_rates)
        assert v.frames[0] == "random" and len(v.frames) == 2  # and synthetic gestures
        assert v.streams == 5


def _tampered(bundles, tmp_path, scale: float):
    d = tmp_path / "tampered"
    shutil.copytree(bundles["tiny-none"].path, d)
    w = load_file(str(d / WEIGHTS_FILE))
    w["layers.1.synapse.0.weight"] = w["layers.1.synapse.0.weight"] * scale
    save_file(w, str(d / WEIGHTS_FILE))
    return d


def test_verify_bundle_accepts_a_good_bundle_and_refuses_a_tampered_one(bundles, tmp_path):
    good = E.verify_bundle(bundles["tiny-none"].path)
    assert good.passed and good.spike_agreement >= 0.9999
    d = _tampered(bundles, tmp_path, 1.3)
    load_bundle(d)  # still a well-formed bundle ...
    bad = E.verify_bundle(d)  # ... whose graph no longer computes what its weights do
    assert not bad.passed and bad.spike_agreement < 0.999
    args = argparse.Namespace(
        checkpoint=str(d),
        output=None,
        check=True,
        frames=None,
        events=None,
        min_agreement=0.9999,
        rate_tol=None,
    )
    assert cli.run(args) == 1


def test_export_refuses_a_disagreeing_graph(bundles, tmp_path, monkeypatch):
    b = bundles["tiny-none"]
    other = make_net("tiny-none", seed=1)  # same architecture, other weights
    graph = E.add_spike_outputs(b.onnx_path.read_bytes(), b.net.layer_names)  # b's weights inside
    monkeypatch.setattr(E, "export_onnx", lambda n, mode, **kw: graph)
    out = tmp_path / "never"
    with pytest.raises(E.VerificationError, match="spike agreement") as err:
        E.export_bundle(other, b.card, out)
    assert not err.value.report.passed
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing written, no temp dir left


def _args(**kw):
    base = {
        "output": None,
        "check": False,
        "name": None,
        "version": None,
        "hop": None,
        "frames": None,
        "events": None,
        "min_agreement": 0.9999,
        "rate_tol": None,
        "force": False,
    }
    return argparse.Namespace(**(base | kw))


def test_cli_exports_a_checkpoint(tmp_path, capsys):
    net = make_net("tiny-none", seed=2)
    ck = {
        "config": net.cfg.to_dict(),
        "model": net.state_dict(),
        "data": {
            "dataset": "synthetic",
            "classes": CLASSES,
            "sensor": [128, 128],
            "ds": 4,
            "dt_us": 20_000,
            "timesteps": 16,
        },
        "metrics": {"accuracy": 0.5, "nasfr": 0.1, "data": "nothing, an untrained network"},
        "command": "asasnn train --preset tiny",
    }
    torch.save(ck, tmp_path / "best.pt")
    real = np.random.default_rng(0).poisson(0.5, size=(16, 2, 32, 32)).astype(np.float32)
    np.save(tmp_path / "frames.npy", real)
    out = tmp_path / "bundle"
    assert (
        cli.run(
            _args(checkpoint=str(tmp_path), output=str(out), name="demo", frames=str(tmp_path / "frames.npy"))
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "spike agreement" in text and "max output difference" in text
    b = load_bundle(out)
    assert b.card.name == "demo" and b.card.dataset == "synthetic" and b.card.metrics.accuracy == 0.5
    assert b.card.command == "asasnn train --preset tiny" and b.card.verification.frames == ["random", "real"]
    # an existing bundle is not overwritten without --force
    assert cli.run(_args(checkpoint=str(tmp_path / "best.pt"), output=str(out))) == 2
    assert "not empty" in capsys.readouterr().err


def test_cli_rejects_bad_checkpoints(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 this is not a zip")
    assert cli.run(_args(checkpoint=str(bad), output=str(tmp_path / "o"))) == 2
    assert "bad.pt: not a readable checkpoint" in capsys.readouterr().err
    torch.save({"model": {}}, tmp_path / "partial.pt")
    assert cli.run(_args(checkpoint=str(tmp_path / "partial.pt"), output=str(tmp_path / "o"))) == 2
    assert "lacks ['config', 'data']" in capsys.readouterr().err
    net = make_net("tiny-none")
    data = {"classes": CLASSES, "sensor": {"width": 128, "height": 128}, "ds": 4, "dt_us": 1000}
    torch.save(
        {"config": net.cfg.to_dict(), "model": {"nope": torch.zeros(1)}, "data": data}, tmp_path / "w.pt"
    )
    assert cli.run(_args(checkpoint=str(tmp_path / "w.pt"), output=str(tmp_path / "o"))) == 2
    assert "weights do not match the network config" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_step_graph_carries_the_rewrites(bundles):
    """gesture3's shipped graph is the rewritten network: no BatchNorm or average pool left, ONNX TopK
    for causal ASA's ranking instead of the C x C comparison, and a spike-driven FC256."""
    ops = {n.op_type for n in onnx.load(str(bundles["gesture3-causal"].onnx_path)).graph.node}
    assert not ops & {"BatchNormalization", "AveragePool"}
    assert {"TopK", "NonZero", "Gather"} <= ops
    tiny_ops = {n.op_type for n in onnx.load(str(bundles["tiny-causal"].onnx_path)).graph.node}
    assert "TopK" in tiny_ops and "NonZero" not in tiny_ops  # FC64 stays dense (below the size)
