"""Per-step latency and throughput of the stateful runtime, against two baselines in the same run.

For each model (the bundled default, else the ``tiny`` preset with causal ASA; and the paper's 3-conv
``gesture3`` with causal ASA, 2x32x32 input, T=60) and each batch size (streams stepped together):

* ``onnx``  : :class:`OrtStepRunner` (the bundle's step graph, IO binding, two-page slot tables);
* ``onnx-float``: the same runner on a graph exported from the float32 network with the same
  rewrites: the arithmetic the exact form (docs/exact.md) replaced, to price exactness;
* ``torch`` : :class:`TorchStepRunner`, eager (baseline b): the network as trained, BatchNorm folded;
* ``torch-rewritten``: the same runner on the export's rewritten network (``rewrite=True``), which
  separates what the rewrites buy from what ONNX Runtime itself buys;
* ``torch.compile`` (``--compile``): the same runner with ``torch.compile``;
* ``event``: :class:`EventStepRunner`, the event-driven CPU runner (scatter over the spikes where the
  input is sparse, a dense product where it is not, per layer against crossovers measured at the
  start of the run; one thread). Its rows also report the work done: synaptic accumulations
  executed per stream and step next to the energy proxy's SOPs;
* ``window``: baseline a, re-running the whole T-window multi-step network (torch, eager) for every
  new timestep, which is what a runtime without carried state has to do.

Latency is the wall time of one ``step(slots, frames)`` call (gather, network, scatter, outputs),
median and 99th percentile over as many calls as fit the time budget; streams/s is batch / median.
Untrained networks are calibrated so every layer spikes (the dense compute does not depend on it).
The frames (``--frames``) are synthetic gestures of the test split binned by the training-side
encoder at the model's sensor, dt and ds (the default: the event-driven runner's speed depends on
the events), or random Poisson frames (``random``, much denser than a DVS stream). A bundled
``gesture3`` (models/bundled/gesture3) is used when present, else an untrained calibrated one.

``--device cuda`` runs the same cells on the GPU: ONNX Runtime's CUDA execution provider (state tables
as torch CUDA tensors bound by pointer; left out, with the reason recorded, when this onnxruntime has
no CUDA provider) and the torch runners on CUDA. Each timed call ends with ``torch.cuda.synchronize()``
(the step already copies its outputs to the host, so nothing is left queued), and each cell records
the GPU memory per stream (see :func:`_gpu_bytes`). The window baseline, if not left out, runs on the
GPU too. The real-time summary names, per model and backend, the largest batch measured whose step
stays below the model's dt (p99), with the dense-equivalent arithmetic rate there.

Run: ``python benchmarks/bench_runtime.py [--markdown FILE]`` or ``asasnn bench runtime``. Not a test.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Run as a script, Python puts benchmarks/ on the path, not the repository root.
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_BUNDLE = REPO / "models" / "bundled" / "default"


@dataclass
class Row:
    model: str
    backend: str
    batch: int
    median_ms: float
    p99_ms: float
    min_ms: float
    streams_per_s: float
    calls: int
    gpu_mib_per_stream: float | None = None  # --device cuda only (see _gpu_bytes)
    ops_per_stream_step: float | None = None  # event rows: accumulations executed on spikes (layers 2..L)
    first_ops_per_stream_step: float | None = None  # event rows: accumulations of layer 1 (on event counts)
    sops_per_stream_step: float | None = None  # event rows: the energy proxy's SOPs
    dense_share: float | None = None  # event rows: share of layer-steps that ran the dense product


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default="default,gesture3", help="comma list: default, tiny, gesture3")
    parser.add_argument(
        "--batches", default="1,8,32,128", help="comma list of batch sizes (streams per step)"
    )
    parser.add_argument(
        "--backends",
        default="onnx,onnx-float,torch,torch-rewritten,event",
        help="comma list: onnx, onnx-float, torch, torch-rewritten, event",
    )
    parser.add_argument(
        "--frames",
        choices=("gesture", "random"),
        default="gesture",
        help="input frames: synthetic test gestures binned by the encoder (default) or random Poisson frames",
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="threads for ONNX Runtime and torch (default 2)"
    )
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of timing per cell (default 2)")
    parser.add_argument("--no-window", action="store_true", help="skip baseline a (window recomputation)")
    parser.add_argument(
        "--window-max-s",
        type=float,
        default=20.0,
        help="skip a window cell whose one evaluation is estimated to take longer (default 20)",
    )
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where the runners step (default cpu); cuda: ONNX Runtime's CUDA provider and torch on CUDA",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        help="the device's dense peak in TFLOP/s (e.g. the card's FP16 figure): adds a percent-of-peak column",
    )
    parser.add_argument("--json", help="write the raw results here")
    parser.add_argument("--markdown", help="write the markdown table here")


def _machine(device: str = "cpu") -> dict[str, Any]:
    import numpy
    import onnxruntime
    import torch

    from models.machine import cpu_model

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
        "load_avg_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        **(_gpu_info() if device == "cuda" else {}),
    }


def _gpu_info() -> dict[str, Any]:
    import onnxruntime
    import torch

    props = torch.cuda.get_device_properties(0)
    return {
        "gpu": torch.cuda.get_device_name(0),
        "gpu_capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "gpu_multiprocessors": props.multi_processor_count,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "onnxruntime_providers": onnxruntime.get_available_providers(),
    }


def _dense_mflop(net: Any, frame_shape: tuple[int, ...]) -> float:
    """Dense-equivalent MFLOP of one step of one stream: 2 x the multiply-adds of every convolution and
    linear layer of the float network (``b.net``), as if every input were non-zero. The yardstick
    for the device's dense peak (spikes make the real work sparser)."""
    import copy

    import torch

    net = copy.deepcopy(net).eval()  # the caller's network stays as it was (BatchNorm statistics too)
    macs = [0]

    def hook(m: Any, inputs: Any, out: Any) -> None:
        per_out = m.weight[0].numel()  # in_channels / groups x kernel area, or in_features
        macs[0] += out.numel() * per_out

    mods = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    handles = [m.register_forward_hook(hook) for m in mods]
    try:
        p = next(net.parameters())
        with torch.inference_mode():
            net.step(torch.zeros(1, *frame_shape, dtype=p.dtype, device=p.device), net.init_state(1))
    finally:
        for h in handles:
            h.remove()
    return 2 * macs[0] / 1e6


