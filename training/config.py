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
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from models.attention import AttentionConfig
from models.config import PRESETS, NetworkConfig, preset

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
DATASETS = ("synthetic", "dvs128-gesture", "dvs128-gait", "aedat4")
ATTENTIONS = ("none", "sa", "asa", "causal-asa")
LOSSES = ("mse", "ce")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run. Times in microseconds, rates in 1/epoch."""

    # data
    dataset: str = "synthetic"  # synthetic | dvs128-gesture | dvs128-gait | aedat4
    root: str | None = None  # dataset directory (real datasets)
    synthetic: dict[str, Any] = field(default_factory=dict)  # SyntheticConfig overrides
    cache_dir: str | None = None  # disk cache of decoded events and encoded frames
    val_split: str = "test"
    limit_train: int | None = None  # use a fixed random subset of this many recordings
    limit_val: int | None = None
    # frames (models.events.encode_events)
    timesteps: int = 16  # T: bins per training window
    dt_us: int = 15_000  # bin width
    ds: int = 4  # spatial downsampling
    # network
    network: str = "tiny"  # preset name (models.config.PRESETS)
    attention: str = "none"  # none | sa | asa | causal-asa
    variant: int = 2  # ASA-1 or ASA-2
    lam: float = 0.5
    r: int | None = None  # ASA-1 reduction; None: the preset's
    grad: str = "ste"  # ste | none (the reference code's gradient-free masks)
    rho: float = 0.8  # causal ASA running-average decay
    # optimisation
    loss: str = "mse"  # mse (paper) | ce (cross-entropy on the output rates)
    lr: float = 1e-4
    weight_decay: float = 1e-4
    epochs: int = 200
    batch_size: int = 32
    restart_epochs: int | None = None  # T_0 of the cosine warm restarts; None: epochs (one cycle)
    restart_mult: int = 1
    min_lr: float = 0.0
    # augmentation and evaluation protocol
    crop: bool = True  # random window of T bins from the recording; off: the first T bins
    event_drop: float = 0.0  # probability of dropping each event (binomial thinning of the counts)
    test_clips: int = 10  # clips per recording at validation, majority vote over them
    val_every: int = 1
    # run
    run_dir: str = "runs/default"
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # torch CPU threads per process; None: torch's default
    amp: bool = True  # mixed precision, used only on CUDA
    sync_bn: bool = False  # SyncBatchNorm under torchrun (CUDA only)

    def __post_init__(self) -> None:
        checks = [
            (self.dataset in DATASETS, f"dataset must be one of {DATASETS}, got {self.dataset!r}"),
            (self.dataset == "synthetic" or self.root, f"dataset {self.dataset!r} needs a root directory"),
            (self.network in PRESETS, f"network must be one of {PRESETS}, got {self.network!r}"),
            (self.attention in ATTENTIONS, f"attention must be one of {ATTENTIONS}, got {self.attention!r}"),
            (self.variant in (1, 2), f"variant must be 1 or 2, got {self.variant}"),
            (self.grad in ("ste", "none"), f"grad must be 'ste' or 'none', got {self.grad!r}"),
            (self.loss in LOSSES, f"loss must be one of {LOSSES}, got {self.loss!r}"),
            (self.timesteps >= 1 and self.dt_us >= 1 and self.ds >= 1, "timesteps, dt_us and ds must be >= 1"),
            (self.epochs >= 1 and self.batch_size >= 1, "epochs and batch_size must be >= 1"),
            (0.0 <= self.event_drop < 1.0, f"event_drop must be in [0, 1), got {self.event_drop}"),
            (self.test_clips >= 1 and self.val_every >= 1, "test_clips and val_every must be >= 1"),
            (0.0 < self.lam < 1.0, f"lam must be in (0, 1), got {self.lam}"),
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
        return cfg

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
    """One flag per :class:`TrainConfig` field (``--batch-size``); unset flags override nothing."""
    group = parser.add_argument_group("training options (override the recipe / config file)")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        tp = _base_type(_field_type(TrainConfig, f.name))
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f"(default: {default})"
        if tp is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif tp is dict:
            group.add_argument(
                flag, dest=f.name, type=_parse_kv, action="append", default=None, metavar="KEY=VALUE",
                help="synthetic source option, repeatable (e.g. seed=0, train_per_class=40)",
            )
        else:
            conv = (lambda s, t=tp: None if s.lower() == "none" else t(s)) if f.default is None else tp
            choices = {"dataset": DATASETS, "attention": ATTENTIONS, "loss": LOSSES, "network": PRESETS,
                       "variant": (1, 2), "grad": ("ste", "none")}.get(f.name)
            group.add_argument(flag, dest=f.name, type=conv, default=None, choices=choices, help=help_text)


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
    "overrides_from_args",
    "recipe_path",
]
