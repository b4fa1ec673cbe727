"""``asasnn synth``: write synthetic gesture recordings to a directory, or print the dataset statistics.

Files are named ``{split}_{index:05d}_{class}_s{subject:03d}.{npz|aedat4}`` and listed in
``labels.csv`` (``file,label,class,subject,clip,seed``), so any tool that reads event files (the
``POST`` classification route, ``asasnn stream``, dv-processing) can be tried on them and checked
against the truth. Recordings are ordered subject by subject, one of every class in turn, so the
first ``len(CLASSES)`` files hold one clip of each class.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from models.events.readers import write_aedat4, write_numpy
from models.events.types import SensorSize
from models.synthetic.dataset import (
    CLASSES,
    SampleSpec,
    SyntheticConfig,
    format_statistics,
    generate,
    sample_list,
    statistics,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, help="directory to write into (created if missing)")
    parser.add_argument(
        "--count", type=int, default=len(CLASSES), help="recordings to write; 0 = the whole split"
    )
    parser.add_argument("--split", choices=("train", "test"), default="train")
    parser.add_argument("--format", choices=("npz", "aedat4"), default="npz")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed")
    parser.add_argument("--duration-ms", type=int, default=1500, help="length of each recording")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--subjects-train", type=int, default=20)
    parser.add_argument("--subjects-test", type=int, default=6)
    parser.add_argument("--clips", type=int, default=3, help="clips per class per subject")
    parser.add_argument("--noise-scale", type=float, default=1.0, help="sensor noise multiplier; 0 = none")
    parser.add_argument(
        "--clutter-scale", type=float, default=1.0, help="background clutter multiplier; 0 = none"
    )
    parser.add_argument(
        "--stats", type=int, metavar="N", help="print the statistics table over N clips per class and exit"
    )


def config_from_args(args: argparse.Namespace) -> SyntheticConfig:
    return SyntheticConfig(
        sensor=SensorSize(args.width, args.height),
        duration_us=args.duration_ms * 1000,
        num_subjects_train=args.subjects_train,
        num_subjects_test=args.subjects_test,
        clips_per_class_per_subject=args.clips,
        seed=args.seed,
        noise_scale=args.noise_scale,
        clutter_scale=args.clutter_scale,
    )


def ordered_specs(cfg: SyntheticConfig, split: str) -> list[SampleSpec]:
    """The split's samples by subject, then clip, then class (every class before the next clip)."""
    return sorted(
        sample_list(cfg, "train" if split == "train" else "test"), key=lambda s: (s.subject, s.clip, s.label)
    )


def write_recordings(cfg: SyntheticConfig, out: Path, split: str, count: int, fmt: str) -> list[Path]:
    """Write ``count`` recordings (all if 0) and ``labels.csv`` into ``out``; return the written files."""
    specs = ordered_specs(cfg, split)
    if count > 0:
        specs = specs[:count]
    out.mkdir(parents=True, exist_ok=True)
    files = []
    with open(out / "labels.csv", "w", newline="") as fh:
        table = csv.writer(fh)
        table.writerow(["file", "label", "class", "subject", "clip", "seed"])
        for i, spec in enumerate(specs):
            name = f"{split}_{i:05d}_{spec.class_name}_s{spec.subject:03d}.{fmt}"
            events = generate(spec, cfg)
            if fmt == "aedat4":
                write_aedat4(out / name, events, cfg.sensor)
            else:
                write_numpy(out / name, events, cfg.sensor)
            table.writerow([name, spec.label, spec.class_name, spec.subject, spec.clip, spec.seed])
            files.append(out / name)
    return files


def run(args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        print(f"asasnn synth: {e}", file=sys.stderr)
        return 2
    if args.stats is not None:
        print(format_statistics(statistics(cfg, args.stats, args.split)))
        return 0
    if args.out is None:
        print("asasnn synth: --out DIR is required (or --stats N)", file=sys.stderr)
        return 2
    files = write_recordings(cfg, args.out, args.split, args.count, args.format)
    print(f"wrote {len(files)} {args.split} recordings and labels.csv to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="asasnn synth", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
