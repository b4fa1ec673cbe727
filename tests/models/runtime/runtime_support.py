"""Networks and bundles for the runtime tests (imported by conftest.py and the tests).

Every network is calibrated (:func:`models.runtime.calibrate.calibrate_untrained`) so that all of
its layers spike on the test frames; agreement checks on a silent layer would prove nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from models.attention import AttentionConfig
from models.config import preset
from models.network import SpikingNet
from models.runtime.bundle import Bundle, load_bundle
from models.runtime.calibrate import calibrate_untrained
from models.runtime.export import build_card, export_bundle, random_frames

CLASSES = [f"class{i}" for i in range(5)]

# These networks are small: threads buy nothing, and on a busy 2-core machine spinning OpenMP /
# ONNX Runtime threads make every step orders of magnitude slower.
torch.set_num_threads(1)


@dataclass
class Spec:
    preset: str
    attention: str
    timesteps: int
    input_size: tuple[int, int]
    sensor: tuple[int, int]
    ds: int


SPECS = {
    "tiny-none": Spec("tiny", "none", 16, (32, 32), (128, 128), 4),
    "tiny-causal": Spec("tiny", "causal-asa", 16, (32, 32), (128, 128), 4),
    "gesture3-causal": Spec("gesture3", "causal-asa", 12, (16, 16), (64, 64), 4),
    "tiny-asa": Spec("tiny", "asa", 4, (32, 32), (128, 128), 4),
    "gesture3-paper": Spec("gesture3", "causal-asa", 60, (32, 32), (128, 128), 4),  # the paper's size
}
STEP_KINDS = ("tiny-none", "tiny-causal", "gesture3-causal")


def make_net(key: str, seed: int = 0) -> SpikingNet:
    s = SPECS[key]
    torch.manual_seed(seed)
    cfg = preset(s.preset, len(CLASSES), AttentionConfig(kind=s.attention), s.timesteps, s.input_size)
    net = SpikingNet(cfg).eval()
    frames = torch.from_numpy(random_frames(s.timesteps, 4, (2, *s.input_size), seed=seed + 100))
    return calibrate_untrained(net, frames)


def export(key: str, out: Path, seed: int = 0, steps: int | None = None) -> Bundle:
    s = SPECS[key]
    net = make_net(key, seed)
    card = build_card(
        net, classes=CLASSES, sensor=s.sensor, ds=s.ds, dt_us=20_000, hop=2 if s.attention == "asa" else None
    )
    export_bundle(net, card, out, steps=steps)
    return load_bundle(out)
