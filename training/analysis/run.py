"""The analysis pass: load models and their test data, run each model once with the probes attached,
and turn what the probes accumulated into the numbers of the report.

One forward pass per batch (:meth:`models.network.SpikingNet.forward` with a
:class:`~training.analysis.probes.ProbeSet`) gives the accuracy, the spike counts for SOPs / energy
(:func:`training.evaluate.summarize`, the numbers ``asasnn eval`` prints), the N-SFR maps
(:class:`models.instrument.SpikeMapProbe`), the MPDs and QE, the region statistics and the ASA masks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.instrument import EnergyModel, SpikeMapProbe
from training.analysis import metrics as M
from training.analysis.probes import AttentionRecorder, MembraneStatsProbe, ProbeSet, RegionProbe


@dataclass(frozen=True)
class AnalysisOptions:
    """Data selection and the thresholds of the heuristics (all recorded in the report)."""

    data: str | None = None  # dataset name; None: the one the model was trained on (else synthetic)
    root: str | None = None
    split: str = "test"
    synthetic: dict[str, Any] = field(default_factory=dict)  # SyntheticConfig overrides
    clips: int | None = None  # clips per recording (default: the run's)
    limit: int | None = None  # a fixed random subset of this many recordings
    cache_dir: str | None = None
    batch_size: int = 32
    device: str = "auto"
    num_workers: int = 0
    region_mass: float = 0.8  # event region: densest pixels holding this share of a clip's events
    noise_ratio: float = 1.0  # noise pattern: spikes at least this many times denser off the region than on it
    min_rate: float = 0.01  # null pattern: C-SFR below this
    ghost_threshold: float = 0.9  # near-duplicate spike features: cosine similarity >= this
    mpd_range: tuple[float, float] = (-2.0, 2.0)
    mpd_bins: int = 160
    timestep: int | None = None  # timestep of the spike-feature grids (default: T // 2)
    keep_samples: int = 4  # samples whose ASA masks and spatial maps are drawn
    progress: bool = False


@dataclass
class LayerResult:
    name: str
    conv: bool
    neurons: int
    nsfr: np.ndarray  # [T, C, H, W] or [T, N]
    csfr_t: np.ndarray  # [T, C]
    tsfr: np.ndarray  # [T]
    firing_rate: float
    spikes_per_sample: float
    sops_per_sample: float
    hist: np.ndarray  # [C, bins], all timesteps
    out_of_range: float  # share of membrane values outside the histogram range
    ptd: np.ndarray  # [C]
    variance: np.ndarray  # [C]
    qe_channel: np.ndarray  # [C]
    qe: float
    bg_share: np.ndarray | None = None  # conv only, [C]
    entropy: np.ndarray | None = None
    pattern: np.ndarray | None = None
    sim: np.ndarray | None = None  # [C, C]
    ghost: dict[str, Any] | None = None
    uniform_bg_share: float | None = None  # background share of a channel firing evenly everywhere
    density_ratio: np.ndarray | None = None  # [C]: background / event-region spike density

    @property
    def csfr(self) -> np.ndarray:
        return self.csfr_t.mean(axis=0)


@dataclass
class AttentionResult:
    layer: str
    kind: str
    freq: np.ndarray  # [T, C]: share of samples putting (t, c) in the important group
    stability: np.ndarray  # [C]: mean share of steps t -> t+1 keeping the group
    agreement: float
    masks: np.ndarray  # [k, T, C]
    maps: np.ndarray  # [k, 2, T', H, W]


@dataclass
class ModelResult:
    name: str
    path: str
    network: str
    attention: str
    timesteps: int
    v_th: float
    summary: dict[str, Any]  # training.evaluate.summarize
    layers: list[LayerResult]
    tsfr: np.ndarray  # network T-SFR [T]
    nasfr: float
    attn: list[AttentionResult]
    inputs: np.ndarray  # [k, H, W] event counts of the first samples (over the window)
    region_freq: np.ndarray  # [H, W]: share of samples with each input pixel in the event region
    data: str
    seconds: float


def model_name(path: str | Path, attention: str) -> str:
    """``runs/tiny-asa/best.pt`` -> ``tiny-asa``; a bundle or other file -> its name; plus the attention."""
    p = Path(path)
    base = p.parent.name if p.name in ("best.pt", "last.pt") else p.stem if p.suffix == ".pt" else p.name
    return base if attention in base else f"{base} ({attention})"


def test_dataset(info: dict[str, Any], opts: AnalysisOptions):
    """The frame dataset a model is analysed on, built like training's validation data."""
    from training.config import TrainConfig
    from training.data_source import frame_dataset, open_source

    data = info["data"]
    if info.get("train_config"):
        base = TrainConfig.from_dict(info["train_config"])
    else:  # a bundle without its training configuration: the dataset it names, default options
        base = TrainConfig(dataset=opts.data or data.get("dataset") or "synthetic", root=opts.root)
    over: dict[str, Any] = {"val_split": opts.split, "limit_val": opts.limit, "timesteps": data["timesteps"],
                            "dt_us": data["dt_us"], "ds": data["ds"]}
    if opts.data is not None and opts.data != base.dataset:
        over.update(dataset=opts.data, root=opts.root, synthetic={})
    for key, value in (("root", opts.root), ("test_clips", opts.clips), ("cache_dir", opts.cache_dir)):
        if value is not None:
            over[key] = value
    if opts.synthetic:
        over["synthetic"] = {**(over.get("synthetic", base.synthetic)), **opts.synthetic}
    cfg = base.merged(over)
    source = open_source(cfg, cfg.val_split)
    return frame_dataset(cfg, source, cfg.val_split, train=False), cfg.data_description


