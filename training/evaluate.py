"""Accuracy and redundancy numbers of a network on a frame dataset, from one forward pass per clip.

:func:`predict` runs the network over clips and keeps, per clip, the output rates and the spike
counts per layer (``NetOutput.counts`` summed over the window); :func:`summarize` turns those into
accuracy per clip and by majority vote over each recording's clips, NASFR, per-layer firing rates,
spike counts, SOPs and the energy proxy (:class:`models.instrument.EnergyModel`). No second pass.

"Per sample" below means per clip: one window of ``T`` timesteps, the network's input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from models.instrument import EnergyModel


@dataclass
class Predictions:
    """Per-clip results. ``item`` indexes the frame dataset, ``recording`` groups clips for the vote."""

    item: np.ndarray  # [N] int64
    recording: np.ndarray  # [N] int64
    label: np.ndarray  # [N] int64
    rates: np.ndarray  # [N, K] float32: output spikes per class per timestep
    counts: np.ndarray  # [N, L] float64: spikes per layer over the window

    @property
    def pred(self) -> np.ndarray:
        return self.rates.argmax(axis=1) if len(self.rates) else np.zeros(0, np.int64)

    @classmethod
    def concat(cls, parts: Sequence[Predictions]) -> Predictions:
        """Join parts (e.g. from several ranks), ordered by item."""
        if not parts:
            raise ValueError("nothing to concatenate")
        joined = cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in cls.__dataclass_fields__))
        order = np.argsort(joined.item, kind="stable")
        return cls(*(getattr(joined, f)[order] for f in cls.__dataclass_fields__))


@torch.no_grad()
def predict(
    net: torch.nn.Module,
    dataset,  # training.frames.FrameDataset
    items: Sequence[int] | None = None,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    amp: bool = False,
    num_workers: int = 0,
    progress: bool = False,
    desc: str = "eval",
) -> Predictions:
    """Run ``net`` (in eval mode) over ``items`` of ``dataset`` (all by default)."""
    from tqdm import tqdm

    device = torch.device(device)
    items = np.arange(len(dataset)) if items is None else np.asarray(items, dtype=np.int64)
    loader = DataLoader(Subset(dataset, items.tolist()), batch_size=batch_size, shuffle=False, num_workers=num_workers)
    was_training = net.training
    net.eval()
    rates, counts, labels = [], [], []
    use_amp = amp and device.type == "cuda"
    try:
        for x, y in tqdm(loader, desc=desc, disable=not progress, leave=False):
            x = x.to(device, non_blocking=True).transpose(0, 1)  # [B, T, ...] -> [T, B, ...]
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                out = net(x)
            rates.append(out.out.float().mean(0).cpu())
            counts.append(out.counts.double().sum(0).cpu())
            labels.append(y)
    finally:
        net.train(was_training)
    n = len(items)
    rec = np.array([dataset.recording_of(int(i)) for i in items], dtype=np.int64)
    if n == 0:
        k = getattr(getattr(net, "cfg", None), "num_classes", 0)
        return Predictions(items, rec, np.zeros(0, np.int64), np.zeros((0, k), np.float32), np.zeros((0, 0)))
    return Predictions(
        items, rec, torch.cat(labels).numpy().astype(np.int64),
        torch.cat(rates).numpy(), torch.cat(counts).numpy(),
    )


def majority_vote(pred: np.ndarray, groups: np.ndarray, rates: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per group, the class predicted by most of its clips; ``(group ids sorted, voted class)``.

    Ties go to the tied class with the largest summed output rate over the group's clips when
    ``rates`` is given, else to the lowest class index.
    """
    pred, groups = np.asarray(pred, dtype=np.int64), np.asarray(groups)
    ids = np.unique(groups)
    k = int(pred.max()) + 1 if pred.size else 0
    if rates is not None:
        k = max(k, np.asarray(rates).shape[1])
    voted = np.empty(ids.size, dtype=np.int64)
    for j, g in enumerate(ids):
        sel = groups == g
        votes = np.bincount(pred[sel], minlength=k).astype(np.float64)
        top = votes == votes.max()
        if rates is not None and top.sum() > 1:
            score = np.where(top, np.asarray(rates)[sel].sum(0), -np.inf)
            voted[j] = int(np.argmax(score))
        else:
            voted[j] = int(np.argmax(top))
    return ids, voted


