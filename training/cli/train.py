"""``asasnn train``: train a vanilla / SA / ASA / causal-ASA spiking network.

Examples::

    asasnn train --recipe tiny-synthetic --attention asa --run-dir runs/tiny-asa
    asasnn train --recipe gesture3-dvs128 --root data/DvsGesture --run-dir runs/gesture3-asa
    asasnn train --resume runs/tiny-asa            # continue after an interruption
    torchrun --nproc_per_node 4 -m asasnn train --recipe gesture3-dvs128 --root ...

Options come from, lowest first: the defaults, ``--recipe`` (a shipped YAML file in
``training/recipes/``) or ``--config`` (any YAML file), the checkpoint being resumed, then flags.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from training.config import RECIPES_DIR, add_config_arguments, config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    recipes = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
    parser.add_argument("--recipe", help=f"shipped recipe name or YAML path ({recipes})")
    parser.add_argument("--config", help="YAML file of training options (applied after --recipe)")
    parser.add_argument("--resume", metavar="RUN_OR_CHECKPOINT", help="continue a run from its last.pt")
    parser.add_argument("--overwrite", action="store_true", help="start afresh in a run dir that has a checkpoint")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    parser.add_argument("--print-config", action="store_true", help="print the merged configuration and exit")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import yaml

    from training.checkpoint import load_checkpoint
    from training.config import TrainConfig
    from training.loop import Trainer

    base, original_command, resumed_from = None, None, None
    if args.resume:
        try:
            resumed_from = load_checkpoint(args.resume, resume=True)
            assert resumed_from.train_config is not None  # resume=True checked it
            base = TrainConfig.from_dict(resumed_from.train_config)
        except ValueError as err:  # no such file, not a checkpoint, no training state, an unknown option
            print(f"asasnn train: cannot resume: {err}", file=sys.stderr)
            return 2
        original_command = resumed_from.command
        if args.run_dir is None:  # keep writing next to the checkpoint being resumed
            resumed = Path(args.resume)
            args.run_dir = str(resumed if resumed.is_dir() else resumed.parent)
    try:
        cfg = config_from_args(args, base)
    except ValueError as err:
        print(f"asasnn train: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    last = Path(cfg.run_dir) / "last.pt"
    if last.exists() and not args.resume and not args.overwrite:
        print(f"asasnn train: {last} exists; pass --resume {cfg.run_dir} or --overwrite", file=sys.stderr)
        return 2
    if args.overwrite and not args.resume:
        (Path(cfg.run_dir) / "metrics.jsonl").unlink(missing_ok=True)
    if base is not None:  # resumed: the command that started the run, or the equivalent of the new config
        command = original_command if cfg == base and original_command else cfg.to_command()
    elif "train" in sys.argv:
        command = shlex.join(["asasnn", "train", *sys.argv[sys.argv.index("train") + 1 :]])
    else:
        command = cfg.to_command()
    try:
        trainer = Trainer(cfg, command=command, resume=resumed_from, progress=args.progress)
    except (FileNotFoundError, ValueError) as err:  # missing data, a checkpoint of another network
        print(f"asasnn train: {err}", file=sys.stderr)
        return 2
    try:
        trainer.run()
    finally:
        trainer.close()
    if trainer.main:
        print(f"checkpoints: {Path(cfg.run_dir) / 'last.pt'}, {Path(cfg.run_dir) / 'best.pt'} (best vote accuracy {trainer.best:.4f})")
    return 0
