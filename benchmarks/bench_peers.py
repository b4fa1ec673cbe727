"""Peers: SpikingJelly, snnTorch and Norse rebuild our network with the same weights; spikes compared,
per-step latency timed against our backends in one interleaved run.

Models (``--models``): the bundled ``vanilla`` (the tiny network without attention) and the paper's
``gesture3`` in its vanilla form (attention ``none``: the peers have no causal ASA), untrained and
calibrated (:func:`models.runtime.calibrate.untrained_network`), exported to a bundle. Every peer gets
the bundle's **exact** synapses (docs/exact.md: BatchNorm folded, weights on a dyadic grid): a
convolution with bias, an average pool, a linear layer, the same modules our torch runner calls; only
the neuron is the peer's. ``default`` (causal ASA) is timed on our backends only.

The neuron is ours (models/neuron.py): ``U = H + X; S = U >= 0.3; H = 0.3 * U * (1 - S)``. Each peer's
LIF is configured to the same recurrence, which no peer writes in the same float32 operations:

* SpikingJelly ``LIFNode(tau=1/(1-beta), decay_input=False, v_reset=0)``: ``H = V - V/tau + X``,
  spike ``H >= Vth``, ``V = (1-S) * H``: the decay is ``V - V/tau`` instead of ``0.3 * V``;
* snnTorch ``Leaky(beta, threshold, reset_mechanism="zero")``: ``M = beta * (1-R) * M + X`` with
  ``R`` the previous step's spike: our arithmetic, but a spike is ``M - Vth > 0`` (strict);
* Norse ``LIFBoxCell(tau_mem_inv = 1-beta, dt = 1, v_th = (1-beta) * Vth)``: ``V += a * (X - V)``,
  which carries ``(1-beta)`` times our potential, against a scaled threshold, strict comparison.

So spikes that sit within rounding of the threshold may flip, and a flip propagates to later layers.
:func:`formula_step` writes each peer's recurrence in plain PyTorch (the test runs it without the
peers) and the report says whether the library gives the spikes of its formula.

Timing: one ``step`` (one timestep, state carried) at each batch size, one thread everywhere, in the
interleaved blocks of ``bench_runtime._measure``. Ours: the ONNX Runtime step runner, the event-driven
runner and the torch runner (each a slot table: state gathered and scattered, outputs, SOPs); peers:
their network modules called on a batch (state inside the modules, nothing else), SpikingJelly in
single-step mode (``'s'``) and in multi-step mode with T=1 per call (``'m'``).

The peers live in their own environment (``--setup`` creates ``.venv-peers`` from
benchmarks/peers-requirements.txt); ``asasnn bench peers`` run from another environment re-executes
this script there. A peer that does not import is recorded with the reason and left out.

Run: ``python benchmarks/bench_peers.py --setup`` once, then ``asasnn bench peers``. Not a test.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script, Python puts benchmarks/ on the path, not the root
    sys.path.insert(0, str(REPO))
if str(REPO / "benchmarks") not in sys.path:
    sys.path.insert(0, str(REPO / "benchmarks"))

import bench_runtime  # reused, not copied: _measure, _row, _machine, gesture_frames

PEERS_VENV = REPO / ".venv-peers"
REQUIREMENTS = REPO / "benchmarks" / "peers-requirements.txt"
TORCH = "torch==2.13.0"  # pinned: an unpinned torch from PyPI is the multi-GB CUDA build
PEERS = ("spikingjelly", "snntorch", "norse")
OURS = ("onnx", "event", "torch eager")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default="vanilla,gesture3", help="comma list: vanilla, gesture3, default")
    parser.add_argument("--batches", default="1,8,32", help="comma list of batch sizes")
    parser.add_argument("--peers", default=",".join(PEERS), help="comma list of peers to build")
    parser.add_argument("--budget", type=float, default=3.0, help="seconds of timing per cell (default 3)")
    parser.add_argument("--steps", type=int, default=32, help="timesteps of the spike-agreement check")
    parser.add_argument("--setup", action="store_true", help=f"create {PEERS_VENV.name} and exit")
    parser.add_argument(
        "--here", action="store_true", help="run in this interpreter, with whichever peers it can import"
    )
    parser.add_argument("--json", help="write the raw results here")
    parser.add_argument("--markdown", help="write the markdown tables here")


# ---- the network, as the peers see it ------------------------------------------------------------
def synapses(exact: Any) -> list[Any]:
    """Per layer, the exact network's synapse as plain torch modules (copies): Conv2d with bias and
    AvgPool2d, or Flatten and Linear. The frame saturation of layer 1 is left out: the frames given
    to every network are already saturated counts (:func:`saturate`)."""
    from torch import nn

    keep = (nn.Conv2d, nn.AvgPool2d, nn.Flatten, nn.Linear)
    out = []
    for layer in exact.layers:
        if layer.attention is not None:
            raise ValueError("attention has no counterpart in the peers")
        mods = list(layer.synapse) if isinstance(layer.synapse, nn.Sequential) else [layer.synapse]
        out.append(nn.Sequential(*(copy.deepcopy(m) for m in mods if isinstance(m, keep))))
    return out


def neuron_params(exact: Any) -> tuple[float, float]:
    """(beta, Vth) of a network whose every layer has our fixed hard-reset-to-zero neuron."""
    ps = {layer.lif.p for layer in exact.layers}
    (p,) = ps
    if p.reset != "hard" or p.v_reset != 0 or any(layer.lif.w is not None for layer in exact.layers):
        raise ValueError(f"only the fixed LIF with hard reset to 0 is rebuilt, not {p}")
    return p.beta, p.v_th


def saturate(frames: Any, max_count: int) -> Any:
    """Frames as the exact network takes them (rounded counts in [0, max_count])."""
    import numpy as np

    return np.clip(np.round(frames), 0, max_count).astype(np.float32)


# ---- each peer's recurrence in plain PyTorch ------------------------------------------------------
FORMULAS = ("ours", "spikingjelly", "snntorch", "norse")


def formula_step(kind: str, x: Any, v: Any, beta: float, v_th: float) -> tuple[Any, Any]:
    """One step of ``kind``'s LIF as its library writes it (float32): ``(spikes, state)``."""
    import torch

    if kind == "ours":  # models/neuron.py, no gradient
        u = v + x
        s = (u >= v_th).to(u.dtype)
        return s, beta * u * (1 - s)
    if kind == "spikingjelly":  # _ops/lif/cpu.py, decay_input=False, v_reset=0: V is post-reset
        h = v - v / (1 / (1 - beta)) + x
        s = (h >= v_th).to(h.dtype)
        return s, s * 0.0 + (1 - s) * h
    if kind == "snntorch":  # Leaky, reset_mechanism="zero": the state is the pre-reset potential
        th, b = torch.tensor(v_th), torch.tensor(beta)
        r = (v - th > 0).to(v.dtype)
        m = b.clamp(0, 1) * ((1 - r) * v) + x
        return (m - th > 0).to(m.dtype), m
    if kind == "norse":  # lif_box_feed_forward_step, dt=1: V holds (1-beta) x our potential
        a, th = 1.0 * torch.tensor(1 - beta), torch.tensor((1 - beta) * v_th)
        vd = v + a * (x + torch.tensor(0.0) - v)
        s = torch.gt(vd - th, torch.tensor(0.0)).to(vd.dtype)
        return s, (1 - s) * vd + s * torch.tensor(0.0)
    raise ValueError(f"unknown formula {kind!r}")


