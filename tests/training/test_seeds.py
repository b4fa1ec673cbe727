"""Mean and spread over seeds (training/seeds.py) and ``asasnn results``."""

from __future__ import annotations

import json
import math

import pytest

from asasnn.cli import main
from training.seeds import Spread, load_groups, machines, markdown, relative


def _report(vote: float, nasfr: float, rates: tuple[float, float]) -> dict:
    return {
        "accuracy": {"vote": vote, "clip": vote - 0.02},
        "nasfr": nasfr,
        "spikes_per_sample": 1000 * nasfr,
        "sops_per_sample": 1e6 * nasfr,
        "layers": [{"name": "conv1", "firing_rate": rates[0]}, {"name": "fc1", "firing_rate": rates[1]}],
    }


def test_spread_is_mean_sample_std_and_range():
    s = Spread.of([0.1, 0.2, 0.6])
    assert math.isclose(s.mean, 0.3) and math.isclose(s.std, math.sqrt(((0.2**2) + (0.1**2) + (0.3**2)) / 2))
    assert (s.lo, s.hi, s.n) == (0.1, 0.6, 3)
    assert Spread.of([0.5]).std == 0.0
    assert s.fmt(100, 1) == "30.0 ± 26.5 (10.0 - 60.0)"


def test_relative_change_is_against_the_base_mean():
    groups = {"vanilla": [_report(0.6, 0.2, (0.1, 0.3)), _report(0.7, 0.1, (0.1, 0.3))],
              "asa": [_report(0.9, 0.075, (0.05, 0.2)), _report(0.95, 0.09, (0.05, 0.2))]}
    rel = relative(groups, "nasfr", "vanilla")
    assert math.isclose(rel["asa"].lo, 0.075 / 0.15 - 1) and math.isclose(rel["asa"].hi, 0.09 / 0.15 - 1)
    assert math.isclose(rel["vanilla"].mean, 0.0, abs_tol=1e-12)
    text = markdown(groups)
    assert "| asa | 2 | 92.50 ± 3.54 (90.00 - 95.00) |" in text
    assert "| vanilla | 0.100 ± 0.000 (0.100 - 0.100) | 0.300 ± 0.000 (0.300 - 0.300) |" in text
    assert text.endswith("\nTrained on: not recorded (4 of 4 runs).\n")
    groups["asa"][0]["trained_on"] = ["CPU A (2 cores), torch 2"]
    groups["asa"][1]["trained_on"] = ["CPU A (2 cores), torch 2", "CPU B (4 cores), torch 2"]
    groups["vanilla"][0]["trained_on"] = ["CPU A (2 cores), torch 2"]
    assert machines(groups) == ("Trained on: CPU A (2 cores), torch 2 (2 of 4 runs); not recorded (1 of 4 runs); "
                                "CPU A (2 cores), torch 2 then CPU B (4 cores), torch 2 (1 of 4 runs).")


def test_results_command_reads_eval_reports(tmp_path, capsys):
    paths = []
    for i, nasfr in enumerate((0.1, 0.12)):
        p = tmp_path / f"r{i}.json"
        p.write_text(json.dumps(_report(0.8, nasfr, (0.1, 0.2))))
        paths.append(str(p))
    assert main(["results", "causal=" + ",".join(paths)]) == 0
    assert "| causal | 2 | 80.00 ± 0.00" in capsys.readouterr().out
    with pytest.raises(ValueError, match="LABEL=REPORT"):
        load_groups(["no-label"])
