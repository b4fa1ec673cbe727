"""TrainConfig: YAML recipes, flag precedence, the reproducing command, validation."""

import argparse
from dataclasses import fields

import pytest

from training.config import RECIPES_DIR, TrainConfig, add_config_arguments, config_from_args, recipe_path


def parse(argv):
    p = argparse.ArgumentParser()
    p.add_argument("--recipe")
    p.add_argument("--config")
    add_config_arguments(p)
    return p.parse_args(argv)


def test_flags_override_recipe_override_defaults(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("epochs: 7\nlr: 1.0e-3\nattention: asa\nsynthetic: {seed: 2, noise_scale: 0.5}\n")
    cfg = config_from_args(parse(["--config", str(y), "--lr", "0.01", "--synthetic", "seed=3", "--no-crop"]))
    assert (cfg.epochs, cfg.lr, cfg.attention, cfg.crop) == (7, 0.01, "asa", False)
    assert cfg.synthetic == {"seed": 3, "noise_scale": 0.5}  # flags merge into the file's mapping
    assert cfg.batch_size == TrainConfig().batch_size
    assert cfg.data_description == "synthetic test split, seed 3"


def test_resumed_config_is_the_base():
    base = TrainConfig(epochs=3, attention="causal-asa", run_dir="runs/x")
    cfg = config_from_args(parse(["--epochs", "5"]), base)
    assert (cfg.epochs, cfg.attention, cfg.run_dir) == (5, "causal-asa", "runs/x")


def test_command_round_trip():
    cfg = TrainConfig(attention="asa", lam=0.25, r=4, crop=False, synthetic={"seed": 1}, limit_train=10, run_dir="runs/t")
    argv = cfg.to_command().split()[2:]
    assert config_from_args(parse(argv)) == cfg
    assert TrainConfig().to_args() == []


def test_dict_round_trip_and_unknown_keys():
    cfg = TrainConfig(attention="sa", epochs=2)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown training option"):
        TrainConfig.from_dict({"epoch": 3})


@pytest.mark.parametrize(
    "kw",
    [
        {"dataset": "mnist"}, {"dataset": "dvs128-gesture"}, {"attention": "asa3"}, {"event_drop": 1.0},
        {"loss": "l1"}, {"surrogate": "sigmoid"}, {"surrogate_width": 0.0},
    ],
)
def test_invalid(kw):
    with pytest.raises(ValueError):
        TrainConfig(**kw)


@pytest.mark.parametrize("path", sorted(RECIPES_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_recipes_load(path):
    cfg = TrainConfig.from_yaml(path, TrainConfig(root="data/x") if "synthetic" not in path.stem else None)
    net = cfg.network_config(11, (128 // cfg.ds, 128 // cfg.ds))
    assert net.timesteps == cfg.timesteps


def test_surrogate_reaches_the_network():
    cfg = config_from_args(parse(["--network", "gesture3", "--surrogate", "atan", "--surrogate-width", "0.5"]))
    neuron = cfg.network_config(10, (32, 32)).neuron
    assert (neuron.surrogate, neuron.width) == ("atan", 0.5)
    paper = TrainConfig(network="gesture3").network_config(10, (32, 32)).neuron
    assert (paper.surrogate, paper.width) == ("rect", 0.25)  # the paper's, and the checkpoints' before the option


def test_paper_recipe_values():
    cfg = TrainConfig.from_yaml(recipe_path("gesture3-dvs128"), TrainConfig(root="data/x"))
    assert (cfg.network, cfg.timesteps, cfg.dt_us, cfg.ds, cfg.lr, cfg.weight_decay) == ("gesture3", 60, 15000, 4, 1e-4, 1e-4)
    assert (cfg.epochs, cfg.batch_size, cfg.loss, cfg.test_clips) == (200, 32, "mse", 10)
    night = TrainConfig.from_yaml(recipe_path("gait-night"), TrainConfig(root="data/x"))
    assert night.network_config(10, (32, 32)).attention.r == 8
    with pytest.raises(ValueError, match="unknown recipe"):
        recipe_path("nope")


def test_every_train_option_is_explained():
    """``asasnn train --help``: every option says what it does, not only its default."""
    import re

    from training.cli import train as train_cli

    parser = argparse.ArgumentParser(prog="asasnn train")
    train_cli.add_arguments(parser)
    actions = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    flags = {a.dest for a in actions}
    assert {f.name for f in fields(TrainConfig)} <= flags  # one flag per field
    for action in actions:
        text = re.sub(r"\(default: [^)]*\)$", "", action.help or "").strip()
        assert len(text.split()) >= 3, f"{action.option_strings[0]} has no help text beyond its default: {action.help!r}"
    for f in fields(TrainConfig):
        assert f.metadata.get("help"), f"TrainConfig.{f.name} has no option(..., help) sentence"
    # and argparse can render all of it (a stray % would break --help)
    shown = " ".join(parser.format_help().split())
    assert "width of one time bin (one timestep) in microseconds" in shown and "(default: 15000)" in shown
    assert "(default: --crop)" in shown
