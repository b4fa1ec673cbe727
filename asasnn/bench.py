"""``asasnn bench``: the project's benchmarks (not tests), from the scripts in ``benchmarks/``.

* ``asasnn bench runtime``: per-step latency (median, p99) and streams/s of the stateful runtime, ONNX
  Runtime and torch, at batch 1/8/32/128, against window recomputation (benchmarks/bench_runtime.py;
  the results table lives in docs/performance.md); ``--device cuda`` on a GPU (benchmarks/gpu_check.sh).
* ``asasnn bench rewrites``: what each export rewrite buys on one network's ONNX step, against the
  torch eager step (benchmarks/bench_rewrites.py).
* ``asasnn bench encoder``: event-binning throughput of FrameBinner (benchmarks/bench_encoder.py).
* ``asasnn bench service``: N streams from load-generator processes against a real server: losses,
  order, latency, server CPU and memory; ``--find-capacity`` bisects the real-time stream count and
  measures the model alone beside it (benchmarks/bench_service.py, benchmarks/loadgen.py).
* ``asasnn bench soak``: healthy real-time streams beside a hostile client mix for minutes: lost or
  reordered predictions, their latency, the server's memory over time (benchmarks/bench_soak.py).
* ``asasnn bench training``: one training iteration's time and peak memory on the CPU, the compiled
  LIF window against the autograd loop (benchmarks/bench_training.py).
* ``asasnn bench peers``: SpikingJelly, snnTorch and Norse rebuilding the same network: spike agreement
  and per-step latency against our backends (benchmarks/bench_peers.py; re-runs itself in .venv-peers).

The scripts are loaded by file path when chosen, so this command needs a source checkout.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str) -> ModuleType:
    path = BENCHMARKS / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: `asasnn bench` needs a source checkout")
    spec = importlib.util.spec_from_file_location(f"asasnn_benchmarks_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


SCRIPTS = {
    "runtime": "bench_runtime",
    "rewrites": "bench_rewrites",
    "encoder": "bench_encoder",
    "service": "bench_service",
    "soak": "bench_soak",
    "peers": "bench_peers",
    "training": "bench_training",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="target", metavar="TARGET", required=True)
    helps = {
        "runtime": "stepwise runtime latency and throughput (ONNX Runtime, torch)",
        "rewrites": "what each export rewrite buys (ONNX step vs torch eager step)",
        "service": "N streams against a real server: losses, latency; --find-capacity",
        "soak": "healthy streams beside a hostile client mix: losses, latency, memory over time",
        "peers": "SpikingJelly, snnTorch, Norse on the same network: spike agreement, per-step latency",
        "training": "training-step time and peak memory: the compiled LIF window vs the autograd loop",
    }
    for target, text in helps.items():
        p = sub.add_parser(target, help=text)
        try:
            _load(SCRIPTS[target]).add_arguments(p)
        except FileNotFoundError:
            pass  # reported by run()
    encoder = sub.add_parser("encoder", help="event binning throughput (FrameBinner vs np.add.at)")
    encoder.add_argument("--events", type=int, default=2_000_000, help="events in the synthetic recording")


def run(args: argparse.Namespace) -> int:
    try:
        module = _load(SCRIPTS[args.target])
    except FileNotFoundError as err:
        print(f"asasnn bench: {err}", file=sys.stderr)
        return 2
    if args.target != "encoder":
        return int(module.main(args) or 0)
    results = module.run(args.events)
    print(f"{args.events} events; ratio = np.add.at time / FrameBinner time")
    print(f"{'frame':>12} {'packet':>8} {'FrameBinner Mev/s':>18} {'np.add.at Mev/s':>16} {'ratio':>6}")
    for (shape, size), r in results.items():
        print(
            f"{'x'.join(map(str, shape)):>12} {size:>8} {r['binner_ev_s'] / 1e6:>18.1f} "
            f"{r['add_at_ev_s'] / 1e6:>16.1f} {r['ratio']:>6.2f}"
        )
    return 0
