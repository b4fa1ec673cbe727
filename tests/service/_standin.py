"""TEMPORARY stand-in for models.runtime.load_runner until the runtime lands (delete then)."""
from types import SimpleNamespace

import numpy as np
import torch

from models.instrument import EnergyModel
from models.runtime.bundle import load_bundle


class NetRunner:
    def __init__(self, bundle, capacity=64):
        self.card, self.net = bundle.card, bundle.net.eval()
        self.energy = EnergyModel.from_network(self.net)
        self.layer_names = self.net.layer_names
        self.num_classes = len(self.card.classes)
        self.frame_shape = self.card.frame_shape
        self.capacity = capacity
        self.device = "cpu"
        self._free = list(range(capacity))[::-1]
        self.state = self.net.init_state(capacity)

    def open(self):
        s = self._free.pop()
        self.reset(s)
        return s

    def reset(self, slot):
        for t in self.state:
            t[slot] = 0

    def close(self, slot):
        self._free.append(slot)

    @torch.no_grad()
    def step(self, slots, frames):
        idx = torch.tensor(slots)
        st = [s[idx] for s in self.state]
        out, new = self.net.step(torch.from_numpy(np.ascontiguousarray(frames)), st)
        for s, n in zip(self.state, new):
            s[idx] = n
        return SimpleNamespace(out=out.out, counts=out.counts, sops=self.energy.sops(out.counts),
                               energy_j=self.energy.energy_j(out.counts))


def load_runner(path, backend="torch", device="cpu"):
    return NetRunner(load_bundle(path, check_graph=False))