class FormulaLIF:
    """A stateful layer of :func:`formula_step` neurons (state created at the first step)."""

    def __init__(self, kind: str, beta: float, v_th: float) -> None:
        self.kind, self.beta, self.v_th, self.v = kind, beta, v_th, None

    def __call__(self, x: Any) -> Any:
        import torch

        if self.v is None:
            self.v = torch.zeros_like(x)
        s, self.v = formula_step(self.kind, x, self.v, self.beta, self.v_th)
        return s


# ---- peers: one timestep of the whole network, and each layer's spikes ----------------------------
class Peer:
    """A rebuilt network: ``step(frame)`` advances it by one timestep (state inside), ``spikes`` are
    each layer's outputs of the last step when ``record`` is on, ``reset()`` returns it to rest."""

    def __init__(
        self, name: str, version: str, forward: Any, reset: Any, neurons: list[Any], formula: str | None = None
    ) -> None:
        self.name, self.version, self._forward, self.reset = name, version, forward, reset
        self.formula = formula  # a library peer: the FORMULAS entry that writes its recurrence
        self.spikes: list[Any] = []
        self._neurons, self._hooks = neurons, []

    def step(self, frame: Any) -> Any:
        self.spikes = []
        return self._forward(frame)

    def record(self, on: bool) -> None:
        """Hooks on the neuron modules (off while timed: a hook costs a call per layer)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        if on:
            for m in self._neurons:
                self._hooks.append(m.register_forward_hook(lambda m, i, o: self.spikes.append(_first(o))))


def _first(o: Any) -> Any:
    return o[0] if isinstance(o, tuple) else o  # Norse cells return (spikes, state)


def formula_peer(kind: str, syn: list[Any], beta: float, v_th: float) -> Peer:
    """Plain PyTorch: our synapses and ``kind``'s neuron formula (runs without any peer installed)."""
    layers: list[FormulaLIF] = []

    def forward(x: Any) -> Any:
        for s, lif in zip(syn, layers):
            x = lif(s(x))
            peer.spikes.append(x)
        return x

    def reset() -> None:
        layers[:] = [FormulaLIF(kind, beta, v_th) for _ in syn]

    peer = Peer(f"plain torch, {kind} formula", "-", forward, reset, [])
    reset()
    return peer


