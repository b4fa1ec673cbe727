"""``asasnn analyze MODEL [MODEL ...]``: the paper's redundancy observations as one report, models side by side.

Examples::

    asasnn analyze runs/tiny-none/best.pt runs/tiny-asa/best.pt runs/tiny-causal-asa/best.pt --out reports/tiny
    asasnn analyze runs/gesture3-none runs/gesture3-asa --data dvs128-gesture --root data/DvsGesture

Each MODEL is a checkpoint (.pt), a run directory (its best.pt) or a bundle directory. The first
model is the baseline the others are compared against. The data is the model's own test split
(``--data`` / ``--root`` / ``--synthetic`` change it). Writes ``report.html`` (self-contained),
``figures/*.png``, ``analysis.json`` and ``arrays.npz`` into ``--out``; docs/analysis.md explains them.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path


def _kv(text: str) -> tuple[str, object]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), yaml.safe_load(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="+", metavar="MODEL", help="checkpoint (.pt), run directory or bundle directory")
    parser.add_argument("--out", default="runs/analysis", help="output directory (default: runs/analysis)")
    parser.add_argument("--names", nargs="+", default=None, help="display names of the models, in order")
    data = parser.add_argument_group("data")
    data.add_argument("--data", default=None, help="dataset name (synthetic, dvs128-gesture, ...); default: the model's own")
    data.add_argument("--root", default=None, help="dataset directory (real datasets)")
    data.add_argument("--split", default="test", help="data split (default: test)")
    data.add_argument("--synthetic", type=_kv, action="append", default=None, metavar="KEY=VALUE",
                      help="synthetic source option, repeatable (e.g. num_subjects_test=2)")
    data.add_argument("--clips", type=int, default=None, help="clips per recording (default: the run's)")
    data.add_argument("--limit", type=int, default=None, help="a fixed random subset of this many recordings")
    data.add_argument("--cache-dir", default=None, help="frame cache directory (default: the run's)")
    h = parser.add_argument_group("heuristics and figures")
    h.add_argument("--region-mass", type=float, default=0.8, help="event region: densest pixels holding this share of a clip's events")
    h.add_argument("--noise-ratio", type=float, default=1.0,
                   help="noise pattern: spike density off the event region / on it, at least this")
    h.add_argument("--min-rate", type=float, default=0.01, help="null pattern: C-SFR below this")
    h.add_argument("--ghost-threshold", type=float, default=0.9, help="near duplicates: cosine similarity at least this")
    h.add_argument("--mpd-range", type=float, nargs=2, default=(-2.0, 2.0), metavar=("LO", "HI"))
    h.add_argument("--mpd-bins", type=int, default=160)
    h.add_argument("--timestep", type=int, default=None, help="timestep (1-based) of the spike-feature grids (default: T/2)")
    h.add_argument("--samples", type=int, default=4, help="clips whose attention maps are drawn")
    h.add_argument("--no-figures", dest="figures", action="store_false", help="numbers and tables only (fast)")
    run_ = parser.add_argument_group("execution")
    run_.add_argument("--batch-size", type=int, default=32)
    run_.add_argument("--device", default="auto")
    run_.add_argument("--num-workers", type=int, default=0)
    run_.add_argument("--no-progress", dest="progress", action="store_false")


def run(args: argparse.Namespace) -> int:
    from training.analysis.report import findings, write_report
    from training.analysis.run import AnalysisOptions, analyze

    opts = AnalysisOptions(
        data=args.data, root=args.root, split=args.split, synthetic=dict(args.synthetic or []), clips=args.clips,
        limit=args.limit, cache_dir=args.cache_dir, batch_size=args.batch_size, device=args.device,
        num_workers=args.num_workers, region_mass=args.region_mass, noise_ratio=args.noise_ratio,
        min_rate=args.min_rate, ghost_threshold=args.ghost_threshold, mpd_range=tuple(args.mpd_range),
        mpd_bins=args.mpd_bins, timestep=None if args.timestep is None else args.timestep - 1,
        keep_samples=args.samples, progress=args.progress,
    )
    t0 = time.perf_counter()
    try:
        results = analyze(args.models, opts, args.names)
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"asasnn analyze: {err}", file=sys.stderr)
        return 2
    argv = sys.argv[sys.argv.index("analyze") + 1:] if "analyze" in sys.argv else args.models
    html = write_report(results, opts, Path(args.out), shlex.join(["asasnn", "analyze", *argv]), args.figures)
    for line in findings(results):
        print(line)
    print(f"report: {html} (analysis.json, figures/, arrays.npz beside it), {time.perf_counter() - t0:.1f} s")
    return 0
