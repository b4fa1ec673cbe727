"""``asasnn export CHECKPOINT -o DIR``: write a verified model bundle (docs/bundle.md).

CHECKPOINT is a training checkpoint (``.pt``), a run directory (its ``best.pt``, else ``last.pt``)
or an existing bundle directory (re-export). The checkpoint contract (:mod:`training.checkpoint`, which
reads it with ``torch.load(weights_only=True)``), what this command uses of it::

    config    NetworkConfig.to_dict()
    model     the network's state_dict
    data      {classes: [names], sensor: [width, height] or {width, height}, ds, dt_us,
               dataset (optional), timesteps (optional)}
    metrics   {accuracy, nasfr, data, ...}   (optional; copied to the model card)
    command, train_config                    (optional; copied to the model card)

The bundle holds the network's exact form (docs/exact.md): weights on per-layer dyadic grids chosen
so that every sum is exact, frames saturating at ``--max-count`` events. The graph is compared with
that form in PyTorch, value for value, on random frames and on real ones (``--frames`` or
``--events``, else synthetic gestures of the card's sensor); a bundle with any differing value is
not written and the command exits with 1. ``--check DIR`` re-runs that check on a written bundle.
A bundle directory of format 1 (float arithmetic) is re-exported in the exact form.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="training checkpoint (.pt), run directory, or bundle directory")
    parser.add_argument("-o", "--output", help="bundle directory to write")
    parser.add_argument("--check", action="store_true", help="only verify CHECKPOINT, an existing bundle")
    parser.add_argument("--name", help="model name on the card (default: the network preset's name)")
    parser.add_argument("--version", default=None, help="model version on the card (default 0.1.0)")
    parser.add_argument(
        "--hop", type=int, default=None, help="window mode: evaluate every HOP steps (default T/4)"
    )
    parser.add_argument("--frames", help="real frames for the check: .npy / .npz array [T, (B,) 2, H, W]")
    parser.add_argument("--events", help="real events for the check: a recording models.events can read")
    parser.add_argument(
        "--max-count",
        type=int,
        default=1023,
        help="events per frame cell at which the exact form saturates; bounds the first layer's sums (default 1023)",
    )
    parser.add_argument("--force", action="store_true", help="replace a non-empty output directory")


def _real_frames(args: argparse.Namespace, card: Any) -> Any:
    import numpy as np

    if args.frames:
        arr = np.load(args.frames)
        if hasattr(arr, "files"):  # npz: the first array
            arr = arr[arr.files[0]]
        return np.asarray(arr, dtype=np.float32)
    if args.events:
        from models.events import BinnerConfig, SensorSize, encode_events, read_events

        events, _ = read_events(args.events)
        sensor = SensorSize(card.sensor.width, card.sensor.height)
        return encode_events(events, BinnerConfig(sensor, card.dt_us, card.ds), num_bins=card.timesteps)
    return None


def _print_report(rep: Any, out: Any = None) -> None:
    out = out or sys.stdout
    bad = sum(rep.mismatches.values())
    print(
        f"  {sum(rep.compared.values())} values compared (outputs, spikes and state of every layer and step), "
        f"{bad} differ" + (f"; first: {rep.first_mismatch}" if bad else ""),
        file=out,
    )
    rates = ", ".join(f"{r:.3f}" for r in rep.layer_rates)
    print(
        f"  {rep.streams} streams x {rep.steps} steps on {', '.join(rep.frames)}; layer firing rates {rates}",
        file=out,
    )


def run(args: argparse.Namespace) -> int:
    from models.runtime.bundle import BundleError, load_bundle, load_for_export
    from models.runtime.exact import ExactRangeError, exact_spec
    from models.runtime.export import VerificationError, build_card, export_bundle, verify_bundle
    from training.checkpoint import load_network

    src = Path(args.checkpoint)
    is_bundle = src.is_dir() and (src / "card.json").exists()
    try:
        if args.check:
            if not is_bundle:
                print(f"asasnn export: --check needs a bundle directory, got {src}", file=sys.stderr)
                return 2
            card = load_bundle(src, check_graph=False).card
            rep = verify_bundle(src, _real_frames(args, card))
            print(f"{src}: {'verified' if rep.passed else 'FAILED verification'}")
            _print_report(rep)
            return 0 if rep.passed else 1
        if not args.output:
            print("asasnn export: -o/--output is required", file=sys.stderr)
            return 2
        if is_bundle:
            card, net = load_for_export(src)
            update = {
                k: v for k, v in (("name", args.name), ("version", args.version), ("hop", args.hop)) if v
            }
            card = type(card).model_validate(card.model_dump() | update)
            arithmetic = exact_spec(net, max_count=args.max_count)
        else:
            net, ck = load_network(src)
            data = ck.data
            card = build_card(
                net,
                classes=data["classes"],
                sensor=data["sensor"],
                ds=int(data["ds"]),
                dt_us=int(data["dt_us"]),
                name=args.name,
                version=args.version or "0.1.0",
                hop=args.hop,
                metrics=ck.metrics or {},
                dataset=data.get("dataset"),
                command=ck.command,
                train_config=ck.train_config,
                trained_on=ck.machines or [],
                max_count=args.max_count,
            )
            arithmetic = card.arithmetic
        card = export_bundle(
            net,
            card,
            args.output,
            real_frames=_real_frames(args, card),
            arithmetic=arithmetic,
            overwrite=args.force,
        )
    except VerificationError as err:
        print(f"asasnn export: refusing to write {args.output}: {err}", file=sys.stderr)
        _print_report(err.report, sys.stderr)
        return 1
    except (BundleError, ExactRangeError, ValueError, TypeError, FileExistsError, OSError) as err:
        print(f"asasnn export: {err}", file=sys.stderr)
        return 2
    assert card.verification is not None and card.arithmetic is not None
    print(f"wrote {args.output} ({card.mode} mode, {card.name} {card.version}, attention {card.attention})")
    bits = ", ".join(f"{n} 2^-{k}" for n, k in zip(net.layer_names, card.arithmetic.weight_bits))
    print(f"  exact form: weight grids {bits}; frames saturate at {card.arithmetic.max_count} events")
    _print_report(card.verification)
    return 0
