"""``asasnn sweep``: train and evaluate every attention x seed of one recipe, resumable; print the tables.

Examples::

    asasnn sweep --attention none asa causal-asa --seeds 0 1 2 -- --recipe tiny-synthetic
    asasnn sweep --attention none causal-asa --seeds 0 1 2 --run-dirs 'runs/g3-{attention}-s{seed}' \\
        -- --recipe gesture3-synthetic

Each cell is one ``asasnn train`` (the options after ``--``, plus ``--attention``, ``--seed`` and
``--run-dir``) and one ``asasnn eval RUN_DIR/best.pt --json RUN_DIR/eval-best.json``, each in its own
process, its output in ``RUN_DIR/sweep.log``, so each run's ``command.txt`` is the single command
that reproduces it. Run the same sweep again after an interruption: a cell with a report is kept
(unless ``--epochs`` now asks for more than it ran), a cell with a ``last.pt`` is resumed (refused if its run was started with other options), the others
start. At the end the mean-and-spread tables of ``asasnn results`` (training/seeds.py) are printed,
NASFR relative to the first attention.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.config import ATTENTIONS

# how the results tables name each attention kind
LABELS = {"none": "vanilla LIF", "sa": "SA", "asa": "ASA (window)", "causal-asa": "causal ASA"}
# flags of `asasnn train` that the sweep sets per cell
OWNED = ("--attention", "--seed", "--run-dir", "--resume", "--overwrite", "--print-config")
# options a resumed run may change: where and how fast it runs, how long, and where its directory now is
FREE_ON_RESUME = ("epochs", "device", "threads", "num_workers", "cache_dir", "run_dir")
REPORT = "eval-best.json"
LOG = "sweep.log"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--attention", nargs="+", default=["none", "asa", "causal-asa"],
                        choices=ATTENTIONS, help="attention kinds, one group each (default: none asa causal-asa)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds (default: 0 1 2)")
    parser.add_argument("--run-dirs", default="runs/sweep/{attention}-s{seed}",
                        help="run directory of each cell, a pattern with {attention} and {seed} (default: %(default)s)")
    parser.add_argument("--eval-threads", type=int, default=1, help="torch CPU threads of each evaluation (default: 1)")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, metavar="-- TRAIN_OPTIONS",
                        help="`asasnn train` options shared by every cell: a --recipe or --config, then any flags")


@dataclass(frozen=True)
class Cell:
    """One training run of the sweep."""

    attention: str
    seed: int
    run_dir: Path

    @property
    def report(self) -> Path:
        return self.run_dir / REPORT

    def train_args(self, shared: list[str]) -> list[str]:
        return [*shared, "--attention", self.attention, "--seed", str(self.seed), "--run-dir", str(self.run_dir)]


def plan(attentions: list[str], seeds: list[int], pattern: str) -> list[Cell]:
    """The cells, seed by seed (so that an interrupted sweep has every attention at the low seeds)."""
    try:
        cells = [Cell(a, s, Path(pattern.format(attention=a, seed=s))) for s in seeds for a in attentions]
    except (KeyError, IndexError, ValueError) as err:  # {other}, {}, an unmatched brace
        raise ValueError(f"--run-dirs {pattern!r} is not a pattern of {{attention}} and {{seed}} ({err!r})") from None
    dirs = [c.run_dir for c in cells]
    if len(set(dirs)) != len(dirs):
        raise ValueError(f"--run-dirs {pattern!r} gives two cells one directory: use both {{attention}} and {{seed}}")
    return cells


def expected_config(cell: Cell, shared: list[str]) -> dict[str, Any]:
    """The training options ``asasnn train`` would run this cell with (checked before hours are spent)."""
    from training.cli.train import add_arguments as add_train_arguments
    from training.config import config_from_args

    parser = argparse.ArgumentParser(prog="asasnn train", add_help=False, allow_abbrev=False)
    add_train_arguments(parser)
    return config_from_args(parser.parse_args(cell.train_args(shared))).to_dict()


def run_config(run_dir: Path) -> dict[str, Any]:
    """The options of the run in ``run_dir`` (its ``config.yaml``, as its last ``asasnn train`` wrote it)."""
    import yaml

    return yaml.safe_load((run_dir / "config.yaml").read_text()) or {}


def mismatch(have: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """Options of a run (``have``) that differ from ``want``, bar :data:`FREE_ON_RESUME`."""
    return [f"{k}: {have.get(k)!r} there, {v!r} here" for k, v in want.items()
            if k not in FREE_ON_RESUME and have.get(k) != v]


def _asasnn(args: list[str], log: Path) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        out.write(f"$ {shlex.join(['asasnn', *args])}\n")
        out.flush()
        return subprocess.run([sys.executable, "-m", "asasnn", *args], stdout=out, stderr=subprocess.STDOUT,
                              check=False).returncode


def run(args: argparse.Namespace) -> int:
    from training.seeds import markdown

    shared = args.train_args[1:] if args.train_args[:1] == ["--"] else list(args.train_args)
    flags = [a.split("=", 1)[0] for a in shared]
    owned = [a for a in flags if a in OWNED]
    if owned:
        print(f"asasnn sweep: {', '.join(owned)} is the sweep's to set (use --attention / --seeds / --run-dirs "
              "before the --)", file=sys.stderr)
        return 2
    if "--recipe" not in flags and "--config" not in flags:  # the defaults alone train nothing in particular
        print("asasnn sweep: name what to train after the --: a --recipe or --config (then any flags)", file=sys.stderr)
        return 2
    try:
        cells = plan(args.attention, args.seeds, args.run_dirs)
        wants = [expected_config(c, shared) for c in cells]
    except (KeyError, ValueError, FileNotFoundError) as err:
        print(f"asasnn sweep: {err}", file=sys.stderr)
        return 2
    except SystemExit:  # argparse already said which train option it did not take
        return 2
    done = []
    for cell, want in zip(cells, wants, strict=True):
        have = run_config(cell.run_dir) if (cell.run_dir / "config.yaml").is_file() else None
        if have is not None and (diff := mismatch(have, want)):
            print(f"asasnn sweep: {cell.run_dir} holds a run with other options ({'; '.join(diff)}); "
                  "pick other --run-dirs", file=sys.stderr)
            return 2
        # evaluated after its last epoch; a longer --epochs than it ran makes it train on
        done.append(cell.report.is_file() and have is not None and have.get("epochs", 0) >= want["epochs"])
    quiet = ["--no-progress"]  # the output goes to a log file
    for i, (cell, finished) in enumerate(zip(cells, done, strict=True), 1):
        name = f"[{i}/{len(cells)}] {cell.attention} seed {cell.seed} ({cell.run_dir})"
        if finished:
            print(f"{name}: evaluated before, kept", flush=True)
            continue
        log = cell.run_dir / LOG
        resume = (cell.run_dir / "last.pt").is_file()
        print(f"{name}: {'resuming' if resume else 'training'}, log {log}", flush=True)
        # on resume the same flags again: the recipe is applied over the checkpoint's options, then the cell's
        train = [*(["--resume", str(cell.run_dir)] if resume else []), *cell.train_args(shared)]
        if rc := _asasnn(["train", *train, *quiet], log):
            print(f"asasnn sweep: training {cell.run_dir} failed (exit {rc}); see {log}", file=sys.stderr)
            return rc
        evaluate = ["eval", str(cell.run_dir / "best.pt"), "--json", str(cell.report),
                    "--threads", str(args.eval_threads), *quiet]
        if rc := _asasnn(evaluate, log):
            print(f"asasnn sweep: evaluating {cell.run_dir} failed (exit {rc}); see {log}", file=sys.stderr)
            return rc
    groups: dict[str, list[dict[str, Any]]] = {}
    for cell in cells:
        groups.setdefault(LABELS.get(cell.attention, cell.attention), []).append(json.loads(cell.report.read_text()))
    print(markdown(groups), end="")
    return 0