def _sj_synapse(s: Any, mode: str) -> Any:
    """Our synapse as SpikingJelly's layers (subclasses of torch's), weights copied."""
    from spikingjelly.activation_based import layer
    from torch import nn

    out = []
    for m in s:
        if isinstance(m, nn.Conv2d):
            c = layer.Conv2d(m.in_channels, m.out_channels, m.kernel_size, padding=m.padding, step_mode=mode)
            c.load_state_dict(m.state_dict())
            out.append(c)
        elif isinstance(m, nn.Linear):
            c = layer.Linear(m.in_features, m.out_features, bias=m.bias is not None, step_mode=mode)
            c.load_state_dict(m.state_dict())
            out.append(c)
        elif isinstance(m, nn.AvgPool2d):
            out.append(layer.AvgPool2d(m.kernel_size, step_mode=mode))
        else:
            out.append(layer.Flatten(step_mode=mode))
    return out


def build_peer(name: str, syn: list[Any], beta: float, v_th: float) -> Peer:
    """``spikingjelly-s``, ``spikingjelly-m``, ``snntorch`` or ``norse``; raises ImportError if absent."""
    import torch
    from torch import nn

    if name.startswith("spikingjelly"):
        from spikingjelly.activation_based import functional, neuron

        mode = name[-1]
        mods, lifs = [], []
        for s in syn:
            lif = neuron.LIFNode(tau=1 / (1 - beta), decay_input=False, v_threshold=v_th, v_reset=0.0, step_mode=mode)
            mods += [*_sj_synapse(s, mode), lif]
            lifs.append(lif)
        net = nn.Sequential(*mods).eval()
        if mode == "s":
            forward = net
        else:  # one timestep per call: [1, B, ...] in and out

            def forward(x: Any) -> Any:
                return net(x.unsqueeze(0))[0]

        reset = lambda: functional.reset_net(net)
        return Peer(f"spikingjelly ('{mode}')", _version("spikingjelly"), forward, reset, lifs, "spikingjelly")
    if name == "snntorch":
        import snntorch
        from snntorch import utils

        mods, lifs = [], []
        for s in syn:
            lif = snntorch.Leaky(beta=beta, threshold=v_th, reset_mechanism="zero", init_hidden=True)
            mods += [*copy.deepcopy(s), lif]
            lifs.append(lif)
        net = nn.Sequential(*mods).eval()
        return Peer("snntorch", _version("snntorch"), net, lambda: utils.reset(net), lifs, "snntorch")
    if name == "norse":
        from norse.torch import LIFBoxCell, LIFBoxParameters, SequentialState

        p = LIFBoxParameters(
            tau_mem_inv=torch.tensor(1 - beta), v_th=torch.tensor((1 - beta) * v_th), v_reset=torch.tensor(0.0)
        )
        mods, lifs = [], []
        for s in syn:
            lif = LIFBoxCell(p, dt=1.0)
            mods += [*copy.deepcopy(s), lif]
            lifs.append(lif)
        net = SequentialState(*mods).eval()
        state: list[Any] = [None]

        def forward(x: Any) -> Any:
            out, state[0] = net(x, state[0])
            return out

        return Peer("norse", _version("norse"), forward, lambda: state.__setitem__(0, None), lifs, "norse")
    raise ValueError(f"unknown peer {name!r}")