def _gpu_bytes(runner: Any, step: Any, n: int) -> int:
    """GPU memory that ``n`` streams of ``runner`` take: their state on the device plus the peak of
    what one step allocates on top of what was there (activations, gathered state, frames), measured
    with torch's allocator. ONNX Runtime allocates its activations in its own CUDA arena, which torch
    does not see: for ``onnx`` runners this is the state tables (and torch's part of a step) only."""
    import torch

    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    transient = torch.cuda.max_memory_allocated() - base
    return n * runner.bytes_per_stream() + transient


def _bundle(name: str, workdir: Path):
    """(label, bundle) for a model name; exports calibrated untrained networks when needed."""
    from models.runtime.bundle import load_bundle
    from models.runtime.calibrate import untrained_network
    from models.runtime.export import build_card, export_bundle

    if name == "default" and (DEFAULT_BUNDLE / "card.json").exists():
        b = load_bundle(DEFAULT_BUNDLE)
        h, w = b.card.frame_shape[1:]
        return (
            f"bundled default ({b.card.config['name']}, {b.card.attention}, 2x{h}x{w}, T={b.card.timesteps})",
            b,
        )
    bundled = REPO / "models" / "bundled" / name
    if name != "default" and (bundled / "card.json").exists():
        b = load_bundle(bundled)
        h, w = b.card.frame_shape[1:]
        return f"bundled {name} ({b.card.config['name']}, {b.card.attention}, 2x{h}x{w}, T={b.card.timesteps})", b
    preset_name = "tiny" if name == "default" else name
    net = untrained_network(preset_name)
    cfg = net.cfg
    sensor = (cfg.input_size[1] * 4, cfg.input_size[0] * 4)
    card = build_card(net, classes=[f"c{i}" for i in range(11)], sensor=sensor, ds=4, dt_us=15_000)
    out = workdir / name
    export_bundle(net, card, out, overwrite=True)
    label = (
        f"{preset_name} (causal-asa, untrained)"
        if name != "default"
        else "tiny (causal-asa; no trained default yet)"
    )
    return label, load_bundle(out)


