"""Synthetic DVS gestures: the project's built-in dataset and demo camera (see docs/synthetic.md)."""

from models.synthetic.dataset import (
    CLASSES,
    SampleSpec,
    SyntheticConfig,
    SyntheticEventDataset,
    generate,
    generate_recording,
    live_packets,
    sample_list,
    statistics,
)
from models.synthetic.simulator import DvsParams, NoiseParams, Recording, Source

__all__ = [
    "CLASSES",
    "DvsParams",
    "NoiseParams",
    "Recording",
    "SampleSpec",
    "Source",
    "SyntheticConfig",
    "SyntheticEventDataset",
    "generate",
    "generate_recording",
    "live_packets",
    "sample_list",
    "statistics",
]
