"""``asasnn analyze`` end to end: tiny untrained vanilla / ASA / causal-ASA checkpoints (BatchNorm set to
the data's statistics so every layer spikes) on a small synthetic test split, in seconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from asasnn.cli import main
from models.config import NetworkConfig
from models.network import SpikingNet
from training.config import TrainConfig
from training.data_source import frame_dataset, open_source

SYNTH = {"num_subjects_train": 1, "num_subjects_test": 1, "clips_per_class_per_subject": 1, "duration_us": 200_000}
KINDS = ("none", "asa", "causal-asa")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("analyze")
    base = TrainConfig(timesteps=6, ds=8, test_clips=2, synthetic=SYNTH, cache_dir=str(root / "cache"))
    source = open_source(base, "test")
    data = frame_dataset(base, source, "test", train=False)
    x = torch.stack([data[i][0] for i in range(len(data))]).transpose(0, 1)  # [T, B, 2, 16, 16]
    paths = []
    for kind in KINDS:
        torch.manual_seed(0)
        cfg = base.merged({"attention": kind, "run_dir": str(root / f"tiny-{kind}")})
        net = SpikingNet(cfg.network_config(len(source.classes), tuple(x.shape[-2:])))
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        net.train()
        with torch.no_grad():
            net(x)
        run = Path(cfg.run_dir)
        run.mkdir()
        torch.save({
            "config": net.cfg.to_dict(), "model": net.eval().state_dict(), "train_config": cfg.to_dict(),
            "data": {"dataset": "synthetic", "classes": list(source.classes), "sensor": [source.sensor.width, source.sensor.height],
                     "ds": cfg.ds, "dt_us": cfg.dt_us, "timesteps": cfg.timesteps},
            "metrics": {}, "command": "test",
        }, run / "best.pt")
        paths.append(run / "best.pt")
    return paths


def test_analyze_numbers_only(checkpoints: list[Path], tmp_path: Path) -> None:
    """The three models compared, tables and JSON only (``--no-figures``): a few seconds."""
    out = tmp_path / "report"
    assert main(["analyze", *map(str, checkpoints), "--out", str(out), "--no-progress", "--no-figures"]) == 0
    assert "<table>" in (out / "report.html").read_text() and not list((out / "figures").glob("*.png"))
    rep = json.loads((out / "analysis.json").read_text())
    _check_json(rep)


@pytest.mark.slow
def test_analyze_writes_the_report(checkpoints: list[Path], tmp_path: Path) -> None:
    """Everything, figures included (about 20 s of CPU, mostly matplotlib)."""
    out = tmp_path / "report"
    rc = main(["analyze", *map(str, checkpoints), "--out", str(out), "--no-progress", "--samples", "2"])
    assert rc == 0
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 15  # self-contained
    assert all(n in html for n in ("Spike features", "Ghost features", "Membrane potential", "Energy", "Attention: tiny-asa"))
    pngs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert {"tsfr.png", "csfr.png", "ptd_variance.png", "qe.png", "energy.png", "features_conv1.png",
            "mpd_conv3.png", "similarity_conv2.png", "masks_1.png", "spatial_maps_2.png"} <= set(pngs)
    assert (out / "arrays.npz").is_file()
    _check_json(json.loads((out / "analysis.json").read_text()))


def _check_json(rep: dict) -> None:
    names = [m["name"] for m in rep["models"]]
    assert names == ["tiny-none", "tiny-asa", "tiny-causal-asa"]
    for m in rep["models"]:
        assert m["nasfr"] == pytest.approx(m["nasfr_from_counts"])  # maps and counts from one pass agree
        assert m["clips"] == 20 and len(m["t_sfr"]) == 6
        assert [layer["name"] for layer in m["layers"]] == ["conv1", "conv2", "conv3", "fc1", "fc2"]
        assert all(layer["firing_rate"] > 0 for layer in m["layers"])  # not vacuous
        conv1 = m["layers"][0]
        assert len(conv1["c_sfr"]) == len(conv1["ptd"]) == len(conv1["pattern"]) == 8
        assert sum(conv1["patterns"].values()) == 8
        assert all(-2.5 < p < 2.5 for p in conv1["ptd"])
        assert conv1["qe"] > 0
    assert rep["models"][0]["attention_masks"] == []
    masks = rep["models"][2]["attention_masks"]
    assert [a["layer"] for a in masks] == ["conv1", "conv2", "conv3"] and masks[0]["kind"] == "causal-asa"
    assert len(masks[0]["important_share"]) == 6 and 0 <= masks[0]["stability"] <= 1
    assert [c["model"] for c in rep["comparison"]] == ["tiny-asa", "tiny-causal-asa"]
    assert rep["findings"] and rep["command"].startswith("asasnn analyze")


def test_analyze_rejects_models_of_different_architectures(checkpoints: list[Path], tmp_path: Path) -> None:
    ck = torch.load(checkpoints[0], weights_only=True)
    cfg = dict(ck["config"], convs=[dict(c, channels=4) for c in ck["config"]["convs"]])
    other = SpikingNet(NetworkConfig.from_dict(cfg))
    torch.save(ck | {"config": other.cfg.to_dict(), "model": other.state_dict()}, tmp_path / "narrow.pt")
    assert main(["analyze", str(checkpoints[0]), str(tmp_path / "narrow.pt"), "--out", str(tmp_path / "r"),
                 "--no-figures", "--no-progress"]) == 2


def test_analyze_rejects_a_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "r")]) == 2
    assert "nope.pt" in capsys.readouterr().err
