"""Training-step time and peak memory on the CPU: the compiled LIF window against the autograd loop.

One training iteration (forward over the window, MSE on the output rate, backward, Adam) of a
network preset on Poisson event counts, the LIF computed by ``models/lif_window.py`` or by the
autograd loop over ``lif_step`` (``models.neuron.COMPILED_WINDOW``); both give the same values bit for
bit (tests/models/test_lif_window.py), so only time and memory differ. Each measurement runs in a
fresh process (peak RSS is per process), the two modes alternating, ``--repeats`` rounds. With
``--eval``: one evaluation pass instead (eval mode, no gradient: what validation and ``asasnn eval``
run), the compiled forward alone against the loop of ``lif_step``.

Run: ``asasnn bench training [--preset gesture3] [--attention none] [--eval]``. Not a test.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODES = ("autograd loop", "compiled window")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="gesture3", help="network preset (default gesture3)")
    parser.add_argument("--attention", default="none", choices=("none", "causal-asa", "asa"))
    parser.add_argument("--batch", type=int, default=16, help="samples per iteration (default 16)")
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations per process (default 3)")
    parser.add_argument("--repeats", type=int, default=2, help="processes per mode, alternating (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--eval", action="store_true", help="time an evaluation pass (no gradient) instead")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)


def _child(args: argparse.Namespace) -> dict:
    import torch

    from models import neuron
    from models.attention import AttentionConfig
    from models.config import preset
    from models.network import build_network
    from training.loop import rate_loss

    neuron.COMPILED_WINDOW = args.child == "compiled window"
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    cfg = preset(args.preset, 10, AttentionConfig(kind=args.attention))
    net = build_network(cfg).train()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    g = torch.Generator().manual_seed(1)
    x = torch.poisson(torch.full((cfg.timesteps, args.batch, 2, *cfg.input_size), 0.35), generator=g)
    y = torch.randint(0, 10, (args.batch,), generator=g)

    def evaluation() -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            net(x)
        return time.perf_counter() - t0

    def iteration() -> float:
        t0 = time.perf_counter()
        loss = rate_loss(net(x).out.float().mean(0), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    step = iteration
    if args.eval:
        net.eval()
        step = evaluation
    step()  # compiles (or loads) the kernels, allocates
    times = [step() for _ in range(args.iterations)]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    return {"mode": args.child, "iteration_s": times, "peak_rss_gib": peak}


def main(args: argparse.Namespace) -> int:
    if args.child:
        print(json.dumps(_child(args)))
        return 0
    flags = [f"--preset={args.preset}", f"--attention={args.attention}", f"--batch={args.batch}",
             f"--iterations={args.iterations}", f"--threads={args.threads}", *(["--eval"] if args.eval else [])]
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    for _ in range(args.repeats):
        for mode in MODES:
            out = subprocess.run(
                [sys.executable, "-m", "asasnn", "bench", "training", *flags, f"--child={mode}"],
                cwd=REPO, check=True, capture_output=True, text=True,
            ).stdout
            runs[mode].append(json.loads(out.strip().splitlines()[-1]))
    what = "one evaluation pass (no gradient)" if args.eval else "one training iteration"
    print(f"{args.preset} ({args.attention}), batch {args.batch}, {args.threads} thread(s): {what}")
    summary = {}
    for mode in MODES:
        times = [t for r in runs[mode] for t in r["iteration_s"]]
        peak = max(r["peak_rss_gib"] for r in runs[mode])
        summary[mode] = {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
                         "peak_rss_gib": peak}
        print(f"  {mode:16s} median {summary[mode]['median_s']:.2f} s (min {min(times):.2f}, max {max(times):.2f}),"
              f" peak RSS {peak:.2f} GiB")
    ratio = summary[MODES[0]]["median_s"] / summary[MODES[1]]["median_s"]
    print(f"  compiled window: {ratio:.2f}x the {'step' if args.eval else 'autograd'} loop's speed")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs,
                                         "summary": summary, "speedup": ratio}, indent=1))
    return 0
