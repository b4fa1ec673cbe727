"""``asasnn eval CHECKPOINT_or_BUNDLE``: accuracy, firing rates, spike counts, SOPs and energy proxy.

Examples::

    asasnn eval runs/tiny-asa/best.pt                   # synthetic test split, 10 clips a recording
    asasnn eval runs/gesture3-asa/best.pt --root data/DvsGesture --json out.json
    asasnn eval models/bundled/default                  # a bundle directory

The data is the one the model was trained on (dataset, binning, T from the checkpoint); ``--split``,
``--root`` and ``--clips`` change where and how it is tested. The JSON (default: ``eval-<split>.json``
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
    parser.add_argument("--no-progress", dest="progress", action="store_false")


def load_model(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """``(network in eval mode, checkpoint-like dict with config, data, train_config, metrics)``.

    Accepts a checkpoint file, a run directory (``best.pt``, else ``last.pt``) or a bundle directory
    (``models.runtime.bundle.load_bundle``).
    """
    import torch

    from models.config import NetworkConfig
    from models.network import SpikingNet

    path = Path(path)
    if path.is_dir() and not (path / "best.pt").exists() and not (path / "last.pt").exists():
        from models.runtime.bundle import load_bundle  # a bundle directory

        return _from_bundle(load_bundle(path, check_graph=False), path)  # the torch network is enough
    if path.is_dir():
        path = path / ("best.pt" if (path / "best.pt").exists() else "last.pt")
    ck = torch.load(path, map_location="cpu", weights_only=True)
    net = SpikingNet(NetworkConfig.from_dict(ck["config"]))
    net.load_state_dict(ck["model"])
    return net.eval(), {k: ck.get(k) for k in ("config", "data", "train_config", "metrics", "command")} | {"path": str(path)}


def _from_bundle(bundle: Any, path: Path) -> tuple[Any, dict[str, Any]]:
    """Read what a bundle offers: a network and a card with the checkpoint's data / train_config."""
    net = getattr(bundle, "net", None) or getattr(bundle, "network", None) or getattr(bundle, "model", None)
    card = getattr(bundle, "card", None) or {}
    if not isinstance(card, dict):
        card = card.to_dict() if hasattr(card, "to_dict") else vars(card)
    if net is None or "data" not in card:
        raise ValueError(f"{path}: bundle does not expose a network and its data description")
    info = {k: card.get(k) for k in ("config", "data", "train_config", "metrics", "command")}
    return net.eval(), info | {"path": str(path)}


def run(args: argparse.Namespace) -> int:
    import torch

    from models.instrument import EnergyModel
    from training.config import TrainConfig
    from training.distributed import pick_device
    from training.evaluate import format_table, predict, summarize
    from training.loop import frame_dataset, open_source

    try:
        net, info = load_model(args.model)
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
        "attention": net.cfg.to_dict()["attention"],
        "dt_us": cfg.dt_us,
        "ds": cfg.ds,
        **summarize(preds, energy, cfg.timesteps, data["classes"]),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    out = Path(args.json_path) if args.json_path else _default_json(Path(info["path"]), cfg.val_split)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{report['model']}  ({net.cfg.name}, attention {net.cfg.attention.kind}) on the {report['data']}")
    print(format_table(report))
    print(f"\nJSON report: {out}")
    return 0


def _default_json(model: Path, split: str) -> Path:
    if model.suffix == ".pt":
        return model.with_name(f"eval-{model.stem}-{split}.json")
    return Path(f"eval-{model.name}-{split}.json")
