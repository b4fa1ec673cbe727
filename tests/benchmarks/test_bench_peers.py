"""benchmarks/bench_peers.py in the project's own environment, where SpikingJelly, snnTorch and Norse are
not installed (they live in .venv-peers): the network the peers get is rebuilt from the exact synapses,
each peer's neuron recurrence (written in plain PyTorch) is checked against our step, and a peer that
does not import is reported with its reason while our backends are still timed."""

from __future__ import annotations

import argparse
import importlib.util

import pytest

from asasnn.bench import SCRIPTS, _load

bench = _load(SCRIPTS["peers"])


@pytest.fixture(scope="module")
def vanilla():
    from models.runtime.bundle import load_bundle
    from models.runtime.verify import random_frames

    b = load_bundle(bench.REPO / "models" / "bundled" / "vanilla")
    frames = bench.saturate(random_frames(16, 3, b.card.frame_shape, seed=2), b.card.arithmetic.max_count)
    return b.exact, frames


def test_rebuilt_network_with_each_peers_formula_agrees_with_our_step(vanilla):
    exact, frames = vanilla
    syn = bench.synapses(exact)
    beta, v_th = bench.neuron_params(exact)
    assert (beta, v_th) == (0.3, 0.3)
    for kind in bench.FORMULAS:
        report = bench.check_agreement(exact, bench.formula_peer(kind, syn, beta, v_th), frames)
        assert list(report) == list(exact.layer_names)
        assert all(r["spikes"] > 0 for r in report.values())  # every layer fires: the check is not vacuous
        if kind == "ours":  # our recurrence on the rebuilt synapses: the same spikes, bit for bit
            assert all(r["flips"] == 0 for r in report.values())
        else:  # other float32 operations for the same recurrence: at most a spike at threshold flips
            assert all(r["agree"] > 0.999 for r in report.values()), (kind, report)


def test_agreement_check_sees_a_different_neuron(vanilla):
    exact, frames = vanilla
    syn = bench.synapses(exact)
    report = bench.check_agreement(exact, bench.formula_peer("ours", syn, 0.5, 0.3), frames)  # beta 0.5
    assert sum(r["flips"] for r in report.values()) > 0


def test_missing_peers_are_reported_and_our_backends_still_run():
    result = bench.run(models=("vanilla", "default"), batches=(1,), budget=0.1, steps=4, log=lambda *a: None)
    for peer in bench.PEERS:
        entry = result["peers"][peer]
        if importlib.util.find_spec(peer) is None:  # the project's environment: no peer installed
            assert entry["error"].startswith("ModuleNotFoundError") and peer in entry["error"]
        else:
            assert entry["version"]
    backends = {(r["model"].split(" (")[0], r["backend"]) for r in result["rows"]}
    for model in ("bundled vanilla", "bundled default"):
        assert {(model, k) for k in bench.OURS} <= backends
    (default,) = [k for k in result["models"] if k.startswith("bundled default")]
    assert not result["models"][default]["agreement"]  # causal ASA: no peer rebuilds it
    assert any("attention has no counterpart" in n for n in result["notes"])
    text = bench.format_markdown(result)
    assert "plain torch, ours formula | 1 (0) | 1 (0)" in text
    if importlib.util.find_spec("snntorch") is None:
        assert "snntorch missing (ModuleNotFoundError" in text


def test_without_the_peers_environment_it_says_how_to_create_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(bench, "PEERS_VENV", tmp_path / ".venv-peers")
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    assert bench.main(parser.parse_args([])) == 2
    assert "--setup" in capsys.readouterr().err