def accuracies(p: Predictions) -> tuple[float, float]:
    """(clip accuracy, majority-vote accuracy per recording)."""
    if len(p.item) == 0:
        return math.nan, math.nan
    clip = float((p.pred == p.label).mean())
    ids, voted = majority_vote(p.pred, p.recording, p.rates)
    truth = np.array([p.label[p.recording == g][0] for g in ids])
    return clip, float((voted == truth).mean())


def summarize(p: Predictions, energy: EnergyModel, steps: int, classes: Sequence[str] | None = None) -> dict[str, Any]:
    """JSON-ready numbers of one evaluation (per-sample figures are means over clips)."""
    clip_acc, vote_acc = accuracies(p)
    counts = torch.from_numpy(p.counts)  # [N, L]
    mean_counts = counts.mean(0)
    rates = energy.layer_rates(mean_counts, steps)
    sops_layer = mean_counts * mean_counts.new_tensor(energy.fanout)
    ids, voted = majority_vote(p.pred, p.recording, p.rates)
    truth = np.array([p.label[p.recording == g][0] for g in ids])
    per_class = {}
    names = list(classes) if classes is not None else [str(i) for i in range(p.rates.shape[1])]
    for c, name in enumerate(names):
        sel = truth == c
        if sel.any():
            per_class[name] = float((voted[sel] == c).mean())
    return {
        "recordings": int(ids.size),
        "clips": len(p.item),
        "clips_per_recording": float(len(p.item) / max(ids.size, 1)),
        "timesteps": int(steps),
        "accuracy": {"clip": clip_acc, "vote": vote_acc},
        "per_class_vote_accuracy": per_class,
        # mean firing rate of each class's output over every clip: a class whose output never fires
        # can never be predicted (the rectangular surrogate gives such a neuron no gradient)
        "per_class_output_rate": {name: float(p.rates[:, c].mean()) for c, name in enumerate(names)},
        "nasfr": float(energy.nasfr(mean_counts, steps)),
        "spikes_per_sample": float(mean_counts.sum()),
        "sops_per_sample": float(energy.sops(mean_counts)),
        "energy_j_per_sample": float(energy.energy_j(mean_counts, steps)),
        "layers": [
            {
                "name": name,
                "neurons": int(n),
                "firing_rate": float(rates[i]),
                "spikes_per_sample": float(mean_counts[i]),
                "sops_per_sample": float(sops_layer[i]),
            }
            for i, (name, n) in enumerate(zip(energy.layer_names, energy.neurons))
        ],
        "energy_model": {
            "e_mac_j": energy.e_mac_j,
            "e_ac_j": energy.e_ac_j,
            "first_layer_macs_per_step": energy.first_layer_macs,
            "formula": "E = e_mac_j * first_layer_macs_per_step * timesteps + e_ac_j * sops",
        },
        "confusion_vote": _confusion(truth, voted, len(names)).tolist(),
    }


def _confusion(truth: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (truth, pred), 1)
    return m


def format_table(s: dict[str, Any]) -> str:
    """A readable report of :func:`summarize`'s output."""
    lines = [
        f"recordings {s['recordings']}, clips {s['clips']} ({s['clips_per_recording']:g} per recording), T={s['timesteps']}",
        f"accuracy: {100 * s['accuracy']['clip']:.2f} % per clip, {100 * s['accuracy']['vote']:.2f} % by majority vote",
        (
            f"NASFR {s['nasfr']:.4f}   spikes/sample {s['spikes_per_sample']:.1f}   "
            f"SOPs/sample {s['sops_per_sample']:.4g}   energy/sample {1e6 * s['energy_j_per_sample']:.4f} uJ"
        ),
    ]
    silent = [name for name, r in s.get("per_class_output_rate", {}).items() if r == 0]
    if silent:
        lines.append(f"outputs that never fired on these clips ({len(silent)}): {', '.join(silent)}")
    lines += ["", f"{'layer':<8}{'neurons':>10}{'rate':>10}{'spikes/sample':>16}{'SOPs/sample':>14}"]
    for layer in s["layers"]:
        lines.append(
            f"{layer['name']:<8}{layer['neurons']:>10}{layer['firing_rate']:>10.4f}"
            f"{layer['spikes_per_sample']:>16.1f}{layer['sops_per_sample']:>14.4g}"
        )
    return "\n".join(lines)


__all__ = ["Predictions", "accuracies", "format_table", "majority_vote", "predict", "summarize"]