SEQUENCE = 16  # frames each stream cycles through (a stream, not one frame repeated)
GESTURE_START = 20  # the sequence starts this many bins into a gesture (its motion well under way)


def gesture_frames(card: Any, n: int, seed: int) -> Any:
    """``[SEQUENCE, n, 2, H, W]``: stream i sees a synthetic test gesture (one of 16, chosen by i and
    ``seed``) binned by the training-side encoder at the card's sensor, dt and ds."""
    import numpy as np

    from models.events.binner import BinnerConfig, encode_events
    from models.events.types import SensorSize
    from models.synthetic import SyntheticConfig, generate, sample_list

    cfg = SyntheticConfig()
    samples = sample_list(cfg, "test")
    binner = BinnerConfig(SensorSize(card.sensor.width, card.sensor.height), card.dt_us, card.ds)
    made: dict[int, Any] = {}
    out = np.zeros((SEQUENCE, n, *card.frame_shape), np.float32)
    for i in range(n):
        k = (seed + 7 * i) % 16
        if k not in made:
            ev = generate(samples[(k * 11) % len(samples)], cfg)
            made[k] = encode_events(ev, binner, num_bins=GESTURE_START + SEQUENCE)[GESTURE_START:]
        out[:, i] = made[k]
    return out


def _event_work(runner: Any, seq: Any) -> tuple[float, float, float, float]:
    """One pass of ``seq`` through fresh slots of the event runner, per stream and step: the
    accumulations executed on spikes (layers 2..L) and in layer 1, the SOPs, and the share of
    layer-steps that ran dense."""
    import numpy as np

    n = seq.shape[1]
    slots = [runner.open() for _ in range(n)]
    ops = first = sops = dense = 0.0
    for f in seq:
        res = runner.step(slots, f)
        ops += float(runner.last_ops[:, 1:].sum())
        first += float(runner.last_ops[:, 0].sum())
        sops += float(np.asarray(res.sops, np.float64).sum())
        dense += float(np.mean(runner.last_dense))
    for s in slots:
        runner.close(s)
    steps = len(seq) * n
    return ops / steps, first / steps, sops / steps, dense / len(seq)


def _stepper(runner: Any, slots: list[int], seq: Any, sync: Any = None):
    """A call that steps ``slots`` with the next frame of ``seq`` (cycling); then ``sync()`` if given
    (``torch.cuda.synchronize`` on a GPU, so that a timed call includes all of its device work)."""
    t = itertools.count()
    if sync is None:
        return lambda: runner.step(slots, seq[next(t) % len(seq)])

    def step():
        runner.step(slots, seq[next(t) % len(seq)])
        sync()

    return step


