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
* ``window``: baseline a, re-running the whole T-window multi-step network (torch, eager) for every
  new timestep, which is what a runtime without carried state has to do.

Latency is the wall time of one ``step(slots, frames)`` call (gather, network, scatter, outputs),
median and 99th percentile over as many calls as fit the time budget; streams/s is batch / median.
Untrained networks are calibrated so every layer spikes (the dense compute does not depend on it).

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default="default,gesture3", help="comma list: default, tiny, gesture3")
    parser.add_argument(
        "--batches", default="1,8,32,128", help="comma list of batch sizes (streams per step)"
    )
    parser.add_argument(
        "--backends",
        default="onnx,onnx-float,torch,torch-rewritten",
        help="comma list: onnx, onnx-float, torch, torch-rewritten",
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
    parser.add_argument("--json", help="write the raw results here")
    parser.add_argument("--markdown", help="write the markdown table here")


def _machine() -> dict[str, Any]:
    import numpy
    import onnxruntime
    import torch

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
        "load_avg_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


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


def _stepper(runner: Any, slots: list[int], seq: Any):
    """A call that steps ``slots`` with the next frame of ``seq`` (cycling)."""
    t = itertools.count()
    return lambda: runner.step(slots, seq[next(t) % len(seq)])


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
    backends: tuple[str, ...] = ("onnx", "onnx-float", "torch", "torch-rewritten"),
    threads: int = 2,
    budget: float = 2.0,
    window: bool = True,
    compile: bool = False,
    window_max_s: float = 20.0,
    log=print,
) -> dict[str, Any]:
    import torch

    from models.runtime.export import export_onnx, random_frames
    from models.runtime.ort_runner import OrtStepRunner
    from models.runtime.torch_runner import TorchStepRunner
    from models.runtime.window import TorchWindowEval

    torch.set_num_threads(threads)
    result: dict[str, Any] = {"machine": _machine(), "threads": threads, "rows": [], "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            label, b = _bundle(name, Path(tmp))
            T = b.card.timesteps
            result["models"][label] = {"timesteps": T, "bytes_per_stream": {}}
            runners: dict[str, Any] = {}
            if "onnx" in backends:
                runners["onnx"] = OrtStepRunner(b.onnx_path, b.card, b.exact, "cpu", threads=threads)
            if "onnx-float" in backends:  # the float32 arithmetic exactness replaced
                graph = export_onnx(b.net, "step")
                runners["onnx float32"] = OrtStepRunner(graph, b.card, b.exact, "cpu", threads=threads)
            if "torch" in backends:
                runners["torch eager"] = TorchStepRunner(b.exact, b.card, "cpu")
            if "torch-rewritten" in backends:
                runners["torch rewritten"] = TorchStepRunner(b.exact, b.card, "cpu", rewrite=True)
            if compile:
                runners["torch.compile"] = TorchStepRunner(b.exact, b.card, "cpu", compile=True)
            last_window: tuple[int, float] | None = None  # (batch, seconds per evaluation)
            for n in batches:
                seq = random_frames(SEQUENCE, n, b.card.frame_shape, seed=n)
                opened = {key: [r.open() for _ in range(n)] for key, r in runners.items()}
                steps = {key: _stepper(r, opened[key], seq) for key, r in runners.items()}
                window_fn = None
                if window and last_window and last_window[1] * n / last_window[0] > window_max_s:
                    est = last_window[1] * n / last_window[0]
                    log(
                        f"{label:>40} {'window':>14} batch {n:>4}: skipped (about {est:.0f} s per evaluation)"
                    )
                    result["skipped"] = result.get("skipped", []) + [[label, n, est]]
                elif window:
                    ev = TorchWindowEval(b.exact, "cpu")
                    win = random_frames(T, n, b.card.frame_shape, seed=n)
                    window_fn = lambda ev=ev, win=win: ev(win)
                times = _measure(steps, window_fn, budget)
                for key, r in runners.items():
                    for slot in opened[key]:
                        r.close(slot)
                    result["models"][label]["bytes_per_stream"][key] = r.bytes_per_stream()
                for key, ms in times.items():
                    row = _row(label, f"window (T={T})" if key == "window" else key, n, ms)
                    if key == "window":
                        last_window = (n, row.median_ms / 1e3)
                    result["rows"].append(asdict(row))
                    log(
                        f"{label:>40} {key:>14} batch {n:>4}: median {row.median_ms:9.3f} ms  "
                        f"min {row.min_ms:9.3f} ms  p99 {row.p99_ms:9.3f} ms  "
                        f"{row.streams_per_s:10.1f} streams/s  ({row.calls} calls)"
                    )
            del runners
    result["machine"]["load_avg_at_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return result


def format_markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        (
            f"Machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}, torch {m['torch']}, "
            f"onnxruntime {m['onnxruntime']}; {result['threads']} threads per backend; load average "
            f"{m['load_avg_at_start']:.2f} at start, {m['load_avg_at_end']:.2f} at end."
        ),
        "",
        "| model | backend | batch | median ms / step | p99 ms / step | min ms / step | streams / s | calls |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['model']} | {r['backend']} | {r['batch']} | {r['median_ms']:.3f} | {r['p99_ms']:.3f} | "
            f"{r['min_ms']:.3f} | {r['streams_per_s']:.0f} | {r['calls']} |"
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
        + " (the ONNX Runtime host runner keeps two copies of the state).",
    ]
    return "\n".join(lines) + "\n"


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
    )
    text = format_markdown(result)
    print()
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
