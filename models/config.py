"""Typed network configurations and the paper's presets (docs/training.md, "networks")."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from models.attention import AttentionConfig
from models.neuron import LIFParams

Pool = Literal["avg", "max"]


@dataclass(frozen=True)
class ConvSpec:
    """One conv block: 3x3 conv (no bias) - BatchNorm - optional 2x2 pool - [attention] - LIF."""

    channels: int
    pool: Pool | None = None
    dropout: float = 0.0  # on the block's output spikes, one mask shared by all timesteps


@dataclass(frozen=True)
class NetworkConfig:
    """Everything needed to rebuild a network; serialises to the model card as JSON."""

    name: str
    num_classes: int
    input_size: tuple[int, int]  # (H, W) of the frames after downsampling
    timesteps: int  # T of the training window; ASA-1's temporal mixing is built for it
    convs: tuple[ConvSpec, ...]
    fc: tuple[int, ...] = ()  # hidden fully connected widths
    fc_dropout: float = 0.0
    vote: int = 1  # output neurons per class, averaged (the Five network's voting layer)
    in_channels: int = 2
    neuron: LIFParams = field(default_factory=LIFParams)
    parametric: bool = False  # PLIF: learnt decay per layer
    attention: AttentionConfig = field(default_factory=AttentionConfig)

    @property
    def stepwise(self) -> bool:
        """Whether the network can be advanced one timestep at a time."""
        return self.attention.causal

    def with_attention(self, **kw: Any) -> NetworkConfig:
        return replace(self, attention=replace(self.attention, **kw))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NetworkConfig:
        d = dict(d)
        d["input_size"] = tuple(d["input_size"])
        d["convs"] = tuple(ConvSpec(**c) for c in d["convs"])
        d["fc"] = tuple(d.get("fc", ()))
        d["neuron"] = LIFParams(**d.get("neuron", {}))
        d["attention"] = AttentionConfig(**d.get("attention", {}))
        return cls(**d)


def preset(
    name: str,
    num_classes: int,
    attention: AttentionConfig | None = None,
    timesteps: int | None = None,
    input_size: tuple[int, int] | None = None,
) -> NetworkConfig:
    """The paper's networks and a tiny CPU one, by name.

    * ``gesture3``: LIF-SNN 3-conv for DVS128 Gesture / Gait-day (C64 - C128+AvgPool - C128+AvgPool -
      FC256 - FC), 2x32x32 input, T=60.
    * ``small3``: 32-32-32 channels, dropout 0.5, for Gait-night.
    * ``five``: five 128-channel convs with max pooling, FC512, FC 10*classes + voting, PLIF,
      2x128x128 input, T=20.
    * ``tiny``: 8-16-16 channels, FC64, 2x32x32 input, T=16: trains on a 2-core CPU in minutes;
      used by the tests and the bundled default.
    """
    att = attention or AttentionConfig()
    if name == "gesture3":
        cfg = NetworkConfig(
            name, num_classes, (32, 32), 60,
            (ConvSpec(64), ConvSpec(128, "avg"), ConvSpec(128, "avg", dropout=0.1)),
            fc=(256,), fc_dropout=0.1, attention=att,
        )
    elif name == "small3":
        cfg = NetworkConfig(
            name, num_classes, (32, 32), 60,
            (ConvSpec(32), ConvSpec(32, "avg"), ConvSpec(32, "avg", dropout=0.5)),
            fc=(256,), fc_dropout=0.5, attention=replace(att, r=8) if att.kind == "asa" else att,
        )
    elif name == "five":
        cfg = NetworkConfig(
            name, num_classes, (128, 128), 20,
            tuple(ConvSpec(128, "max") for _ in range(5)),
            fc=(512,), fc_dropout=0.5, vote=10, parametric=True, attention=att,
        )
    elif name == "tiny":
        cfg = NetworkConfig(
            name, num_classes, (32, 32), 16,
            (ConvSpec(8), ConvSpec(16, "avg"), ConvSpec(16, "avg")),
            fc=(64,), attention=att,
        )
    else:
        raise ValueError(f"unknown network preset {name!r}; choose one of {PRESETS}")
    if timesteps is not None:
        cfg = replace(cfg, timesteps=timesteps)
    if input_size is not None:
        cfg = replace(cfg, input_size=tuple(input_size))
    return cfg


PRESETS = ("gesture3", "small3", "five", "tiny")
