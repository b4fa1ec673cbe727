"""The typed training configuration: one dataclass, read from YAML recipes and command-line flags.

Precedence, lowest first: the dataclass defaults, a recipe / ``--config`` YAML file, the training
configuration stored in a checkpoint being resumed, explicit flags. :meth:`TrainConfig.to_args`
writes the flags that rebuild a configuration, so every run records a command that reproduces it.
"""

from __future__ import annotations

import argparse
import shlex
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from models.attention import AttentionConfig
from models.config import PRESETS, NetworkConfig, preset
from models.neuron import Surrogate

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
DATASETS = ("synthetic", "dvs128-gesture", "dvs128-gait", "aedat4")
ATTENTIONS = ("none", "sa", "asa", "causal-asa")
LOSSES = ("mse", "ce")
SURROGATES = typing.get_args(Surrogate)  # the neuron's: ("rect", "atan")


def option(default: Any = MISSING, doc: str = "", *, factory: Any = MISSING, choices: Any = None) -> Any:
    """A :class:`TrainConfig` field: its default and its flag's ``--help`` sentence (and choices).

    The sentence says what the option does, with units and accepted values; ``asasnn train --help``
    shows it followed by the default (:func:`add_config_arguments`).
    """
    metadata = {"help": doc, "choices": choices}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run. Times in microseconds, rates in 1/epoch."""

    # data
    dataset: str = option(
        "synthetic",
        "event dataset to train on: synthetic (the built-in simulated DVS gestures), dvs128-gesture, "
        "dvs128-gait or aedat4 (.aedat4 recordings listed in a labels.csv)",
        choices=DATASETS,
    )
    root: str | None = option(
        None,
        "dataset directory (the release folder of dvs128-gesture, one condition of dvs128-gait, the "
        "folder with labels.csv for aedat4); required unless the dataset is synthetic",
    )
    synthetic: dict[str, Any] = option(  # noqa: RUF009 (option is dataclasses.field)
        doc="override one field of the synthetic source (models.synthetic.SyntheticConfig), the value in "
        "YAML, e.g. seed=0, sensor=[64, 64], num_subjects_train=20; repeatable",
        factory=dict,
    )
    cache_dir: str | None = option(
        None,
        "directory of the disk cache of decoded events and encoded frames, shared by runs; "
        "none: no disk cache, every run encodes its frames again",
    )
    val_split: str = option(
        "test",
        "dataset split validated on, whose accuracy picks best.pt: test (the paper's practice) or "
        "another split the dataset has",
    )
    limit_train: int | None = option(
        None, "train on a fixed random subset of this many recordings; none: all of them"
    )
    limit_val: int | None = option(
        None, "validate on a fixed random subset of this many recordings; none: all of them"
    )
    # frames (models.events.encode_events)
    timesteps: int = option(16, "timesteps T of a training window and of the network, bins of dt_us each")
    dt_us: int = option(15_000, "width of one time bin (one timestep) in microseconds")
    ds: int = option(
        4,
        "spatial downsampling: each ds x ds block of sensor pixels is one input pixel "
        "(a 128x128 sensor with ds 4 gives 32x32 frames)",
    )
    # network
    network: str = option(
        "tiny",
        "network preset (models.config.PRESETS): gesture3 (the paper's 3-conv), small3 (its 32-channel "
        "variant), five (LIF-SNN-Five with PLIF and voting) or tiny (the small CPU network)",
        choices=PRESETS,
    )
    attention: str = option(
        "none",
        "attention in every conv block: none (vanilla SNN), sa (spatial attention alone), asa (the "
        "paper's window form) or causal-asa (the streaming form)",
        choices=ATTENTIONS,
    )
    variant: int = option(
        2,
        "ASA variant: 1 (ASA-1, learnt temporal mixing T -> T/r -> T of the channel scores) or "
        "2 (ASA-2, the pooled scores used directly)",
        choices=(1, 2),
    )
    lam: float = option(
        0.5,
        "share of channels and timesteps ASA's masks select (the top floor(lam*C) channels and "
        "floor(lam*T) timesteps), in (0, 1)",
    )
    r: int | None = option(None, "ASA-1's temporal reduction r, a whole number >= 1; none: the preset's")
    grad: str = option(
        "ste",
        "gradient through ASA's hard masks: ste (straight-through) or none (the masks stop the "
        "gradient, as in the reference code)",
        choices=("ste", "none"),
    )
    rho: float = option(
        0.8, "decay per timestep of causal ASA's running average of the channel scores, in [0, 1)"
    )
    surrogate: str = option(
        "rect",
        "surrogate gradient of the spike: rect (the paper's: 1/(2w) within w of the threshold, 0 "
        "elsewhere, so a neuron whose potential stays further below gets no gradient) or atan (never "
        "exactly 0: a silent neuron can learn to fire again)",
        choices=SURROGATES,
    )
    surrogate_width: float = option(
        0.25, "surrogate width w: rect's half-width, atan's 1/alpha (larger: smoother, wider)"
    )
    # optimisation
    loss: str = option(
        "mse",
        "training loss: mse (output firing rate against the one-hot label, the paper's) or ce "
        "(cross-entropy with the rates as logits)",
        choices=LOSSES,
    )
    lr: float = option(1e-4, "Adam's learning rate at the start of each cosine cycle")
    weight_decay: float = option(1e-4, "Adam's weight decay (L2 penalty)")
    epochs: int = option(200, "epochs to train, each one pass over the training recordings")
    batch_size: int = option(32, "recordings per batch, per process under torchrun")
    restart_epochs: int | None = option(
        None,
        "epochs of the first cycle of the cosine schedule with warm restarts (T_0); none: epochs, "
        "one cosine over the run",
    )
    restart_mult: int = option(
        1, "factor by which each cosine cycle is longer than the one before (T_mult, a whole number >= 1)"
    )
    min_lr: float = option(0.0, "learning rate at the end of every cosine cycle (eta_min)")
    # augmentation and evaluation protocol
    crop: bool = option(
        True, "train on a window of T bins at a random start in each recording (--no-crop: its first T bins)"
    )
    event_drop: float = option(
        0.0,
        "probability of dropping each event of a training window, in [0, 1) (binomial thinning of "
        "the frame counts)",
    )
    test_clips: int = option(
        10,
        "validation windows of T bins per recording, evenly spaced; the recording's prediction is the "
        "majority vote over them",
    )
    val_every: int = option(1, "validate every this many epochs (and after the last one)")
    # run
    run_dir: str = option(
        "runs/default", "directory of the run: config.yaml, command.txt, metrics.jsonl, last.pt, best.pt"
    )
    seed: int = option(0, "random seed of the initial weights, data order, crops, event drop and dropout")
    num_workers: int = option(0, "DataLoader worker processes per training process; 0: load in the process")
    device: str = option(
        "auto", "where to train: auto (CUDA when present, else the CPU), cpu, cuda or cuda:N"
    )
    threads: int | None = option(
        None, "torch CPU threads per process, 1 being fastest on a small, busy CPU; none: torch's default"
    )
    amp: bool = option(
        True, "mixed precision (float16 autocast with gradient scaling) on CUDA; ignored on the CPU"
    )
    cpu_bf16: bool = option(
        False,
        "bfloat16 autocast on the CPU: convolutions and linear layers in bfloat16, LIF, attention "
        "and loss in float32; pays where the CPU has bfloat16 units (Intel AMX / AVX512-BF16), "
        "costs where it has none; validation stays float32",
    )
    sync_bn: bool = option(False, "SyncBatchNorm instead of BatchNorm under torchrun (CUDA only)")

    def __post_init__(self) -> None:
        checks = [
            (self.dataset in DATASETS, f"dataset must be one of {DATASETS}, got {self.dataset!r}"),
            (self.dataset == "synthetic" or self.root, f"dataset {self.dataset!r} needs a root directory"),
            (self.network in PRESETS, f"network must be one of {PRESETS}, got {self.network!r}"),
            (self.attention in ATTENTIONS, f"attention must be one of {ATTENTIONS}, got {self.attention!r}"),
            (self.variant in (1, 2), f"variant must be 1 or 2, got {self.variant}"),
            (self.grad in ("ste", "none"), f"grad must be 'ste' or 'none', got {self.grad!r}"),
            (self.loss in LOSSES, f"loss must be one of {LOSSES}, got {self.loss!r}"),
            (self.surrogate in SURROGATES, f"surrogate must be one of {SURROGATES}, got {self.surrogate!r}"),
            (self.surrogate_width > 0, f"surrogate_width must be > 0, got {self.surrogate_width}"),
            (self.timesteps >= 1 and self.dt_us >= 1 and self.ds >= 1, "timesteps, dt_us and ds must be >= 1"),
            (self.epochs >= 1 and self.batch_size >= 1, "epochs and batch_size must be >= 1"),
            (0.0 <= self.event_drop < 1.0, f"event_drop must be in [0, 1), got {self.event_drop}"),
            (self.test_clips >= 1 and self.val_every >= 1, "test_clips and val_every must be >= 1"),
            (0.0 < self.lam < 1.0, f"lam must be in (0, 1), got {self.lam}"),
            (self.lr > 0 and 0 <= self.min_lr <= self.lr, f"lr must be > 0 and min_lr in [0, lr], got {self.lr}, {self.min_lr}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    # ---- derived objects ------------------------------------------------------------------------
    def attention_config(self) -> AttentionConfig:
        kw: dict[str, Any] = {
            "kind": self.attention,
            "variant": self.variant,
            "lam": self.lam,
            "grad": self.grad,
            "rho": self.rho,
        }
        if self.r is not None:
            kw["r"] = self.r
        return AttentionConfig(**kw)

    def network_config(self, num_classes: int, input_size: tuple[int, int]) -> NetworkConfig:
        cfg = preset(self.network, num_classes, self.attention_config(), self.timesteps, input_size)
        if self.r is not None and cfg.attention.r != self.r:  # presets may set their own r
            cfg = cfg.with_attention(r=self.r)
        return replace(cfg, neuron=replace(cfg.neuron, surrogate=self.surrogate, width=self.surrogate_width))

    @property
    def data_description(self) -> str:
        """Where validation numbers come from, e.g. ``synthetic test split, seed 0``."""
        if self.dataset == "synthetic":
            return f"synthetic {self.val_split} split, seed {self.synthetic.get('seed', 0)}"
        return f"{self.dataset} {self.val_split} split ({self.root})"

    # ---- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**{k: _coerce(cls, k, v) for k, v in d.items()})

    @classmethod
    def from_yaml(cls, path: str | Path, base: TrainConfig | None = None) -> TrainConfig:
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a training config is a YAML mapping")  # noqa: TRY004 (bad content, not a bad argument)
        return (base or cls()).merged(data)

    def merged(self, overrides: dict[str, Any]) -> TrainConfig:
        d = self.to_dict()
        d.update(overrides)
        return TrainConfig.from_dict(d)

    def to_args(self) -> list[str]:
        """Flags (differing from the defaults) that rebuild this configuration."""
        default, out = _defaults(), []
        for f in fields(self):
            v = getattr(self, f.name)
            if v == default[f.name]:
                continue
            flag = "--" + f.name.replace("_", "-")
            if isinstance(v, bool):
                out.append(flag if v else "--no-" + f.name.replace("_", "-"))
            elif f.name == "synthetic":
                for k, x in sorted(v.items()):
                    out += [flag, f"{k}={x}"]
            elif v is not None:
                out += [flag, str(v)]
        return out

    def to_command(self) -> str:
        return shlex.join(["asasnn", "train", *self.to_args()])


def _field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _base_type(tp: Any) -> Any:
    """``int | None`` -> ``int``; other types unchanged."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0]
    return typing.get_origin(tp) or tp