@torch.no_grad()
def analyze_model(net, dataset, classes: list[str], opts: AnalysisOptions, device: torch.device) -> dict[str, Any]:
    """One pass over ``dataset`` with every probe attached; returns the raw accumulations."""
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from training.evaluate import Predictions, summarize

    net = net.to(device).eval()
    spikes, mem = SpikeMapProbe(), MembraneStatsProbe(M.mpd_edges(*opts.mpd_range, opts.mpd_bins))
    region = RegionProbe(opts.region_mass)
    probe = ProbeSet([spikes, mem, region])
    recorder = AttentionRecorder(net, opts.keep_samples)
    loader = DataLoader(dataset, batch_size=opts.batch_size, shuffle=False, num_workers=opts.num_workers)
    rates, counts, labels, inputs = [], [], [], []
    kept, start, clips = 0, 0, getattr(dataset, "clips", 1)
    try:
        for x, y in tqdm(loader, desc="analyze", disable=not opts.progress, leave=False):
            x = x.to(device).transpose(0, 1)  # [T, B, 2, H, W]
            # the clips drawn: the middle clip of successive recordings
            want = (torch.arange(start, start + x.shape[1]) % clips) == clips // 2
            start += x.shape[1]
            recorder.want = want
            region.set_input(x)
            out = net(x, probe)
            rates.append(out.out.float().mean(0).cpu())
            counts.append(out.counts.double().sum(0).cpu())
            labels.append(y)
            if kept < opts.keep_samples and want.any():
                inputs.append(x[:, want.to(x.device)][:, : opts.keep_samples - kept].sum(dim=(0, 2)).cpu())
                kept += inputs[-1].shape[0]
    finally:
        recorder.close()
    items = np.arange(len(dataset))
    preds = Predictions(
        items, np.array([dataset.recording_of(int(i)) for i in items], dtype=np.int64),
        torch.cat(labels).numpy().astype(np.int64), torch.cat(rates).numpy(), torch.cat(counts).numpy(),
    )
    energy = EnergyModel.from_network(net)
    summary = summarize(preds, energy, net.cfg.timesteps, classes)
    return {"spikes": spikes, "mem": mem, "region": region, "recorder": recorder, "summary": summary,
            "inputs": torch.cat(inputs).numpy() if inputs else np.zeros((0, *net.cfg.input_size))}


