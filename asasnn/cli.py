"""The `asasnn` command line: one entry point, sub-commands owned by the packages that implement them.

Each sub-command lives next to the code it drives (``training.cli``, ``service.cli``, ...) and exposes
``add_arguments(parser)`` and ``run(args) -> int``. They are imported only when chosen, so
``asasnn --help`` stays fast and ``asasnn serve`` never imports the training code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from asasnn import __version__

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("training.cli.train", "train a vanilla / ASA / causal-ASA spiking network"),
    "eval": ("training.cli.evaluate", "accuracy, firing rates, SOPs and energy of a checkpoint or bundle"),
    "export": ("training.cli.export", "write a verified model bundle (safetensors + ONNX step graph)"),
    "analyze": ("training.cli.analyze", "redundancy report: spike features, firing rates, MPD, energy"),
    "results": ("training.cli.results", "mean and spread over seeds of evaluation reports (markdown tables)"),
    "sweep": ("training.cli.sweep", "train and evaluate each attention x seed (resumable), then the results tables"),
    "serve": ("service.cli", "run the inference server (bundled model by default)"),
    "stream": ("service.client.cli", "stream events from a file, camera or the synthetic source"),
    "bench": ("asasnn.bench", "benchmarks: runtime, encoder"),
    "synth": ("models.synthetic.cli", "write synthetic gesture recordings (AEDAT4 / npz)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asasnn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("version", help="print the version")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] in {"-h", "--help"}:
        parser.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    if name == "version":
        print(f"asasnn {__version__}")
        return 0
    if name not in COMMANDS:
        parser.print_usage(sys.stderr)
        print(f"asasnn: unknown command {name!r}", file=sys.stderr)
        return 2
    module_name, help_text = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:  # a sub-command whose package is not installed
        print(f"asasnn {name}: unavailable ({exc})", file=sys.stderr)
        return 2
    sub = argparse.ArgumentParser(prog=f"asasnn {name}", description=help_text)
    module.add_arguments(sub)
    return int(module.run(sub.parse_args(rest)) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