def _coerce(cls: type, name: str, value: Any) -> Any:
    tp = _base_type(_field_type(cls, name))
    if value is None or tp is dict:
        return dict(value) if tp is dict and value is not None else value
    if tp is bool:
        if isinstance(value, str):
            return value.lower() in ("1", "true", "yes", "on")
        return bool(value)
    if tp is float:
        return float(value)
    if tp is int:
        return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
    return tp(value)


def recipe_path(name: str) -> Path:
    """A shipped recipe by name (``gesture3-dvs128``) or a path to a YAML file."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    found = RECIPES_DIR / f"{name}.yaml"
    if not found.is_file():
        names = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
        raise ValueError(f"unknown recipe {name!r}; shipped recipes: {', '.join(names)}")
    return found


def _parse_kv(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), yaml.safe_load(value)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`TrainConfig` field (``--batch-size``), its help the field's ``option``
    sentence and default; unset flags override nothing."""
    group = parser.add_argument_group("training options (override the recipe / config file)")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        tp = _base_type(_field_type(TrainConfig, f.name))
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        doc = f.metadata["help"].replace("%", "%%")  # argparse formats help with %
        if tp is bool:
            help_text = f"{doc} (default: {'--' if default else '--no-'}{f.name.replace('_', '-')})"
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif tp is dict:
            group.add_argument(flag, dest=f.name, type=_parse_kv, action="append", default=None,
                               metavar="KEY=VALUE", help=doc)
        else:
            conv = (lambda s, t=tp: None if s.lower() == "none" else t(s)) if f.default is None else tp
            help_text = f"{doc} (default: {'none' if default is None else default})"
            group.add_argument(flag, dest=f.name, type=conv, default=None, choices=f.metadata["choices"],
                               help=help_text)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The options given explicitly on the command line."""
    out: dict[str, Any] = {}
    for f in fields(TrainConfig):
        v = getattr(args, f.name, None)
        if v is None:
            continue
        out[f.name] = dict(v) if f.name == "synthetic" else v
    return out


def config_from_args(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """``base`` (or the defaults), then ``--recipe`` / ``--config`` files, then explicit flags."""
    d = base.to_dict() if base is not None else _defaults()  # validated once everything is merged
    for attr in ("recipe", "config"):
        path = getattr(args, attr, None)
        if path:
            data = yaml.safe_load(recipe_path(path).read_text()) or {}
            if not isinstance(data, dict):
                raise ValueError(f"{path}: a training config is a YAML mapping")
            d.update(data)
    over = overrides_from_args(args)
    if "synthetic" in over:
        over["synthetic"] = {**d.get("synthetic", {}), **over["synthetic"]}
    d.update(over)
    return TrainConfig.from_dict(d)


def _defaults() -> dict[str, Any]:
    return {f.name: (f.default if f.default is not MISSING else f.default_factory()) for f in fields(TrainConfig)}  # type: ignore[misc]


__all__ = [
    "RECIPES_DIR",
    "TrainConfig",
    "add_config_arguments",
    "config_from_args",
    "option",
    "overrides_from_args",
    "recipe_path",
]
