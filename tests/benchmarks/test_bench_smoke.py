"""The benchmark scripts run end to end on a small network (numbers are not checked: timings are not
tests; what is checked is that every row is there and that the rewritten graphs agree)."""

from __future__ import annotations

import math

import pytest

from asasnn.bench import SCRIPTS, _load


def test_bench_runtime_runs_every_backend():
    bench = _load(SCRIPTS["runtime"])
    result = bench.run(
        models=("tiny",), batches=(1, 3), threads=1, budget=0.2, window=True, log=lambda *a: None
    )
    rows = {(r["backend"].split(" (")[0], r["batch"]) for r in result["rows"]}
    for backend in ("onnx", "onnx float32", "torch eager", "torch rewritten", "window", "event"):
        assert {(backend, 1), (backend, 3)} <= rows
    assert all(r["median_ms"] > 0 and math.isfinite(r["p99_ms"]) for r in result["rows"])
    (info,) = result["models"].values()
    assert info["bytes_per_stream"]["onnx"] == 2 * info["bytes_per_stream"]["torch eager"]
    assert set(info["event_crossovers"]) == {"1", "3"}
    event = [r for r in result["rows"] if r["backend"] == "event"]
    assert all(r["ops_per_stream_step"] > 0 and r["sops_per_stream_step"] > 0 for r in event)  # gesture frames
    text = bench.format_markdown(result)
    assert "| torch eager / onnx | torch rewritten / onnx |" in text
    assert "| ops on spikes | SOPs | ops / SOPs |" in text


def test_bench_rewrites_graphs_agree_with_torch():
    bench = _load(SCRIPTS["rewrites"])
    result = bench.run("tiny", batch=2, threads=1, budget=0.2, log=lambda *a: None)
    graphs = [r for r in result["rows"] if r["count_mismatch"] is not None]
    assert len(graphs) == 5
    assert all(r["count_mismatch"] <= 1e-3 for r in graphs)  # spike counts of 16 steps vs torch
    assert "torch eager step (baseline)" in bench.format_markdown(result)


def test_bench_soak_runs_beside_hostile_clients_and_loses_nothing():
    """A short soak (real server, generator processes): every healthy prediction arrives, in order."""
    import argparse

    bench = _load(SCRIPTS["soak"])
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    args = p.parse_args(
        ["--streams", "2", "--minutes", "0.25", "--healthy-procs", "1", "--sample-s", "2",
         "--hostile", "misaligned packet,day gap,never starts,npz bomb,bad control"]
    )
    result = bench.conduct(args)
    predictions = result["predictions"]
    assert predictions["expected"] > 100 and predictions["lost"] == 0 and predictions["reordered"] == 0
    assert predictions["received"] == predictions["expected"] and not predictions["stream_errors"]
    assert sum(result["hostile"].values()) >= 5 and len(result["server"]["samples"]) >= 3
    assert "lost 0, reordered 0" in bench.report(result)


@pytest.mark.slow
def test_bench_training_times_both_lif_paths(tmp_path):
    import argparse
    import json

    bench = _load(SCRIPTS["training"])
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    out = tmp_path / "training.json"
    args = p.parse_args(["--preset", "tiny", "--batch", "2", "--iterations", "1", "--repeats", "1",
                         "--threads", "1", "--json", str(out)])
    assert bench.main(args) == 0
    result = json.loads(out.read_text())
    assert set(result["summary"]) == {"autograd loop", "compiled window"}
    assert all(s["median_s"] > 0 and s["peak_rss_gib"] > 0 for s in result["summary"].values())
    # --eval times a pass without a gradient (in this process: the child's measurement alone)
    child = p.parse_args(["--preset", "tiny", "--batch", "2", "--iterations", "1", "--threads", "1", "--eval",
                          "--child", "compiled window"])
    measured = bench._child(child)
    assert measured["mode"] == "compiled window" and len(measured["iteration_s"]) == 1
