"""Give an untrained network weights under which every layer spikes.

A freshly initialised network driven by event frames goes silent after the first layer or two, so
a check on it ("ONNX agrees with PyTorch") would be vacuous in the deep layers, and a benchmark would
time a network unlike a trained one. :func:`calibrate_untrained` walks the layers in order and, from
the currents the layer receives on sample frames, sets each conv block's BatchNorm statistics (and
each linear layer's weight scale) so that the pre-LIF current has standard deviation ``gain`` and
mean ``shift``. Used by the tests, the benchmarks and smoke bundles; never by training.
:func:`untrained_network` builds and calibrates a preset in one call.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.network import SpikingNet


@torch.no_grad()
def calibrate_untrained(net: SpikingNet, frames: Tensor, gain: float = 0.6, shift: float = 0.1) -> SpikingNet:
    """Calibrate ``net`` in place on ``frames [T, B, C, H, W]``; returns it (eval mode)."""
    net.eval()
    for layer in net.layers:
        syn = layer.synapse
        target = _last_linear_or_conv(syn)
        seen: list[Tensor] = []
        handle = target.register_forward_hook(lambda m, i, o, seen=seen: seen.append(o.detach()))
        try:
            net(frames)
        finally:
            handle.remove()
        x = torch.cat(seen)
        bn = next((m for m in syn.modules() if isinstance(m, nn.BatchNorm2d)), None)
        if bn is not None:
            assert bn.running_mean is not None and bn.running_var is not None
            bn.running_mean.copy_(x.mean(dim=(0, 2, 3)))
            bn.running_var.copy_(x.var(dim=(0, 2, 3)) + 1e-6)
            bn.weight.fill_(gain)
            bn.bias.fill_(shift)
        else:  # linear: rescale so that the current has std `gain` (no bias to shift)
            std = float(x.std()) or 1.0
            target.weight.mul_(gain / std)
    return net


def untrained_network(
    preset_name: str, attention: str = "causal-asa", num_classes: int = 11, seed: int = 0
) -> SpikingNet:
    """A calibrated untrained network of a preset (``models.config.preset``), seeded."""
    from models.attention import AttentionConfig
    from models.config import preset
    from models.runtime.verify import random_frames

    torch.manual_seed(seed)
    cfg = preset(preset_name, num_classes, AttentionConfig(kind=attention))  # type: ignore[arg-type]
    frames = torch.from_numpy(random_frames(16, 4, (cfg.in_channels, *cfg.input_size), seed=seed))
    return calibrate_untrained(SpikingNet(cfg), frames)


def _last_linear_or_conv(syn: nn.Module) -> nn.Module:
    mods = [m for m in syn.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return mods[-1]
