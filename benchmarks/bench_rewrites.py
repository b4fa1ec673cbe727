"""What each export rewrite buys: the ONNX step of one network with the rewrites switched on one by one.

The rewrites live in ``models/runtime/rewrite.py``. Each row adds one to the row above, starting from
the graph with BatchNorm folded only; every graph is exported, checked against the PyTorch step
(spike counts on the same frames) and timed with ONNX Runtime (``session.run``, state fed back,
frames cycling through a sequence), interleaved with the torch eager step (baseline b of
``bench_runtime.py``, BatchNorm folded) so that machine load hits every row alike.

Run: ``python benchmarks/bench_rewrites.py [--model gesture3] [--batch 1]`` or ``asasnn bench rewrites``.
Not a test.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.bench_runtime import SEQUENCE, _machine, _measure


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="gesture3", help="network preset (gesture3, tiny, small3)")
    parser.add_argument("--batch", type=int, default=1, help="streams per step")
    parser.add_argument("--threads", type=int, default=1, help="threads for ONNX Runtime and torch")
    parser.add_argument("--budget", type=float, default=10.0, help="seconds of timing in all")


def _variants() -> list[tuple[str, Any]]:
    from models.runtime.rewrite import Rewrites

    steps = [
        ("BatchNorm folded", Rewrites(False, False, False, False)),
        ("+ average pools folded into the convolutions", Rewrites(True, False, False, False)),
        (
            "+ spatial maps' channel pooling without middle-axis reductions",
            Rewrites(True, True, False, False),
        ),
        ("+ causal ASA on both groups at once, ONNX TopK", Rewrites(True, True, True, False)),
        ("+ spike-driven large FC layers", Rewrites(True, True, True, True)),
    ]
    return steps


class _OrtLoop:
    """``session.run`` on the next frame with the state of the previous call."""

    def __init__(self, session: Any, seq: Any, state_names: list[str], state_shapes: list[Any]) -> None:
        import numpy as np

        self.session, self.seq, self.t = session, seq, 0
        self.names = state_names
        self.feed = {n: np.zeros((seq.shape[1], *s), np.float32) for n, s in zip(state_names, state_shapes)}
        self.outputs = ["counts", *(f"{n}.next" for n in state_names)]

    def __call__(self) -> Any:
        self.feed["frames"] = self.seq[self.t % len(self.seq)]
        counts, *state = self.session.run(self.outputs, self.feed)
        self.feed.update(zip(self.names, state))
        self.t += 1
        return counts


def run(model: str = "gesture3", batch: int = 1, threads: int = 1, budget: float = 10.0, log=print) -> dict:
    import numpy as np
    import torch

    from models.runtime.calibrate import untrained_network
    from models.runtime.export import export_onnx, random_frames
    from models.runtime.ort_runner import make_session
    from models.runtime.rewrite import fold_batchnorm

    torch.set_num_threads(threads)
    net = untrained_network(model)
    seq = random_frames(SEQUENCE, batch, (net.cfg.in_channels, *net.cfg.input_size), seed=batch)
    names, shapes = net.state_names(), net.state_shapes()

    eager = fold_batchnorm(net)
    ref_state = eager.init_state(batch)
    ref_counts = []
    with torch.inference_mode():
        for t in range(SEQUENCE):
            o, ref_state = eager.step(torch.from_numpy(seq[t]), ref_state)
            ref_counts.append(o.counts.numpy())

    steps: dict[str, Any] = {}
    checks: dict[str, float] = {}
    for label, rewrites in _variants():
        log(f"exporting: {label}")
        loop = _OrtLoop(
            make_session(export_onnx(net, "step", rewrites=rewrites), "cpu", threads), seq, names, shapes
        )
        counts = [loop() for _ in range(SEQUENCE)]
        checks[label] = float(
            np.abs(np.stack(counts) - np.stack(ref_counts)).sum() / np.stack(ref_counts).sum()
        )
        steps[label] = loop

    state = [eager.init_state(batch)]
    tick = itertools.count()

    def eager_step() -> None:
        with torch.inference_mode():
            _, state[0] = eager.step(torch.from_numpy(seq[next(tick) % SEQUENCE]), state[0])

    steps["torch eager step (baseline)"] = eager_step
    times = _measure(steps, None, budget)
    base = float(np.median(times["torch eager step (baseline)"]))
    rows = [
        {
            "graph": k,
            "median_ms": float(np.median(v)),
            "min_ms": float(np.min(v)),
            "eager_over_this": base / float(np.median(v)),
            "count_mismatch": checks.get(k),
            "calls": len(v),
        }
        for k, v in times.items()
    ]
    return {"machine": _machine(), "model": model, "batch": batch, "threads": threads, "rows": rows}


def format_markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        (
            f"{result['model']} (causal ASA, untrained, calibrated), batch {result['batch']}, "
            f"{result['threads']} thread(s); {m['cpu']}, onnxruntime {m['onnxruntime']}, torch {m['torch']}; "
            f"load average {m['load_avg_at_start']:.2f} at start."
        ),
        "",
        "| graph | median ms / step | min ms / step | torch eager / this | spike-count mismatch vs torch |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        mismatch = "-" if r["count_mismatch"] is None else f"{r['count_mismatch']:.1e}"
        lines.append(
            f"| {r['graph']} | {r['median_ms']:.3f} | {r['min_ms']:.3f} | {r['eager_over_this']:.2f}x | {mismatch} |"
        )
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace | None = None) -> int:
    if args is None:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        add_arguments(parser)
        args = parser.parse_args()
    result = run(args.model, args.batch, args.threads, args.budget)
    print()
    print(format_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
