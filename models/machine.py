"""The machine a run or a measurement ran on, in one line.

Results name it because the machine is part of the result: the same training command gives
bit-identical runs on one CPU and a different float trajectory on another (docs/results.md), and a
benchmark's figures belong to the machine that measured them.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def usable_cores() -> int:
    """The cores this process may run on: a container's or a CPU set's share, not the host's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def describe(device: Any = "cpu") -> str:
    """``"<CPU model> (<n> cores), torch <version>"`` (:func:`usable_cores`), plus the GPU's name on a
    CUDA device."""
    import torch

    text = f"{cpu_model()} ({usable_cores()} cores), torch {torch.__version__}"
    dev = torch.device(device)
    if dev.type == "cuda":
        text += f", GPU {torch.cuda.get_device_name(dev)}"
    return text


__all__ = ["cpu_model", "describe", "usable_cores"]
