"""Mean and spread over seeds: the evaluation reports of one recipe run with several seeds, side by side.

Single training runs of these networks scatter more than some of the differences between them (the
same recipe on two CPUs gave NASFR 0.075 and 0.101), so docs/results.md reports every row as the
mean over seeds with its spread, and calls a difference a difference only when it exceeds the spread.
Input: the JSON reports of ``asasnn eval --json`` (:func:`training.evaluate.summarize`), grouped by a
label; ``asasnn results`` prints the markdown tables.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation and range of one figure over seeds."""

    mean: float
    std: float
    lo: float
    hi: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        v = [float(x) for x in values]
        return cls(statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, min(v), max(v), len(v))

    def fmt(self, scale: float = 1.0, digits: int = 2) -> str:
        m, s, lo, hi = (scale * x for x in (self.mean, self.std, self.lo, self.hi))
        return f"{m:.{digits}f} ± {s:.{digits}f} ({lo:.{digits}f} - {hi:.{digits}f})"


def figures(report: dict[str, Any]) -> dict[str, float]:
    """The figures of one evaluation report that the tables show."""
    out = {
        "vote": report["accuracy"]["vote"],
        "clip": report["accuracy"]["clip"],
        "nasfr": report["nasfr"],
        "spikes": report["spikes_per_sample"],
        "sops": report["sops_per_sample"],
    }
    out.update({f"rate:{layer['name']}": layer["firing_rate"] for layer in report["layers"]})
    return out


def aggregate(groups: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Spread]]:
    """Per group, each figure's :class:`Spread` over the group's reports (one per seed)."""
    out: dict[str, dict[str, Spread]] = {}
    for label, reports in groups.items():
        rows = [figures(r) for r in reports]
        out[label] = {k: Spread.of([r[k] for r in rows]) for k in rows[0]}
    return out


def relative(groups: dict[str, list[dict[str, Any]]], key: str, base: str) -> dict[str, Spread]:
    """Each group's ``key`` relative to the base group's mean (``-0.35`` = 35 % lower), over its seeds."""
    ref = statistics.fmean(figures(r)[key] for r in groups[base])
    return {g: Spread.of([figures(r)[key] / ref - 1 for r in reps]) for g, reps in groups.items()}


def markdown(groups: dict[str, list[dict[str, Any]]], base: str | None = None) -> str:
    """The results table (accuracy, NASFR, spikes, SOPs; NASFR against ``base``) and the firing
    rates per layer, every cell ``mean ± std (min - max)`` over seeds, then the machines that trained them."""
    agg = aggregate(groups)
    base = base or next(iter(groups))
    rel = relative(groups, "nasfr", base)
    lines = [
        f"| model | seeds | acc. vote % | acc. clip % | NASFR | NASFR vs {base} % | spikes / sample | SOPs / sample (M) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for g, a in agg.items():
        lines.append(
            f"| {g} | {a['vote'].n} | {a['vote'].fmt(100)} | {a['clip'].fmt(100)} | {a['nasfr'].fmt(1, 4)} | "
            f"{'-' if g == base else rel[g].fmt(100, 1)} | {a['spikes'].fmt(1, 0)} | {a['sops'].fmt(1e-6, 3)} |"
        )
    layers = [k.split(":", 1)[1] for k in next(iter(agg.values())) if k.startswith("rate:")]
    lines += ["", "| model | " + " | ".join(layers) + " |", "|---|" + "---:|" * len(layers)]
    for g, a in agg.items():
        lines.append(f"| {g} | " + " | ".join(a[f"rate:{name}"].fmt(1, 3) for name in layers) + " |")
    lines += ["", machines(groups)]
    return "\n".join(lines) + "\n"


def machines(groups: dict[str, list[dict[str, Any]]]) -> str:
    """Which machines trained the runs (a report's ``trained_on``): the CPU changes a run's float
    trajectory, so a table says where its runs came from."""
    reports = [r for reps in groups.values() for r in reps]
    seen = Counter(" then ".join(r.get("trained_on") or ["not recorded"]) for r in reports)
    return "Trained on: " + "; ".join(f"{m} ({k} of {len(reports)} runs)" for m, k in seen.most_common()) + "."


def load_groups(specs: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """``LABEL=REPORT.json,REPORT.json,...`` per group, in order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for spec in specs:
        label, sep, paths = spec.partition("=")
        if not sep or not paths:
            raise ValueError(f"a group is LABEL=REPORT.json[,REPORT.json...], got {spec!r}")
        groups[label] = [json.loads(Path(p).read_text()) for p in paths.split(",")]
    return groups


__all__ = ["Spread", "aggregate", "figures", "load_groups", "machines", "markdown", "relative"]