def _measure(steps: dict[str, Any], window_fn: Any, budget: float) -> dict[str, list[float]]:
    """Milliseconds per call of every function, measured in **interleaved blocks**: a round runs a
    block of consecutive calls of each function in turn (plus one window evaluation, if any), so a
    machine whose load drifts slows every backend alike, while each block still runs with warm
    caches (its first call is not recorded). Blocks last about 20 ms or 5 calls, whichever is
    longer; rounds run until ``budget`` seconds have passed (at least 2 with a window, 10 without).
    """
    blocks: dict[str, int] = {}
    for k, f in steps.items():  # warm-up (allocations, ORT arenas, caches) and block sizes
        for _ in range(3):
            f()
        t = time.perf_counter()
        f()
        blocks[k] = 1 + max(5, int(0.02 / max(time.perf_counter() - t, 1e-6)))
    if window_fn is not None:
        window_fn()
    times: dict[str, list[float]] = {k: [] for k in steps}
    if window_fn is not None:
        times["window"] = []
    min_rounds = 2 if window_fn is not None else 10
    gc.disable()
    try:
        start, rounds = time.perf_counter(), 0
        while rounds < min_rounds or (time.perf_counter() - start < budget and rounds < 2000):
            if window_fn is not None:
                t = time.perf_counter()
                window_fn()
                times["window"].append(time.perf_counter() - t)
            for k, f in steps.items():
                for i in range(blocks[k]):
                    t = time.perf_counter()
                    f()
                    if i:
                        times[k].append(time.perf_counter() - t)
            rounds += 1
    finally:
        gc.enable()
    return {k: [x * 1e3 for x in v] for k, v in times.items()}


def _ort_runner(graph: Any, b: Any, device: str, threads: int) -> tuple[Any, str | None]:
    """(runner, None), or on the GPU (None, why) for a graph that cannot run on ONNX Runtime's CUDA
    provider (its libraries missing, or a silent fall-back to the CPU): the torch rows still run."""
    from models.runtime.ort_runner import OrtStepRunner

    if device == "cpu":
        return OrtStepRunner(graph, b.card, b.exact, device, threads=threads), None
    try:
        r = OrtStepRunner(graph, b.card, b.exact, device, threads=threads)
    except Exception as err:  # noqa: BLE001 - recorded with the results
        return None, f"{type(err).__name__}: {err}"
    if r.on_cuda and r.device == "cuda":
        return r, None
    return None, f"session providers {r.providers}"


def _row(model: str, backend: str, batch: int, ms: list[float]) -> Row:
    import numpy as np

    med = float(np.median(ms))
    return Row(
        model,
        backend,
        batch,
        med,
        float(np.percentile(ms, 99)),
        float(np.min(ms)),
        batch / med * 1e3,
        len(ms),
    )


