"""``asasnn synth`` writes recordings that the project's readers load back unchanged."""

from __future__ import annotations

import argparse
import csv

import numpy as np
import pytest

from models.events.readers import read_events
from models.events.types import SensorSize
from models.synthetic import cli
from models.synthetic.dataset import CLASSES, SampleSpec, generate


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize("fmt", ["npz", "aedat4"])
def test_synth_writes_readable_files_and_labels(tmp_path, fmt):
    args = parse(
        "--out",
        str(tmp_path),
        "--count",
        "3",
        "--format",
        fmt,
        "--width",
        "48",
        "--height",
        "40",
        "--duration-ms",
        "150",
        "--split",
        "test",
        "--seed",
        "2",
    )
    assert cli.run(args) == 0
    with open(tmp_path / "labels.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3
    cfg = cli.config_from_args(args)
    for i, row in enumerate(rows):
        # subject by subject, one of every class in turn
        assert int(row["label"]) == i and row["class"] == CLASSES[i]
        assert int(row["subject"]) == cfg.num_subjects_train
        events, sensor = read_events(tmp_path / row["file"])
        assert sensor == SensorSize(48, 40)
        spec = SampleSpec(int(row["label"]), int(row["subject"]), int(row["clip"]), int(row["seed"]))
        assert np.array_equal(events, generate(spec, cfg))


def test_synth_needs_out_or_stats(capsys):
    assert cli.run(parse()) == 2
    assert cli.run(parse("--width", "0", "--out", "x")) == 2
    assert "--out" in capsys.readouterr().err
