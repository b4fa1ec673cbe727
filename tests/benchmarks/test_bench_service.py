"""``asasnn bench service`` end to end on the bundled model: generator processes, a real server.
Timings are not checked (they are not tests); what is checked is that every prediction is counted,
in order, and that the capacity search and the model-alone measurement produce their figures."""

from __future__ import annotations

import json

import pytest

from asasnn.bench import SCRIPTS, _load

bench = _load(SCRIPTS["service"])
pytestmark = pytest.mark.skipif(not (bench.BUNDLED / "default" / "card.json").exists(), reason="no bundled model")


def test_bench_service_counts_every_prediction(tmp_path):
    out = tmp_path / "r.json"
    assert bench.main(["--streams", "3", "--seconds", "3", "--warmup", "0.5", "--snapshot", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["connected"] == 3 and r["expected"] > 100
    assert r["predictions"] == r["expected"] and r["lost"] == 0 and r["out_of_order"] == 0 and not r["errors"]
    assert len(r["generators"]) == 1 and r["generators"][0]["cpu"] is not None
    assert r["server_cpu"] is not None and r["server_rss_mib_max"] > 50
    assert r["snapshot_bytes"] > 1000
    # the model call's CPU time (its own thread) is counted, and cannot exceed its wall time
    assert 0 < r["step_cpu_mean_ms"] <= r["step_wall_mean_ms"] * 1.05


def test_bench_service_find_capacity_stops_at_the_bound(tmp_path):
    out = tmp_path / "r.json"
    args = ["--find-capacity", "--streams", "1", "--max-streams", "2", "--seconds", "2", "--warmup", "0.5",
            "--confirm-seconds", "2.5"]
    assert bench.main([*args, "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert [run["streams"] for run in r["runs"]][:1] == [1]
    assert 0 <= r["streams"] <= 2
    if r["streams"]:  # then the capacity found was run again, longer, stepping down until one held
        assert r["confirm_seconds"] == 2.5 and 0 <= r["confirmed"] <= r["streams"]
        confirmations = [run for run in r["runs"] if run["seconds"] == 2.5]
        assert confirmations and confirmations[0]["streams"] == r["streams"]
        assert confirmations[-1]["real_time"] == (r["confirmed"] > 0)
    assert r["model_only"]["streams"] >= 1 and r["model_only"]["p99_ms"]
