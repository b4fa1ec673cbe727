"""``asasnn eval CHECKPOINT_or_BUNDLE``: accuracy, firing rates, spike counts, SOPs and energy proxy.

Examples::

    asasnn eval runs/tiny-asa/best.pt                   # synthetic test split, 10 clips a recording
    asasnn eval runs/gesture3-asa/best.pt --root data/DvsGesture --json out.json
    asasnn eval models/bundled/default                  # a bundle directory

The data is the one the model was trained on (dataset, binning, T from the checkpoint); ``--split``,
``--root`` and ``--clips`` change where and how it is tested. A bundle is evaluated in its exact form
(docs/exact.md), which is what the runtime computes, and a checkpoint in float32 as trained;
``--arithmetic`` picks the other (a checkpoint's exact form is the one an export would give it).
``--update-card`` writes a bundle's accuracy and NASFR into its card. The JSON (default: ``eval-<split>.json``
beside a checkpoint, or the working directory for a bundle) holds every number of the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="checkpoint (.pt), run directory (its best.pt) or bundle directory")
    parser.add_argument("--split", default=None, help="data split (default: the run's validation split)")
    parser.add_argument("--root", default=None, help="dataset directory (default: the run's)")
    parser.add_argument("--clips", type=int, default=None, help="clips per recording (default: the run's, 10)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate a fixed random subset of recordings")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--cache-dir", default=None, help="frame cache directory (default: the run's)")
    parser.add_argument("--json", dest="json_path", default=None, help="where to write the JSON report")
    parser.add_argument(
        "--arithmetic",
        choices=("exact", "float32"),
        default=None,
        help="the network's exact form (default for a bundle) or its float32 weights as trained (default for a checkpoint)",
    )
    parser.add_argument(
        "--update-card", action="store_true", help="bundle: write the accuracy and NASFR into its card.json"
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false")


def load_model(path: str | Path, arithmetic: str | None = None) -> tuple[Any, dict[str, Any]]:
    """:func:`training.checkpoint.load_model`, imported when called (``--help`` imports no torch)."""
    from training.checkpoint import load_model as load

    return load(path, arithmetic)


def run(args: argparse.Namespace) -> int:
    import torch

    from models.instrument import EnergyModel
    from models.machine import describe
    from training.config import TrainConfig
    from training.data_source import frame_dataset, open_source
    from training.distributed import pick_device
    from training.evaluate import format_table, predict, summarize

    try:
        net, info = load_model(args.model, args.arithmetic)
    except Exception as err:  # noqa: BLE001 (missing file, not a checkpoint, a bundle that does not validate, ...)
        print(f"asasnn eval: cannot load {args.model}: {type(err).__name__}: {str(err).splitlines()[0][:300]}", file=sys.stderr)
        return 2
    if not info.get("train_config"):
        print(f"asasnn eval: {args.model} does not say which data it was trained on", file=sys.stderr)
        return 2
    cfg = TrainConfig.from_dict(info["train_config"])
    over: dict[str, Any] = {"limit_val": args.limit}
    for key, value in (("val_split", args.split), ("root", args.root), ("test_clips", args.clips), ("cache_dir", args.cache_dir)):
        if value is not None:
            over[key] = value
    cfg = cfg.merged(over)
    data = info["data"]
    if [cfg.dt_us, cfg.ds, cfg.timesteps] != [data["dt_us"], data["ds"], data["timesteps"]]:
        print("asasnn eval: train_config and data disagree on dt_us / ds / timesteps", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    net = net.to(device)
    t0 = time.perf_counter()
    source = open_source(cfg, cfg.val_split)
    dataset = frame_dataset(cfg, source, cfg.val_split, train=False)
    dataset.warm(args.progress, "encode")
    preds = predict(net, dataset, None, args.batch_size, device, amp=False, num_workers=args.num_workers,
                    progress=args.progress)
    energy = EnergyModel.from_network(net)
    report = {
        "model": info["path"],
        "command": info.get("command"),
        "dataset": cfg.dataset,
        "split": cfg.val_split,
        "data": cfg.data_description,
        "classes": list(data["classes"]),
        "network": net.cfg.name,
        "arithmetic": info["arithmetic"],
        "attention": net.cfg.to_dict()["attention"],
        "dt_us": cfg.dt_us,
        "ds": cfg.ds,
        **summarize(preds, energy, cfg.timesteps, data["classes"]),
        "trained_on": info.get("machines") or [],  # empty: not recorded (runs before the record)
        "evaluated_on": describe(device),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    out = Path(args.json_path) if args.json_path else _default_json(Path(info["path"]), cfg.val_split)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")  # never a half-written report (asasnn sweep reads them)
    partial.write_text(json.dumps(report, indent=2) + "\n")
    partial.replace(out)
    print(
        f"{report['model']}  ({net.cfg.name}, attention {net.cfg.attention.kind}, {info['arithmetic']} arithmetic) "
        f"on the {report['data']}"
    )
    print(format_table(report))
    print(f"\nJSON report: {out}")
    if args.update_card:
        if info["arithmetic"] != "exact" or not (Path(args.model) / "card.json").is_file():
            print("asasnn eval: --update-card takes a bundle in its exact form", file=sys.stderr)
            return 2
        float_net, _ = load_model(args.model, "float32")  # the float32 figures beside the exact ones
        floats = predict(float_net.to(device), dataset, None, args.batch_size, device, amp=False,
                         num_workers=args.num_workers, progress=args.progress)
        return _update_card(Path(args.model), report, summarize(floats, energy, cfg.timesteps, data["classes"]))
    return 0


def _update_card(bundle_dir: Path, report: dict[str, Any], floats: dict[str, Any]) -> int:
    """Write the evaluation's accuracy (vote, clip) and NASFR into a bundle's card, with the float32
    network's beside them (nothing else changes)."""
    from models.runtime.bundle import CARD_FILE, read_card

    card = read_card(bundle_dir)
    metrics = card.metrics.model_copy(
        update={
            "accuracy": report["accuracy"]["vote"],
            "clip_accuracy": report["accuracy"]["clip"],
            "nasfr": report["nasfr"],
            "float32_accuracy": floats["accuracy"]["vote"],
            "float32_clip_accuracy": floats["accuracy"]["clip"],
            "float32_nasfr": floats["nasfr"],
            "data": f"{report['data']}; exact arithmetic (float32_*: the weights as trained)",
            "split": report["split"],
            "command": f"asasnn eval {bundle_dir} --update-card",
        }
    )
    card = card.model_copy(update={"metrics": metrics})
    (bundle_dir / CARD_FILE).write_text(card.model_dump_json(indent=2) + "\n")
    print(f"updated {bundle_dir / CARD_FILE}: accuracy {metrics.accuracy:.4f}, NASFR {metrics.nasfr:.4f}")
    return 0


def _default_json(model: Path, split: str) -> Path:
    if model.suffix == ".pt":
        return model.with_name(f"eval-{model.stem}-{split}.json")
    return Path(f"eval-{model.name}-{split}.json")
