"""``asasnn results``: mean and spread over seeds of ``asasnn eval --json`` reports (training/seeds.py)."""

from __future__ import annotations

import argparse

from training.seeds import load_groups, markdown


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "groups",
        nargs="+",
        metavar="LABEL=REPORT.json[,REPORT.json...]",
        help="one group per model: its evaluation reports, one per seed",
    )
    p.add_argument("--base", help="the group the NASFR change is relative to (default: the first)")


def run(args: argparse.Namespace) -> int:
    print(markdown(load_groups(args.groups), args.base), end="")
    return 0
