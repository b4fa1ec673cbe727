"""Export: the ONNX step graph, the exact form's bounds, verification by equality (refusing subtly
tampered bundles), the CLI."""

import argparse
import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from runtime_support import CLASSES, make_net
from safetensors.torch import load_file, save_file

import models.runtime.export as E
from models.runtime.bundle import WEIGHTS_FILE, load_bundle
from models.runtime.ort_runner import make_session
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
        card = bundles[key].card
        v = card.verification
        assert v.passed and not any(v.mismatches.values()) and v.first_mismatch is None
        assert v.compared["out"] > 0 and v.compared["conv1.h.next"] > 0 and v.compared["fc2.spikes"] > 0
        assert all(r > 0 for r in v.layer_rates), (key, v.layer_rates)
        assert v.frames[0] == "random" and len(v.frames) == 2  # and synthetic gestures
        assert v.streams == 5
        a = card.arithmetic
        assert a.kind == "exact" and len(a.weight_bits) == 5 and all(6 <= k <= 24 for k in a.weight_bits)


def _tamper(bundles, tmp_path, name: str, change):
    """A copy of the tiny causal-ASA bundle whose weights or card ``change`` edits (the graph stays)."""
    d = tmp_path / name
    shutil.copytree(bundles["tiny-causal"].path, d)
    w = load_file(str(d / WEIGHTS_FILE))
    card = json.loads((d / "card.json").read_text())
    change(w, card)
    save_file(w, str(d / WEIGHTS_FILE))
    (d / "card.json").write_text(json.dumps(card))
    load_bundle(d)  # still a well-formed bundle ...
    return d


def _one_quantum(w, card):
    """The output layer's largest weight moved by one step of its grid (2^-k)."""
    k = card["arithmetic"]["weight_bits"][-1]
    fc = w["layers.4.synapse.weight"]
    i = int(fc.abs().argmax())
    fc.view(-1)[i] += 2.0**-k


def _swap_output_rows(w, card):
    """Classes 0 and 1 swapped: a label swap."""
    fc = w["layers.4.synapse.weight"]
    fc[[0, 1]] = fc[[1, 0]]


def _nudge_threshold(w, card):
    card["config"]["neuron"]["v_th"] = 0.3 + 1e-3


@pytest.mark.parametrize("change", (_one_quantum, _swap_output_rows, _nudge_threshold))
def test_verify_bundle_refuses_subtle_tampering(bundles, tmp_path, change):
    assert E.verify_bundle(bundles["tiny-causal"].path).passed
    d = _tamper(bundles, tmp_path, change.__name__, change)
    bad = E.verify_bundle(d)  # ... whose graph no longer computes what its weights and card say
    assert not bad.passed and bad.first_mismatch
    assert sum(bad.mismatches.values()) >= 1
    assert cli.run(_args(checkpoint=str(d), check=True)) == 1


def test_export_refuses_a_disagreeing_graph(bundles, tmp_path, monkeypatch):
    b = bundles["tiny-none"]
    other = make_net("tiny-none", seed=1)  # same architecture, other weights
    graph = E.add_spike_outputs(b.onnx_path.read_bytes(), b.net.layer_names)  # b's weights inside
    monkeypatch.setattr(E, "export_onnx", lambda n, mode, **kw: graph)
    out = tmp_path / "never"
    with pytest.raises(E.VerificationError, match="differing values") as err:
        E.export_bundle(other, b.card, out)
    assert not err.value.report.passed
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing written, no temp dir left


def test_a_network_without_an_exact_form_is_refused(tmp_path):
    from models.runtime.exact import ExactRangeError, exact_spec

    net = make_net("tiny-none")
    with torch.no_grad():  # first-layer sums of 1023 events could reach ~2^30: no grid keeps them exact
        net.layers[0].synapse[1].weight.mul_(1e5)
    with pytest.raises(ExactRangeError, match="conv1"):
        exact_spec(net)
    # a card whose grid is finer than its weights allow is refused at load
    b = make_net("tiny-none")
    card = E.build_card(b, classes=CLASSES, sensor=(128, 128), ds=4, dt_us=20_000)
    card.arithmetic.weight_bits[0] = 24
    from models.runtime.bundle import BundleError, save_bundle

    save_bundle(tmp_path / "b", card, b, None)
    with pytest.raises(BundleError, match="arithmetic does not fit"):
        load_bundle(tmp_path / "b", check_graph=False)


def _args(**kw):
    base = {
        "output": None,
        "check": False,
        "name": None,
        "version": None,
        "hop": None,
        "frames": None,
        "events": None,
        "max_count": 1023,
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
        "machines": ["CPU A (2 cores), torch 2", "GPU box (16 cores), torch 2, GPU B"],
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
    assert "values compared" in text and ", 0 differ" in text and "weight grids conv1 2^-" in text
    b = load_bundle(out)
    assert b.card.name == "demo" and b.card.dataset == "synthetic" and b.card.metrics.accuracy == 0.5
    assert b.card.command == "asasnn train --preset tiny" and b.card.verification.frames == ["random", "real"]
    assert b.card.trained_on == ck["machines"]
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
