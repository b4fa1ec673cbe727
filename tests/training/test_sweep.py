"""``asasnn sweep``: every attention x seed trained and evaluated in its own process, resumable, tables."""

from __future__ import annotations

import json
import shlex

import pytest

from asasnn.cli import main

SYNTH = ["--synthetic", "sensor=[32, 32]", "--synthetic", "duration_us=400000", "--synthetic", "num_subjects_train=1",
         "--synthetic", "num_subjects_test=1", "--synthetic", "clips_per_class_per_subject=1"]


def sweep(tmp_path, *extra: str, train: tuple[str, ...] = ()) -> int:
    shared = ["--recipe", "tiny-synthetic", *SYNTH, "--timesteps", "6", "--dt-us", "50000", "--ds", "1", "--epochs", "1", "--batch-size", "10",
              "--test-clips", "2", "--threads", "1", "--cache-dir", str(tmp_path / "cache"), *train]
    pattern = str(tmp_path / "{attention}-s{seed}")
    return main(["sweep", "--attention", "none", "causal-asa", "--seeds", "0", "1", "--run-dirs", pattern, *extra,
                 "--", *shared])


@pytest.mark.slow
@pytest.mark.timeout(900)  # 14 train / eval processes on a possibly busy 2-core machine
def test_sweep_trains_evaluates_resumes_and_tabulates(tmp_path, capsys):
    assert sweep(tmp_path) == 0
    out = capsys.readouterr().out
    cells = [tmp_path / f"{a}-s{s}" for s in (0, 1) for a in ("none", "causal-asa")]
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("[")] == [
        f"[{i}/4] {a} seed {s} ({tmp_path / f'{a}-s{s}'})" for i, (s, a) in
        enumerate(((0, "none"), (0, "causal-asa"), (1, "none"), (1, "causal-asa")), 1)]
    reports = {c.name: json.loads((c / "eval-best.json").read_text()) for c in cells}
    assert {r["attention"]["kind"] for r in reports.values()} == {"none", "causal-asa"}
    # each run's command.txt is the one command that made it: the cell's attention, seed and directory
    command = shlex.split((tmp_path / "causal-asa-s1" / "command.txt").read_text())
    assert command[:2] == ["asasnn", "train"]
    assert command[command.index("--attention") + 1] == "causal-asa" and command[command.index("--seed") + 1] == "1"
    assert command[command.index("--run-dir") + 1] == str(tmp_path / "causal-asa-s1")
    # the tables: both groups over two seeds, NASFR relative to the first attention given
    assert "| vanilla LIF | 2 |" in out and "| causal ASA | 2 |" in out and "NASFR vs vanilla LIF %" in out
    assert out.rstrip().endswith(f"Trained on: {reports['none-s0']['evaluated_on']} (4 of 4 runs).")
    assert f"| causal ASA | 2 | {100 * (reports['causal-asa-s0']['accuracy']['vote'] + reports['causal-asa-s1']['accuracy']['vote']) / 2:.2f} ±" in out

    # run again after losing one report: the other cells are kept, that run is resumed (already at its
    # last epoch: nothing trained, its checkpoint untouched) and evaluated again to the same figures
    last = (tmp_path / "none-s1" / "last.pt").read_bytes()
    (tmp_path / "none-s1" / "eval-best.json").unlink()
    assert sweep(tmp_path) == 0
    out = capsys.readouterr().out
    assert out.count("evaluated before, kept") == 3 and "none seed 1" in out and "resuming" in out
    assert (tmp_path / "none-s1" / "last.pt").read_bytes() == last
    again = json.loads((tmp_path / "none-s1" / "eval-best.json").read_text())
    assert again["accuracy"] == reports["none-s1"]["accuracy"] and again["nasfr"] == reports["none-s1"]["nasfr"]

    # a longer schedule resumes the run for its extra epoch and evaluates it again
    assert sweep(tmp_path, "--seeds", "0", "--attention", "none", train=("--epochs", "2")) == 0
    assert "kept" not in capsys.readouterr().out
    rows = [json.loads(line) for line in (tmp_path / "none-s0" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]

    # a run directory that holds a run with other options is refused before anything runs
    assert sweep(tmp_path, train=("--lr", "0.5")) == 2
    err = capsys.readouterr().err
    assert "none-s0 holds a run with other options" in err and "lr: 0.003 there, 0.5 here" in err


def test_sweep_refuses_what_it_owns_and_bad_options(tmp_path, capsys):
    assert sweep(tmp_path, train=("--seed", "3")) == 2
    assert "--seed is the sweep's to set" in capsys.readouterr().err
    assert sweep(tmp_path, train=("--run-dir=x",)) == 2
    assert "--run-dir is the sweep's to set" in capsys.readouterr().err
    assert sweep(tmp_path, train=("--no-such-option",)) == 2  # the train parser says which
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err
    assert sweep(tmp_path, train=("--atten", "asa")) == 2  # no abbreviations: the sweep owns --attention
    assert "unrecognized arguments: --atten" in capsys.readouterr().err
    assert sweep(tmp_path, train=("--lr", "-1")) == 2
    assert "lr must be > 0" in capsys.readouterr().err
    assert main(["sweep", "--run-dirs", str(tmp_path / "{seed}"), "--", "--recipe", "tiny-synthetic"]) == 2
    assert "gives two cells one directory" in capsys.readouterr().err
    for pattern in ("{}", "{attention}-{seed}-{other}", "{attention"):
        assert main(["sweep", "--run-dirs", str(tmp_path / pattern), "--", "--recipe", "tiny-synthetic"]) == 2
        assert "is not a pattern of {attention} and {seed}" in capsys.readouterr().err
    assert main(["sweep", "--", "--lr", "1e-4"]) == 2  # nothing named to train
    assert "a --recipe or --config" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing was started