def peer_variants(peers: tuple[str, ...]) -> list[str]:
    return [v for p in peers for v in (("spikingjelly-s", "spikingjelly-m") if p == "spikingjelly" else (p,))]


# ---- agreement ------------------------------------------------------------------------------------
def reference_spikes(exact: Any, frames: Any) -> list[Any]:
    """Our exact network's ``step`` over ``frames [T, B, ...]``: per layer, spikes ``[T, B, ...]``."""
    import torch

    from models.runtime.verify import SpikeProbe

    out: list[list[Any]] = [[] for _ in exact.layers]
    state = exact.init_state(frames.shape[1])
    with torch.inference_mode():
        for f in torch.from_numpy(frames):
            probe = SpikeProbe()
            _, state = exact.step(f, state, probe)
            for i, s in enumerate(probe.spikes):
                out[i].append(s[0])
    return [torch.stack(s) for s in out]


def peer_spikes(peer: Peer, frames: Any) -> list[Any]:
    import torch

    peer.reset()
    peer.record(True)
    out: list[list[Any]] = []
    try:
        with torch.inference_mode():
            for f in torch.from_numpy(frames):
                peer.step(f)
                out = out or [[] for _ in peer.spikes]
                for i, s in enumerate(peer.spikes):
                    out[i].append(s.float())
    finally:
        peer.record(False)
        peer.reset()
    return [torch.stack(s) for s in out]


def agreement(ref: list[Any], got: list[Any], names: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Per layer: the fraction of (step, stream, neuron) cells whose spike agrees, the cells that
    differ, and the spikes ours fired."""
    if len(got) != len(ref):
        raise RuntimeError(f"{len(got)} spiking layers, ours has {len(ref)}")
    out = {}
    for name, a, b in zip(names, ref, got):
        b = b.reshape(a.shape)
        flips = int((a != b).sum())
        out[name] = {"agree": 1 - flips / a.numel(), "flips": flips, "spikes": int(a.sum()), "cells": a.numel()}
    return out


def check_agreement(exact: Any, peer: Peer, frames: Any) -> dict[str, dict[str, float]]:
    """Per layer agreement of ``peer`` with our exact network's step on ``frames [T, B, ...]``."""
    return agreement(reference_spikes(exact, frames), peer_spikes(peer, frames), exact.layer_names)


# ---- models ---------------------------------------------------------------------------------------
def model_bundle(name: str, workdir: Path) -> tuple[str, Any]:
    """(label, bundle): the bundled vanilla or default model, or gesture3 (attention none, untrained,
    calibrated) exported into ``workdir``."""
    from models.runtime.bundle import load_bundle
    from models.runtime.calibrate import untrained_network
    from models.runtime.export import build_card, export_bundle

    if name in ("vanilla", "default"):
        b = load_bundle(REPO / "models" / "bundled" / name)
        h, w = b.card.frame_shape[1:]
        return f"bundled {name} ({b.card.config['name']}, {b.card.attention}, 2x{h}x{w})", b
    net = untrained_network(name, attention="none")
    h, w = net.cfg.input_size
    card = build_card(net, classes=[f"c{i}" for i in range(net.cfg.num_classes)], sensor=(w * 4, h * 4), ds=4, dt_us=15_000)
    export_bundle(net, card, workdir / name, overwrite=True)
    return f"{name} (none, untrained, 2x{h}x{w})", load_bundle(workdir / name)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)  # spikingjelly has no __version__