def run(
    models: tuple[str, ...] = ("default", "gesture3"),
    batches: tuple[int, ...] = (1, 8, 32, 128),
    backends: tuple[str, ...] = ("onnx", "onnx-float", "torch", "torch-rewritten", "event"),
    threads: int = 2,
    budget: float = 2.0,
    window: bool = True,
    compile: bool = False,
    window_max_s: float = 20.0,
    log=print,
    device: str = "cpu",
    frames: str = "gesture",
) -> dict[str, Any]:
    import copy

    import onnxruntime
    import torch

    from models.runtime.export import export_onnx, random_frames
    from models.runtime.torch_runner import TorchStepRunner
    from models.runtime.window import TorchWindowEval

    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    cuda = device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: torch sees no CUDA device (a CPU build of torch, or no GPU)")
    sync = torch.cuda.synchronize if cuda else None
    torch.set_num_threads(threads)
    result: dict[str, Any] = {
        "machine": _machine(device),
        "device": device,
        "threads": threads,
        "frames": frames,
        "rows": [],
        "models": {},
        "notes": [],
    }
    if cuda and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        left = [k for k in backends if k in ("onnx", "onnx-float")]
        if left:
            note = (
                f"ONNX Runtime rows ({', '.join(left)}) left out: this onnxruntime "
                f"{onnxruntime.__version__} has no CUDAExecutionProvider (install onnxruntime-gpu)"
            )
            log(note)
            result["notes"].append(note)
            backends = tuple(k for k in backends if k not in left)
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            label, b = _bundle(name, Path(tmp))
            T = b.card.timesteps
            result["models"][label] = {
                "timesteps": T,
                "dt_ms": b.card.dt_us / 1e3,
                "dense_mflop_per_step": _dense_mflop(b.net, b.card.frame_shape),
                "bytes_per_stream": {},
            }
            runners: dict[str, Any] = {}
            graphs = {"onnx": "onnx", "onnx float32": "onnx-float"}
            for key, backend in graphs.items():
                if backend not in backends:
                    continue
                # onnx-float: the float32 arithmetic exactness replaced
                graph = b.onnx_path if backend == "onnx" else export_onnx(b.net, "step")
                r, why = _ort_runner(graph, b, device, threads)
                if r is not None:
                    runners[key] = r
                else:
                    note = f"{label} {key}: not on ONNX Runtime's CUDA provider ({why}); row left out"
                    log(note)
                    result["notes"].append(note)
            if "torch" in backends:
                runners["torch eager"] = TorchStepRunner(b.exact, b.card, device)
            if "torch-rewritten" in backends:
                runners["torch rewritten"] = TorchStepRunner(b.exact, b.card, device, rewrite=True)
            if compile:
                runners["torch.compile"] = TorchStepRunner(b.exact, b.card, device, compile=True)
            if "event" in backends and cuda:
                note = f"{label} event: the event-driven runner runs on the CPU; row left out"
                log(note)
                result["notes"].append(note)
            elif "event" in backends:
                from models.runtime.event import EventStepRunner

                result["models"][label]["event_crossovers"] = {}
                runners["event"] = EventStepRunner(b.exact, b.card, threads=threads)
                result["models"][label]["first_layer_macs"] = runners["event"].energy.first_layer_macs
            for key, r in runners.items():
                if r.device != device:  # a runner that fell back silently would measure the wrong thing
                    raise RuntimeError(f"{label} {key}: runner on {r.device!r}, asked for {device!r}")
            last_window: tuple[int, float] | None = None  # (batch, seconds per evaluation)
            for n in batches:
                if frames == "gesture":
                    seq = gesture_frames(b.card, n, seed=n)
                else:
                    seq = random_frames(SEQUENCE, n, b.card.frame_shape, seed=n)
                work = None
                if "event" in runners:  # crossovers for this batch size, then the work it does
                    from models.runtime.event import measure_crossovers

                    ev = runners["event"].event
                    part = -(-n // runners["event"].threads)  # each of the runner's parts is this big
                    ev.crossovers = measure_crossovers(ev, batch=min(part, 32))
                    result["models"][label]["event_crossovers"][str(n)] = dict(zip(b.exact.layer_names, ev.crossovers))
                    work = _event_work(runners["event"], seq)
                opened = {key: [r.open() for _ in range(n)] for key, r in runners.items()}
                steps = {key: _stepper(r, opened[key], seq, sync) for key, r in runners.items()}
                gpu_bytes = {key: _gpu_bytes(r, steps[key], n) for key, r in runners.items()} if cuda else {}
                window_fn = None
                if window and last_window and last_window[1] * n / last_window[0] > window_max_s:
                    est = last_window[1] * n / last_window[0]
                    log(
                        f"{label:>40} {'window':>14} batch {n:>4}: skipped (about {est:.0f} s per evaluation)"
                    )
                    result["skipped"] = result.get("skipped", []) + [[label, n, est]]
                elif window:  # (TorchWindowEval moves the network it is given: a copy on the GPU)
                    ev = TorchWindowEval(copy.deepcopy(b.exact) if cuda else b.exact, device)
                    win = random_frames(T, n, b.card.frame_shape, seed=n)
                    window_fn = lambda ev=ev, win=win: ev(win)
                times = _measure(steps, window_fn, budget)
                for key, r in runners.items():
                    for slot in opened[key]:
                        r.close(slot)
                    result["models"][label]["bytes_per_stream"][key] = r.bytes_per_stream()
                for key, ms in times.items():
                    row = _row(label, f"window (T={T})" if key == "window" else key, n, ms)
                    if key in gpu_bytes:
                        row.gpu_mib_per_stream = gpu_bytes[key] / n / 2**20
                    if key == "event" and work is not None:
                        (
                            row.ops_per_stream_step,
                            row.first_ops_per_stream_step,
                            row.sops_per_stream_step,
                            row.dense_share,
                        ) = work
                    if key == "window":
                        last_window = (n, row.median_ms / 1e3)
                    result["rows"].append(asdict(row))
                    log(
                        f"{label:>40} {key:>14} batch {n:>4}: median {row.median_ms:9.3f} ms  "
                        f"min {row.min_ms:9.3f} ms  p99 {row.p99_ms:9.3f} ms  "
                        f"{row.streams_per_s:10.1f} streams/s  ({row.calls} calls)"
                    )
            del runners
            if cuda:
                torch.cuda.empty_cache()
    result["machine"]["load_avg_at_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if cuda and any(k.startswith("onnx") for k in {r["backend"] for r in result["rows"]}):
        result["notes"].append(
            "GPU MiB / stream of onnx rows: the state tables and torch's part of a step only; "
            "ONNX Runtime's own CUDA arena (its activations) is not visible to torch's allocator."
        )
    result["realtime"] = realtime_summary(result)
    return result


def realtime_summary(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per model and step backend: the step at batch 1 and the largest batch measured whose p99 step
    stays below the model's dt (so that many streams, stepped together, keep real time on this
    device: a lower bound, between this batch and the next one measured), with its dense-equivalent
    GFLOP/s."""
    out = []
    for model, info in result["models"].items():
        dt = info.get("dt_ms")
        backends = dict.fromkeys(
            r["backend"] for r in result["rows"] if r["model"] == model and not r["backend"].startswith("window")
        )
        for backend in backends:
            rows = sorted(
                (r for r in result["rows"] if r["model"] == model and r["backend"] == backend),
                key=lambda r: r["batch"],
            )
            first = rows[0]
            under = [r for r in rows if dt is not None and r["p99_ms"] < dt]
            best = max(under, key=lambda r: r["batch"]) if under else None
            mflop = info.get("dense_mflop_per_step")
            out.append(
                {
                    "model": model,
                    "backend": backend,
                    "dt_ms": dt,
                    "batch1_median_ms": first["median_ms"] if first["batch"] == 1 else None,
                    "largest_batch_p99_below_dt": best["batch"] if best else None,
                    "largest_batch_measured": rows[-1]["batch"],
                    "median_ms": best["median_ms"] if best else None,
                    "p99_ms": best["p99_ms"] if best else None,
                    "streams_per_s": best["streams_per_s"] if best else None,
                    "dense_gflop_per_s": (
                        mflop * best["streams_per_s"] / 1e3 if best and mflop is not None else None
                    ),
                    "gpu_mib_per_stream": best.get("gpu_mib_per_stream") if best else None,
                }
            )
    return out


def _mib(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}" if v < 1 else f"{v:.1f}"


def format_markdown(result: dict[str, Any], peak_tflops: float | None = None) -> str:
    m = result["machine"]
    cuda = result.get("device") == "cuda"
    lines = [
        (
            f"Machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}, torch {m['torch']}, "
            f"onnxruntime {m['onnxruntime']}; {result['threads']} threads per backend; load average "
            f"{m['load_avg_at_start']:.2f} at start, {m['load_avg_at_end']:.2f} at end."
        ),
    ]
    if cuda:
        lines.append(
            f"GPU: {m['gpu']} (compute capability {m['gpu_capability']}, {m['gpu_memory_gib']} GiB, "
            f"{m['gpu_multiprocessors']} multiprocessors); torch CUDA {m['torch_cuda']}, cuDNN {m['cudnn']}; "
            f"ONNX Runtime providers: {', '.join(m['onnxruntime_providers'])}. Every cell steps on the GPU "
            "(frames in from host memory, outputs back to it, each call synchronised)."
        )
    lines += [
        "",
        "| model | backend | batch | median ms / step | p99 ms / step | min ms / step | streams / s | calls |"
        + (" GPU MiB / stream |" if cuda else ""),
        "|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if cuda else ""),
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['model']} | {r['backend']} | {r['batch']} | {r['median_ms']:.3f} | {r['p99_ms']:.3f} | "
            f"{r['min_ms']:.3f} | {r['streams_per_s']:.0f} | {r['calls']} |"
            + (f" {_mib(r.get('gpu_mib_per_stream'))} |" if cuda else "")
        )
    lines += [
        "",
        (
            "| model | batch | torch eager / onnx | torch rewritten / onnx | window / torch eager step "
            "| window / onnx step | T/2 |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    by = {(r["model"], r["backend"].split(" (")[0], r["batch"]): r["median_ms"] for r in result["rows"]}
    for model, info in result["models"].items():
        for batch in sorted({r["batch"] for r in result["rows"] if r["model"] == model}):
            onnx, eager, rew, win = (
                by.get((model, k, batch)) for k in ("onnx", "torch eager", "torch rewritten", "window")
            )
            cells = [
                f"{eager / onnx:.1f}x" if eager and onnx else "-",
                f"{rew / onnx:.1f}x" if rew and onnx else "-",
                f"{win / eager:.1f}x" if win and eager else "-",
                f"{win / onnx:.1f}x" if win and onnx else "-",
            ]
            lines.append(f"| {model} | {batch} | {' | '.join(cells)} | {info['timesteps'] / 2:g} |")
    for label, n, est in result.get("skipped", []):
        lines.append(
            f"\nWindow recomputation for {label} at batch {n} skipped: about {est:.0f} s per step "
            "(extrapolated linearly from the largest batch measured)."
        )
    lines += [
        "",
        "Memory per stream: "
        + "; ".join(
            f"{model}: "
            + ", ".join(f"{key} {v / 1024:.1f} KiB" for key, v in info["bytes_per_stream"].items())
            for model, info in result["models"].items()
        )
        + (
            " (state only: ONNX Runtime's GPU runner keeps one copy of it)."
            if cuda
            else " (the ONNX Runtime host runner keeps two copies of the state)."
        ),
    ]
    lines += _format_event(result)
    lines += _format_realtime(result, peak_tflops)
    lines += [f"\nNote: {n}" for n in result.get("notes", [])]
    return "\n".join(lines) + "\n"


def _format_event(result: dict[str, Any]) -> list[str]:
    """The event-driven runner against the dense ONNX step, and the work it did against the SOPs."""
    rows = [r for r in result["rows"] if r["backend"] == "event"]
    if not rows:
        return []
    by = {(r["model"], r["backend"], r["batch"]): r["median_ms"] for r in result["rows"]}
    lines = [
        "",
        (
            f"Event-driven ({result.get('frames', 'random')} frames): median step against the dense ONNX "
            "step of the same run. Work per stream and step: accumulations executed on spikes (layers "
            "2..L; a layer that ran dense counts all of its multiply-adds) against the energy proxy's "
            "SOPs (spikes x fan-out of the network as trained, a 3x3 convolution before its pool: the "
            "scatter into a folded 4x4 stride-2 kernel does 4 instead of 9 accumulations per spike "
            "and output channel), and layer 1's accumulations on the event counts against its dense "
            "multiply-adds. Dense share: layer-steps that took the dense product because their input "
            "was denser than the crossover."
        ),
        "",
        (
            "| model | batch | event ms | onnx ms | onnx / event | ops on spikes | SOPs | ops / SOPs "
            "| layer-1 ops | layer-1 dense MACs | dense share |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        onnx = by.get((r["model"], "onnx", r["batch"]))
        ops, sops = r.get("ops_per_stream_step"), r.get("sops_per_stream_step")
        first, macs = r.get("first_ops_per_stream_step"), result["models"][r["model"]].get("first_layer_macs")
        cells = [
            r["model"],
            str(r["batch"]),
            f"{r['median_ms']:.3f}",
            f"{onnx:.3f}" if onnx else "-",
            f"{onnx / r['median_ms']:.2f}x" if onnx else "-",
            f"{ops:,.0f}" if ops is not None else "-",
            f"{sops:,.0f}" if sops is not None else "-",
            f"{ops / sops:.2f}" if ops is not None and sops else "-",
            f"{first:,.0f}" if first is not None else "-",
            f"{macs:,}" if macs else "-",
            f"{r.get('dense_share') or 0:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    for model, info in result["models"].items():
        for batch, cross in info.get("event_crossovers", {}).items():
            cells = ", ".join(f"{k} {v:g}" for k, v in cross.items())
            lines.append(
                f"\nCrossovers of {model} at batch {batch} (input density above which the dense product "
                f"was faster, measured at the start of the cell; 1: the scatter always was): {cells}."
            )
    return lines


def _format_realtime(result: dict[str, Any], peak_tflops: float | None) -> list[str]:
    summary = result.get("realtime") or realtime_summary(result)
    if not summary:
        return []
    cuda = result.get("device") == "cuda"
    where = "this GPU" if cuda else "this machine"
    head = (
        "| model | backend | dt ms | batch 1 median ms | largest batch with p99 < dt | median / p99 ms there "
        "| streams / s there | dense GFLOP/s there |"
    )
    rule = "|---|---|---:|---:|---:|---:|---:|---:|"
    if cuda:
        head, rule = head + " GPU MiB / stream there |", rule + "---:|"
    if peak_tflops:
        head, rule = head + f" % of {peak_tflops:g} TFLOP/s |", rule + "---:|"
    lines = [
        "",
        (
            f"Real time on {where}: the largest batch measured whose step stays below the model's dt "
            "(p99), i.e. how many streams one step can carry in real time (step only, no service; the "
            "true limit lies between this batch and the next one measured). Dense GFLOP/s counts every "
            "convolution and linear layer as dense (2 x multiply-adds of the float network), the "
            "yardstick for a device's dense peak."
        ),
        "",
        head,
        rule,
    ]
    for s in summary:
        best = s["largest_batch_p99_below_dt"]
        b1 = s["batch1_median_ms"]
        cells = [
            s["model"],
            s["backend"],
            f"{s['dt_ms']:g}" if s["dt_ms"] is not None else "-",
            f"{b1:.3f}" if b1 is not None else "-",
            (f"{best} (all measured)" if best == s["largest_batch_measured"] else str(best)) if best else "none",
            f"{s['median_ms']:.3f} / {s['p99_ms']:.3f}" if best else "-",
            f"{s['streams_per_s']:.0f}" if best else "-",
            f"{s['dense_gflop_per_s']:.1f}" if s["dense_gflop_per_s"] is not None else "-",
        ]
        if cuda:
            cells.append(_mib(s["gpu_mib_per_stream"]))
        if peak_tflops:
            g = s["dense_gflop_per_s"]
            cells.append(f"{100 * g / (peak_tflops * 1e3):.3f}" if g is not None else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(args: argparse.Namespace | None = None) -> int:
    if args is None:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        add_arguments(parser)
        args = parser.parse_args()
    result = run(
        models=tuple(args.models.split(",")),
        batches=tuple(int(b) for b in args.batches.split(",")),
        backends=tuple(args.backends.split(",")),
        threads=args.threads,
        budget=args.budget,
        window=not args.no_window,
        compile=args.compile,
        window_max_s=args.window_max_s,
        device=getattr(args, "device", "cpu"),
        frames=getattr(args, "frames", "gesture"),
    )
    emit(result, format_markdown(result, getattr(args, "peak_tflops", None)), args)
    return 0


def emit(result: dict[str, Any], text: str, args: argparse.Namespace) -> None:
    """Print the markdown; write it and the raw results where ``--markdown`` / ``--json`` say."""
    print()
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
