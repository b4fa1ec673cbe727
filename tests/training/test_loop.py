"""Real (short) training runs: the loss goes down, resume continues the same run, the checkpoint
contract holds, and the train / eval commands work end to end on the synthetic source."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.config import NetworkConfig
from models.events import SensorSize, make_events
from models.network import SpikingNet
from training.cli import evaluate as eval_cli
from training.cli import train as train_cli
from training.config import TrainConfig
from training.loop import Trainer


class Bars:
    """Bars sweeping right / left / down / up over a 32x32 sensor, 0.4 s a recording, with noise."""

    classes = ("right", "left", "down", "up")
    sensor = SensorSize(32, 32)

    def __init__(self, n, seed=0):
        self.n, self.seed = n, seed

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        rng = np.random.default_rng([self.seed, i])
        label, k, dur = i % 4, 6, 400_000
        speed = rng.uniform(60, 100)  # pixels per second
        t, x, y = [], [], []
        for t0 in range(0, dur, 2000):
            at = np.clip(np.round((speed * t0 / 1e6 + rng.uniform(0, 8)) % 32 + rng.normal(0, 0.7, k)), 0, 31)
            at = 31 - at if label in (1, 3) else at
            along = rng.integers(0, 32, k)
            t.append(t0 + rng.integers(0, 2000, k))
            x.append(at if label < 2 else along)
            y.append(along if label < 2 else at)
        t.append(rng.integers(0, dur, 200))
        x.append(rng.integers(0, 32, 200))
        y.append(rng.integers(0, 32, 200))
        t = np.concatenate(t)
        o = np.argsort(t, kind="stable")
        p = rng.integers(0, 2, t.size)
        return make_events(t[o], np.concatenate(x)[o], np.concatenate(y)[o], p[o]), label


@pytest.fixture(autouse=True)
def keep_torch_threads():
    n = torch.get_num_threads()  # the runs below use one thread (faster on a small, busy CPU)
    yield
    torch.set_num_threads(n)


def small(run_dir, **kw):
    base = {
        "timesteps": 8,
        "dt_us": 20_000,
        "ds": 2,
        "batch_size": 16,
        "lr": 5e-3,
        "weight_decay": 0.0,
        "test_clips": 2,
        "threads": 1,
    }
    return TrainConfig(run_dir=str(run_dir), **{**base, **kw})


def log(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_training_lowers_the_loss(tmp_path):
    trainer = Trainer(small(tmp_path, epochs=3), sources=(Bars(64), Bars(8, seed=1)), progress=False)
    trainer.run()
    rows = log(tmp_path)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["train_loss"] < 0.8 * rows[0]["train_loss"]
    assert rows[-1]["train_acc"] > rows[0]["train_acc"]
    assert 0 < rows[-1]["val_nasfr"] < 1 and 0 <= rows[-1]["val_acc"] <= 1


def test_cpu_bf16_autocast_trains(tmp_path):
    """--cpu-bf16 is in effect (the same seeded run takes another float path) and still learns."""
    rows = {}
    for bf16 in (False, True):
        run = tmp_path / str(bf16)
        Trainer(small(run, epochs=2, cpu_bf16=bf16), sources=(Bars(64), Bars(8, seed=1)), progress=False).run()
        rows[bf16] = log(run)
    assert rows[True][0]["train_loss"] != rows[False][0]["train_loss"]
    assert rows[True][-1]["train_loss"] < 0.9 * rows[True][0]["train_loss"]


def test_checkpoint_contract(tmp_path):
    cfg = small(tmp_path, epochs=1, attention="causal-asa")
    Trainer(cfg, command="asasnn train --x", sources=(Bars(16), Bars(4, seed=1)), progress=False).run()
    for name in ("last.pt", "best.pt"):
        ck = torch.load(tmp_path / name, weights_only=True)
        assert {"config", "model", "data", "metrics", "train_config", "command", "optimizer", "scheduler",
                "epoch", "best", "rng"} <= set(ck)
        assert ck["data"] == {"dataset": "synthetic", "classes": ["right", "left", "down", "up"], "sensor": [32, 32],
                              "ds": 2, "dt_us": 20_000, "timesteps": 8}
        assert set(ck["metrics"]) == {"accuracy", "nasfr", "split", "data"}
        assert ck["metrics"]["split"] == "test" and ck["metrics"]["data"] == "synthetic test split, seed 0"
        assert isinstance(ck["metrics"]["accuracy"], float) and isinstance(ck["metrics"]["nasfr"], float)
        assert ck["command"] == "asasnn train --x" and ck["epoch"] == 1
        assert TrainConfig.from_dict(ck["train_config"]) == cfg
        net = SpikingNet(NetworkConfig.from_dict(ck["config"]))
        net.load_state_dict(ck["model"])
        assert net.cfg.attention.kind == "causal-asa" and net.cfg.input_size == (16, 16)


def test_resume_continues_the_same_run(tmp_path):
    def cfg(d):
        return small(d, epochs=2, event_drop=0.1, attention="asa")

    def sources():
        return Bars(32), Bars(8, seed=1)

    Trainer(cfg(tmp_path / "a"), sources=sources(), progress=False).run()
    Trainer(cfg(tmp_path / "b"), sources=sources(), progress=False).run(stop_after=1)  # "interrupted"
    first = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    torch.manual_seed(1234)  # a new process would start from another random state
    resumed = Trainer(cfg(tmp_path / "b"), sources=sources(), progress=False, resume=tmp_path / "b")
    assert resumed.epoch == 1 and resumed.best == first["best"]
    assert resumed.scheduler.last_epoch == first["scheduler"]["last_epoch"]
    assert resumed.optimizer.state_dict()["state"][0]["step"] == first["optimizer"]["state"][0]["step"]
    resumed.run()
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert b["epoch"] == 2 and a["best"] == b["best"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert log(tmp_path / "a")[1]["train_loss"] == log(tmp_path / "b")[1]["train_loss"]


SYNTH = ["--synthetic", "sensor=[32, 32]", "--synthetic", "duration_us=400000", "--synthetic", "num_subjects_train=1",
         "--synthetic", "num_subjects_test=1", "--synthetic", "clips_per_class_per_subject=1"]


def cli(module, argv):
    import argparse

    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.run(parser.parse_args(argv))


def test_train_and_eval_commands_on_synthetic(tmp_path, capsys):
    run = tmp_path / "run"
    argv = [*SYNTH, "--timesteps", "6", "--dt-us", "50000", "--ds", "1", "--epochs", "1", "--batch-size", "10",
            "--test-clips", "3", "--attention", "asa", "--threads", "1", "--run-dir", str(run), "--no-progress",
            "--cache-dir", str(tmp_path / "cache")]
    assert cli(train_cli, argv) == 0
    assert cli(train_cli, argv) == 2  # refuses to overwrite a run without --resume / --overwrite
    assert cli(train_cli, ["--resume", str(run), "--epochs", "2", "--no-progress"]) == 0
    assert [r["epoch"] for r in log(run)] == [1, 2]
    out = tmp_path / "eval.json"
    assert cli(eval_cli, [str(run / "best.pt"), "--json", str(out), "--no-progress", "--threads", "1"]) == 0
    report = json.loads(out.read_text())
    assert report["recordings"] == 10 and report["clips"] == 30 and report["split"] == "test"
    assert report["data"] == "synthetic test split, seed 0" and report["network"] == "tiny"
    assert report["attention"]["kind"] == "asa" and len(report["classes"]) == 10
    for key in ("nasfr", "spikes_per_sample", "sops_per_sample", "energy_j_per_sample"):
        assert report[key] >= 0
    assert set(report["accuracy"]) == {"clip", "vote"}
    assert [layer["name"] for layer in report["layers"]] == ["conv1", "conv2", "conv3", "fc1", "fc2"]
    # the machine that trained it (one, though resumed) and the one that evaluated it, named
    info = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "")
    assert len(report["trained_on"]) == 1 and report["trained_on"][0] == report["evaluated_on"]
    assert report["evaluated_on"].startswith(cpu) and f"torch {torch.__version__}" in report["evaluated_on"]
    assert "majority vote" in capsys.readouterr().out
    # the same model as a bundle directory gives the same numbers
    from models.runtime.bundle import save_bundle
    from models.runtime.export import build_card
    from training.checkpoint import load_model

    net, info = load_model(run / "best.pt")
    data = info["data"]
    card = build_card(net, classes=data["classes"], sensor=data["sensor"], ds=data["ds"], dt_us=data["dt_us"],
                      metrics=info["metrics"], dataset=data["dataset"], train_config=info["train_config"],
                      trained_on=info["machines"])
    save_bundle(tmp_path / "bundle", card, net, None)
    def evaluate(model, *extra):
        out = tmp_path / f"eval-{len(list(tmp_path.glob('eval-*.json')))}.json"
        assert cli(eval_cli, [str(model), "--json", str(out), "--no-progress", "--threads", "1", *extra]) == 0
        return json.loads(out.read_text())

    as_trained = evaluate(tmp_path / "bundle", "--arithmetic", "float32")
    assert as_trained["arithmetic"] == "float32" and report["arithmetic"] == "float32"
    assert as_trained["accuracy"] == report["accuracy"] and as_trained["nasfr"] == report["nasfr"]
    # a bundle is evaluated in its exact form by default: the form an export gives the checkpoint
    served, exported = evaluate(tmp_path / "bundle"), evaluate(run / "best.pt", "--arithmetic", "exact")
    assert served["arithmetic"] == exported["arithmetic"] == "exact"
    assert served["trained_on"] == exported["trained_on"] == report["trained_on"]  # the card keeps the machines
    assert served["accuracy"] == exported["accuracy"] and served["nasfr"] == exported["nasfr"]


def test_trains_on_a_dvs128_gesture_folder(tmp_path):
    """The real-data path: AEDAT 3.1 recordings + label CSVs in the release layout, one epoch."""
    from training.data import write_aedat3

    root = tmp_path / "DvsGesture"
    root.mkdir()
    rng = np.random.default_rng(0)
    for split, users in (("train", ["user01_led", "user02_led"]), ("test", ["user03_led"])):
        (root / f"trials_to_{split}.txt").write_text("".join(f"{u}.aedat\n" for u in users))
        for u in users:
            n = 6000
            t = np.sort(rng.integers(0, 1_200_000, n))
            write_aedat3(root / f"{u}.aedat", make_events(t, rng.integers(0, 128, n), rng.integers(0, 128, n), rng.integers(0, 2, n)))
            rows = [(1 + k % 11, 100_000 * k * 2, 100_000 * (k * 2 + 2)) for k in range(6)]
            (root / f"{u}_labels.csv").write_text("class,startTime_usec,endTime_usec\n" + "".join(f"{c},{a},{b}\n" for c, a, b in rows))
    cfg = TrainConfig(dataset="dvs128-gesture", root=str(tmp_path), timesteps=4, dt_us=40_000, ds=8, epochs=1, batch_size=4,
                      test_clips=2, threads=1, run_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"))
    trainer = Trainer(cfg, progress=False)
    assert len(trainer.train_data) == 12 and trainer.val_data.num_recordings == 6 and len(trainer.classes) == 11
    trainer.run()
    ck = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ck["data"]["sensor"] == [128, 128] and ck["data"]["dataset"] == "dvs128-gesture"
    assert tuple(ck["config"]["input_size"]) == (16, 16)
    assert ck["metrics"]["data"].startswith("dvs128-gesture test split")
    assert any((tmp_path / "cache").glob("events-dvs128-gesture/*")) and any((tmp_path / "cache").glob("frames-*"))