def peer_import_errors(peers: tuple[str, ...]) -> dict[str, str]:
    """Peers that do not import here, with the reason."""
    out = {}
    for p in peers:
        try:
            importlib.import_module(p)
        except Exception as err:  # noqa: BLE001 - any failure is a reason to record
            out[p] = f"{type(err).__name__}: {err}"
    return out


# ---- the run --------------------------------------------------------------------------------------
def run(
    models: tuple[str, ...] = ("vanilla", "gesture3"),
    batches: tuple[int, ...] = (1, 8, 32),
    peers: tuple[str, ...] = PEERS,
    budget: float = 3.0,
    steps: int = 32,
    log: Any = print,
) -> dict[str, Any]:
    import torch

    from models.runtime import load_runner
    from models.runtime.event import measure_crossovers
    from models.runtime.verify import random_frames

    torch.set_num_threads(1)
    missing = peer_import_errors(peers)
    for p, why in missing.items():
        log(f"peer {p} left out: {why}")
    present = tuple(p for p in peers if p not in missing)
    result: dict[str, Any] = {
        "machine": bench_runtime._machine() | {"python_executable": sys.executable},
        "threads": 1,
        "peers": {p: {"version": _version(p)} for p in present}
        | {p: {"error": why} for p, why in missing.items()},
        "models": {},
        "rows": [],
        "notes": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            label, b = model_bundle(name, Path(tmp))
            card, exact = b.card, b.exact
            info: dict[str, Any] = {"agreement": {}, "layers": list(exact.layer_names)}
            result["models"][label] = info
            max_count = card.arithmetic.max_count
            built: dict[str, Peer] = {}
            try:
                syn, (beta, v_th) = synapses(exact), neuron_params(exact)
            except ValueError as err:
                note = f"{label}: peers left out ({err})"
                log(note)
                result["notes"].append(note)
            else:
                # agreement on a denser (random Poisson) and a sparser (synthetic gesture) stream
                frames = {
                    "random": saturate(random_frames(steps, 4, card.frame_shape, seed=1), max_count),
                    "gesture": saturate(
                        bench_runtime.gesture_frames(card, 4, seed=1)[[t % bench_runtime.SEQUENCE for t in range(steps)]],
                        max_count,
                    ),
                }
                refs = {k: reference_spikes(exact, f) for k, f in frames.items()}
                candidates = [formula_peer(k, syn, beta, v_th) for k in FORMULAS]
                formula_spikes: dict[str, dict[str, list[Any]]] = {}
                for variant in peer_variants(present):
                    try:
                        built[variant] = build_peer(variant, syn, beta, v_th)
                    except Exception as err:  # noqa: BLE001 - recorded, the others still run
                        note = f"{label}: {variant} not built ({type(err).__name__}: {err})"
                        log(note)
                        result["notes"].append(note)
                for peer in [*candidates, *built.values()]:
                    spikes = {k: peer_spikes(peer, f) for k, f in frames.items()}
                    entry: dict[str, Any] = {"version": peer.version}
                    entry |= {k: agreement(refs[k], spikes[k], exact.layer_names) for k in frames}
                    if peer.formula is not None:  # the library's spikes against its formula's
                        entry["vs_formula"] = {
                            k: min(a["agree"] for a in agreement(formula_spikes[peer.formula][k], spikes[k], exact.layer_names).values())
                            for k in frames
                        }
                    else:
                        formula_spikes[FORMULAS[candidates.index(peer)]] = spikes
                    info["agreement"][peer.name] = entry
                    worst = min(v["agree"] for k in frames for v in entry[k].values())
                    log(f"{label:>40} {peer.name:>36}: lowest per-layer agreement {worst:.6f}")
            runners = {
                "onnx": load_runner(b, "onnx", "cpu", threads=1),
                "event": load_runner(b, "event", "cpu"),
                "torch eager": load_runner(b, "torch", "cpu"),
            }
            for n in batches:
                seq = saturate(bench_runtime.gesture_frames(card, n, seed=n), max_count)
                runners["event"].event.crossovers = measure_crossovers(runners["event"].event, batch=min(n, 32))
                opened = {k: [r.open() for _ in range(n)] for k, r in runners.items()}
                calls = {k: bench_runtime._stepper(r, opened[k], seq) for k, r in runners.items()}
                tensors = torch.from_numpy(seq)
                for peer in built.values():
                    peer.reset()
                    calls[peer.name] = _peer_call(peer, tensors)
                with torch.inference_mode():
                    times = bench_runtime._measure(calls, None, budget)
                for k, r in runners.items():
                    for slot in opened[k]:
                        r.close(slot)
                for k, ms in times.items():
                    row = bench_runtime._row(label, k, n, ms)
                    result["rows"].append(asdict(row))
                    log(f"{label:>40} {k:>20} batch {n:>3}: median {row.median_ms:8.3f} ms  min {row.min_ms:8.3f} ms")
    result["machine"]["load_avg_at_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return result


def _peer_call(peer: Peer, seq: Any) -> Any:
    """A call that steps ``peer`` with the next frame of ``seq`` (cycling), as ``_stepper`` does ours."""
    t = iter(range(1 << 62))
    return lambda: peer.step(seq[next(t) % len(seq)])


# ---- report ---------------------------------------------------------------------------------------
def format_markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    versions = ", ".join(
        f"{p} {v['version']}" if "version" in v else f"{p} missing ({v['error']})" for p, v in result["peers"].items()
    )
    lines = [
        (
            f"Machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}, torch {m['torch']}, onnxruntime "
            f"{m['onnxruntime']}; {versions}; 1 thread per backend; load average {m['load_avg_at_start']:.2f} at "
            f"start, {m['load_avg_at_end']:.2f} at end."
        ),
        "",
    ]
    backends = list(dict.fromkeys(r["backend"] for r in result["rows"]))
    for label in result["models"]:
        rows = [r for r in result["rows"] if r["model"] == label]
        if not rows:
            continue
        batches = sorted({r["batch"] for r in rows})
        by = {(r["backend"], r["batch"]): r for r in rows}
        lines += [
            f"**{label}**: median ms per step (min), and the median against our ONNX Runtime step",
            "",
            "| backend | " + " | ".join(f"batch {n}" for n in batches) + " |",
            "|---|" + "---:|" * len(batches),
        ]
        for k in backends:
            cells = []
            for n in batches:
                r, onnx = by.get((k, n)), by.get(("onnx", n))
                if r is None:
                    cells.append("-")
                    continue
                ratio = f", {r['median_ms'] / onnx['median_ms']:.1f}x" if onnx and k != "onnx" else ""
                cells.append(f"{r['median_ms']:.3f} ({r['min_ms']:.3f}{ratio})")
            if any(c != "-" for c in cells):
                lines.append(f"| {k} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        (
            "Spike agreement with our exact network's step (fraction of step x stream x neuron cells per layer, "
            "lowest over the random and the gesture stream; in brackets the cells that differ, both streams):"
        ),
        "",
    ]
    for label, info in result["models"].items():
        if not info["agreement"]:
            continue
        names = info["layers"]
        lines += [
            f"**{label}**",
            "",
            "| network | " + " | ".join(names) + " | same spikes as its formula |",
            "|---|" + "---:|" * (len(names) + 1),
        ]
        for peer, entry in info["agreement"].items():
            streams = [k for k in ("random", "gesture") if k in entry]
            cells = []
            for n in names:
                agree = min(entry[k][n]["agree"] for k in streams)
                flips = sum(entry[k][n]["flips"] for k in streams)
                cells.append(f"{agree:.6f} ({flips})" if flips else "1 (0)")
            vs = entry.get("vs_formula")
            same = "-" if vs is None else "yes" if min(vs.values()) == 1 else f"no ({min(vs.values()):.6f})"
            lines.append(f"| {peer} | " + " | ".join(cells) + f" | {same} |")
        lines.append("")
    lines += [f"Note: {n}" for n in result["notes"]]
    return "\n".join(lines).rstrip() + "\n"


# ---- environment ----------------------------------------------------------------------------------
def _in_peers_venv() -> bool:
    return Path(sys.prefix).resolve() == PEERS_VENV.resolve()


def setup(python: str = sys.executable) -> int:
    """Create ``.venv-peers`` (no system site packages): CPU torch 2.13.0, the project (editable), then
    each line of peers-requirements.txt with --no-deps; a line that fails is reported, the rest go on.
    Skipped when the environment was built from the same requirements (a stamp holds their hash)."""
    bin_ = PEERS_VENV / "bin"
    stamp = PEERS_VENV / ".installed"
    digest = hashlib.sha256(REQUIREMENTS.read_bytes() + TORCH.encode()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        print(f"{PEERS_VENV} is up to date")
        return 0
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as c:
        c.write(TORCH + "\n")  # a constraint for every install: nothing may replace the CPU build
    pip = [str(bin_ / "python"), "-m", "pip", "install", "--quiet", "-c", c.name]
    steps = [[python, "-m", "venv", str(PEERS_VENV)], [*pip, TORCH], [*pip, "-e", str(REPO)]]
    for cmd in steps:
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    failed = []
    for line in REQUIREMENTS.read_text().splitlines():
        req = line.split("#")[0].strip()
        if req:
            print("+ pip install --no-deps", req, flush=True)
            if subprocess.run([*pip, "--no-deps", req], check=False).returncode:
                failed.append(req)
    os.unlink(c.name)
    if failed:
        print(f"not installed: {', '.join(failed)} (the benchmark records them as missing)", file=sys.stderr)
        return 1
    stamp.write_text(digest)
    return 0


def _argv(args: argparse.Namespace) -> list[str]:
    """The options of ``args`` as a command line for the re-executed script."""
    out = ["--models", args.models, "--batches", args.batches, "--peers", args.peers]
    out += ["--budget", str(args.budget), "--steps", str(args.steps), "--here"]
    for flag in ("json", "markdown"):
        if getattr(args, flag):
            out += [f"--{flag}", os.path.abspath(getattr(args, flag))]
    return out


def main(args: argparse.Namespace | None = None) -> int:
    if args is None:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        add_arguments(parser)
        args = parser.parse_args()
    if args.setup:
        return setup()
    if not args.here and not _in_peers_venv():
        python = PEERS_VENV / "bin" / "python"
        if python.exists():
            print(f"running under {python}", file=sys.stderr, flush=True)
            os.execv(str(python), [str(python), __file__, *_argv(args)])
        print(
            f"The peers live in their own environment, {PEERS_VENV}, which does not exist. Create it with\n"
            f"  python benchmarks/bench_peers.py --setup      (or: make bench-peers)\n"
            "or run with --here to time our backends and whichever peers this environment imports.",
            file=sys.stderr,
        )
        return 2
    result = run(
        models=tuple(args.models.split(",")),
        batches=tuple(int(b) for b in args.batches.split(",")),
        peers=tuple(p for p in args.peers.split(",") if p),
        budget=args.budget,
        steps=args.steps,
    )
    bench_runtime.emit(result, format_markdown(result), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