def build_result(net, raw: dict[str, Any], opts: AnalysisOptions, name: str, path: str, data: str, seconds: float) -> ModelResult:
    """Metrics from the accumulations of :func:`analyze_model`."""
    spikes, mem, region, rec, summary = raw["spikes"], raw["mem"], raw["region"], raw["recorder"], raw["summary"]
    n = spikes.samples
    edges = mem.edges
    v_th = net.cfg.neuron.v_th
    layers: list[LayerResult] = []
    nsfrs = []
    for i, lname in enumerate(net.layer_names):
        nsfr = M.n_sfr(spikes.maps[i].cpu().numpy(), n)
        nsfrs.append(nsfr)
        st = {k: v.numpy() for k, v in mem.stats[i].items()}
        hist = st["hist"].sum(axis=0)
        nval = st["n"].sum(axis=0)
        ls = summary["layers"][i]
        lr = LayerResult(
            name=lname, conv=nsfr.ndim == 4, neurons=int(np.prod(nsfr.shape[1:])), nsfr=nsfr,
            csfr_t=M.c_sfr(nsfr), tsfr=M.t_sfr(nsfr), firing_rate=ls["firing_rate"],
            spikes_per_sample=ls["spikes_per_sample"], sops_per_sample=ls["sops_per_sample"], hist=hist,
            out_of_range=float((st["below"].sum() + st["above"].sum()) / max(nval.sum(), 1)),
            ptd=M.ptd(hist, edges, v_th),
            variance=M.variance(nval, st["sum"].sum(axis=0), st["sumsq"].sum(axis=0)),
            qe_channel=st["qe"].sum(axis=0) / np.maximum(nval, 1), qe=float(st["qe"].sum() / max(nval.sum(), 1)),
        )
        if lr.conv:
            inside, total = region.inside[i].numpy().sum(0), region.total[i].numpy().sum(0)
            mean_map = nsfr.mean(axis=0)  # [C, H, W]
            lr.bg_share = M.background_share(total, inside)
            lr.uniform_bg_share = 1.0 - region.area[i] / max(region.samples, 1)
            lr.density_ratio = M.background_density_ratio(lr.bg_share, lr.uniform_bg_share)
            lr.entropy = M.spatial_entropy(mean_map)
            lr.pattern = M.classify_patterns(lr.csfr, lr.density_ratio, opts.min_rate, opts.noise_ratio)
            lr.sim = M.feature_similarity(nsfr.transpose(1, 0, 2, 3))
            lr.ghost = M.ghost_stats(lr.sim, lr.pattern != M.NULL, opts.ghost_threshold)
        layers.append(lr)
    attn = []
    for i in rec.layers:
        freq = (rec.freq[i] / rec.samples[i]).numpy()
        attn.append(AttentionResult(
            layer=net.layer_names[i], kind=rec.kinds[i], freq=freq,
            stability=(rec.stable[i] / rec.samples[i]).numpy(), agreement=M.mask_agreement(freq),
            masks=rec.masks[i].numpy(), maps=rec.maps[i].numpy() if i in rec.maps else np.zeros((0,)),
        ))
    region_freq = (region.region_sum / max(region.samples, 1)).numpy()
    return ModelResult(
        name=name, path=path, network=net.cfg.name, attention=net.cfg.attention.kind,
        timesteps=net.cfg.timesteps, v_th=v_th, summary=summary, layers=layers,
        tsfr=M.network_t_sfr(nsfrs), nasfr=M.nasfr(nsfrs), attn=attn, inputs=raw["inputs"],
        region_freq=region_freq, data=data, seconds=seconds,
    )


def analyze(paths: list[str], opts: AnalysisOptions, names: list[str] | None = None, log=print) -> list[ModelResult]:
    """Analyse every model on its test data (datasets shared between models that use the same one)."""
    from training.checkpoint import load_model
    from training.distributed import pick_device

    device = pick_device(opts.device)
    results, datasets = [], {}
    for k, path in enumerate(paths):
        t0 = time.perf_counter()
        net, info = load_model(path)
        if not info.get("data"):
            raise ValueError(f"{path}: no data description (dataset, binning) in the checkpoint or card")
        if opts.timestep is not None and not 0 <= opts.timestep < net.cfg.timesteps:
            raise ValueError(f"--timestep must be in 1..{net.cfg.timesteps} for {path}")
        tc = info.get("train_config") or {}
        key = repr(([tc.get(k) for k in ("dataset", "root", "synthetic", "test_clips", "seed")], info["data"]))
        if key not in datasets:
            datasets[key] = test_dataset(info, opts)
            datasets[key][0].warm(opts.progress, "encode")
        dataset, desc = datasets[key]
        name = names[k] if names and k < len(names) else model_name(info["path"], net.cfg.attention.kind)
        log(f"analyze {name}: {info['path']} on the {desc} ({len(dataset)} clips)")
        raw = analyze_model(net, dataset, list(info["data"]["classes"]), opts, device)
        results.append(build_result(net, raw, opts, name, info["path"], desc, time.perf_counter() - t0))
        if [(la.name, la.nsfr.shape) for la in results[-1].layers] != [(la.name, la.nsfr.shape) for la in results[0].layers]:
            raise ValueError(f"{path}: its layers differ from {paths[0]}'s; compare models of one architecture")
    return results


__all__ = ["AnalysisOptions", "AttentionResult", "LayerResult", "ModelResult", "analyze", "analyze_model",
           "build_result", "model_name", "test_dataset"]
