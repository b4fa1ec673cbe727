"""Writes the redundancy report: ``report.html`` (self-contained: the PNGs are embedded), the PNGs in
``figures/``, every number in ``analysis.json`` and the N-SFR maps and MPD histograms in ``arrays.npz``."""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from training.analysis import figures as FG
from training.analysis import metrics as M
from training.analysis.run import AnalysisOptions, ModelResult


def _num(x: Any) -> Any:
    """JSON-safe numbers (nan -> None), arrays as lists."""
    if isinstance(x, np.ndarray):
        return [_num(v) for v in x.tolist()] if x.dtype != object else x.tolist()
    if isinstance(x, dict):
        return {k: _num(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_num(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def model_json(r: ModelResult) -> dict[str, Any]:
    layers = []
    for layer in r.layers:
        d: dict[str, Any] = {
            "name": layer.name, "neurons": layer.neurons, "firing_rate": layer.firing_rate,
            "spikes_per_sample": layer.spikes_per_sample, "sops_per_sample": layer.sops_per_sample,
            "t_sfr": layer.tsfr, "t_sfr_cv": M.flatness(layer.tsfr), "qe": layer.qe,
            "mpd_out_of_range": layer.out_of_range,
        }
        if layer.conv:
            counts = {p: int((layer.pattern == p).sum()) for p in (M.NOISE, M.NORMAL, M.NULL)}
            d.update(
                c_sfr=layer.csfr, c_sfr_per_t=layer.csfr_t, background_share=layer.bg_share,
                uniform_background_share=layer.uniform_bg_share, background_density_ratio=layer.density_ratio,
                spatial_entropy=layer.entropy,
                pattern=layer.pattern.tolist(), patterns=counts, ptd=layer.ptd, variance=layer.variance,
                qe_per_channel=layer.qe_channel,
                ghosts={k: v for k, v in layer.ghost.items() if k != "duplicate"}
                | {"duplicate_channels": np.flatnonzero(layer.ghost["duplicate"]).tolist()},
            )
        else:
            d.update(ptd=float(layer.ptd[0]), variance=float(layer.variance[0]))
        layers.append(d)
    s = r.summary
    return _num({
        "name": r.name, "path": r.path, "network": r.network, "attention": r.attention, "data": r.data,
        "timesteps": r.timesteps, "v_th": r.v_th, "accuracy": s["accuracy"], "recordings": s["recordings"],
        "clips": s["clips"], "nasfr": r.nasfr, "nasfr_from_counts": s["nasfr"], "spikes_per_sample": s["spikes_per_sample"],
        "sops_per_sample": s["sops_per_sample"], "energy_j_per_sample": s["energy_j_per_sample"],
        "energy_model": s["energy_model"], "t_sfr": r.tsfr, "t_sfr_cv": M.flatness(r.tsfr),
        "qe": float(np.average([la.qe for la in r.layers], weights=[la.neurons for la in r.layers])),
        "layers": layers,
        "attention_masks": [
            {"layer": a.layer, "kind": a.kind, "important_share": a.freq, "channel_important_share": a.freq.mean(0),
             "stability_per_channel": a.stability, "stability": float(a.stability.mean()), "agreement": a.agreement}
            for a in r.attn
        ],
        "seconds": r.seconds,
    })


def comparison(results: list[ModelResult]) -> list[dict[str, Any]]:
    """Each model against the first: relative change of NASFR, spikes, SOPs, energy; accuracy in points."""
    b = results[0]
    out = []
    for r in results[1:]:
        out.append(_num({
            "model": r.name, "baseline": b.name,
            "accuracy_points": 100 * (r.summary["accuracy"]["vote"] - b.summary["accuracy"]["vote"]),
            "nasfr_pct": M.pct_change(b.nasfr, r.nasfr),
            "spikes_pct": M.pct_change(b.summary["spikes_per_sample"], r.summary["spikes_per_sample"]),
            "sops_pct": M.pct_change(b.summary["sops_per_sample"], r.summary["sops_per_sample"]),
            "energy_pct": M.pct_change(b.summary["energy_j_per_sample"], r.summary["energy_j_per_sample"]),
            "spikes_pct_per_layer": {
                lb.name: M.pct_change(lb.spikes_per_sample, lr.spikes_per_sample) for lb, lr in zip(b.layers, r.layers)
            },
        }))
    return out


def findings(results: list[ModelResult]) -> list[str]:
    """Plain-language lines computed from the numbers (the report's summary)."""
    lines = []
    for r in results:
        conv = [la for la in r.layers if la.conv]
        noise = sum(int((la.pattern == M.NOISE).sum()) for la in conv)
        null = sum(int((la.pattern == M.NULL).sum()) for la in conv)
        chans = sum(len(la.pattern) for la in conv)
        ghosts = sum(la.ghost["channels"] for la in conv)
        ptd_neg = np.mean(np.concatenate([la.ptd for la in conv]) < 0)
        lines.append(
            f"{r.name}: vote accuracy {100 * r.summary['accuracy']['vote']:.1f} %, NASFR {r.nasfr:.4f}, "
            f"T-SFR variation over time (CV) {M.flatness(r.tsfr):.2f}; conv channels: {noise}/{chans} noise, "
            f"{null}/{chans} null, {ghosts}/{chans} with a near duplicate; {100 * ptd_neg:.0f} % of conv channels "
            f"have PTD < 0; QE per layer " + ", ".join(f"{la.name} {la.qe:.3f}" for la in r.layers) + "."
        )
    for c in comparison(results):
        lines.append(
            f"{c['model']} vs {c['baseline']}: NASFR {c['nasfr_pct']:+.1f} %, spikes {c['spikes_pct']:+.1f} %, "
            f"SOPs {c['sops_pct']:+.1f} %, energy proxy {c['energy_pct']:+.1f} %, accuracy {c['accuracy_points']:+.1f} points."
        )
    return lines


def _table(head: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "n/a" if not math.isfinite(v) else f"{v:.4g}"
        return html.escape(str(v))

    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


class _Writer:
    """Saves a figure as PNG and returns its HTML (embedded); with ``figures=False`` draws nothing."""

    def __init__(self, out: Path, figures: bool = True) -> None:
        self.out, self.figures = out, figures
        (out / "figures").mkdir(parents=True, exist_ok=True)

    def fig(self, make, name: str, caption: str = "") -> str:
        if not self.figures:
            return ""
        fig = make()
        path = self.out / "figures" / f"{name}.png"
        fig.savefig(path, dpi=110)
        data = base64.b64encode(path.read_bytes()).decode()
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        return f'<figure><img alt="{name}" src="data:image/png;base64,{data}">{cap}</figure>'


CSS = """body{font-family:sans-serif;max-width:1500px;margin:1em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px;text-align:right}
th{background:#f0f0f0}figure{margin:.5em 0}img{max-width:100%}figcaption{font-size:12px;color:#555}
.row{display:flex;gap:1em;flex-wrap:wrap;align-items:flex-start}.row figure{flex:1 1 0;min-width:300px}
p.note{font-size:13px;color:#444}"""


def write_report(
    results: list[ModelResult], opts: AnalysisOptions, out: Path | str, command: str = "", figures: bool = True
) -> Path:
    """Write every output into ``out``; returns the HTML path. ``figures=False``: tables and numbers only."""
    out = Path(out)
    w = _Writer(out, figures)
    edges = M.mpd_edges(*opts.mpd_range, opts.mpd_bins)
    t_star = opts.timestep if opts.timestep is not None else results[0].timesteps // 2
    conv = [i for i, la in enumerate(results[0].layers) if la.conv]
    h: list[str] = [f"<h1>Redundancy analysis: {' vs '.join(html.escape(r.name) for r in results)}</h1>"]
    h.append(f"<p class=note>Data: {html.escape(results[0].data)}. Command: <code>{html.escape(command)}</code></p>")
    h.append("<h2>Summary</h2><ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in findings(results)) + "</ul>")
    rows = [[r.name, r.attention, 100 * r.summary["accuracy"]["clip"], 100 * r.summary["accuracy"]["vote"], r.nasfr,
             r.summary["spikes_per_sample"], r.summary["sops_per_sample"], 1e6 * r.summary["energy_j_per_sample"]]
            for r in results]
    h.append(_table(["model", "attention", "clip acc %", "vote acc %", "NASFR", "spikes/sample", "SOPs/sample",
                     "energy/sample (uJ)"], rows))
    if len(results) > 1:
        h.append(_table(["model", "vs", "acc (points)", "NASFR %", "spikes %", "SOPs %", "energy %"],
                        [[c["model"], c["baseline"], c["accuracy_points"], c["nasfr_pct"], c["spikes_pct"], c["sops_pct"],
                          c["energy_pct"]] for c in comparison(results)]))
    h.append("<h2>Firing rates (definition 1)</h2>")
    h.append(w.fig(partial(FG.fig_tsfr, results), "tsfr", "T-SFR per timestep; observation 2 expects flat curves (CV in the summary)."))
    h.append(w.fig(partial(FG.fig_rates, results), "rates", "Firing rate per layer and NASFR; spikes per sample with the change against the first model."))
    h.append(w.fig(partial(FG.fig_csfr, results), "csfr", "C-SFR per channel, sorted; colour = pattern (heuristic, see below)."))
    h.append(w.fig(partial(FG.fig_nsfr_maps, results), "nsfr_maps", "N-SFR averaged over channels and time; first column: how often each input pixel lies in the event region."))
    h.append("<h2>Spike features (definition 2, Figures 2 and 5)</h2>")
    for i in conv:
        name = results[0].layers[i].name
        h.append(f"<h3>{name}</h3><div class=row>" + w.fig(partial(FG.fig_spike_features, results, i, t_star), f"features_{name}")
                 + w.fig(partial(FG.fig_channel_time, results, i), f"channel_time_{name}") + "</div>")
    h.append("<h2>Ghost features and spike patterns (observations 1 and 3)</h2>")
    h.append(f"<p class=note>Near duplicate: cosine similarity of two active channels' spike features (all timesteps) "
             f">= {opts.ghost_threshold:g}. Pattern heuristic: the event region of a clip is the smallest set of input pixels "
             f"holding {opts.region_mass:g} of its events (on a coarser layer grid: the cells holding any region pixel); "
             f"a channel is <b>noise</b> when its spikes are at least {opts.noise_ratio:g} times as dense off the region as "
             f"on it (it prefers the background), <b>null</b> when its C-SFR is below {opts.min_rate:g}, else <b>normal</b>. "
             f"This is a heuristic stand-in for the paper's visual judgement.</p>")
    crow = []
    for r in results:
        for i in conv:
            la = r.layers[i]
            listed = [", ".join(f"c{c}" for c in np.flatnonzero(la.pattern == p)) or "-" for p in (M.NOISE, M.NULL)]
            dup = ", ".join(f"c{c}" for c in np.flatnonzero(la.ghost["duplicate"])) or "-"
            crow.append([r.name, la.name, *listed, dup, la.ghost["mean_similarity"]])
    h.append(_table(["model", "layer", "noise channels", "null channels", "channels with a near duplicate",
                     "mean similarity (active)"], crow))
    for i in conv:
        h.append(w.fig(partial(FG.fig_similarity, results, i), f"similarity_{results[0].layers[i].name}"))
    h.append(w.fig(partial(FG.fig_noise_scatter, results, opts.noise_ratio, opts.min_rate), "noise_scatter",
                   "C-SFR against the share of spikes outside the event region, per channel."))
    h.append("<h2>Membrane potential (definitions 5 and 6, Figure 6, Table 4)</h2>")
    for i in conv:
        name = results[0].layers[i].name
        h.append(w.fig(partial(FG.fig_mpd, results, i, edges), f"mpd_{name}", "Channels ordered by C-SFR (top: most active), "
                       "bar height ~ sqrt(count), each histogram scaled to its tallest bin; red: Vth; black tick: peak interval centre (Vth + PTD)."))
    h.append(w.fig(partial(FG.fig_ptd_variance, results), "ptd_variance", "PTD against variance per conv channel, coloured by C-SFR."))
    h.append(w.fig(partial(FG.fig_qe, results), "qe"))
    qrows = [[r.name] + [la.qe for la in r.layers] + [max(la.out_of_range for la in r.layers)] for r in results]
    h.append(_table(["model"] + [la.name for la in results[0].layers] + ["share of U outside MPD range"], qrows))
    h.append("<h2>Energy</h2>")
    h.append(w.fig(partial(FG.fig_energy, results), "energy"))
    erows = [[r.name] + [la.sops_per_sample for la in r.layers] + [r.summary["sops_per_sample"]] for r in results]
    h.append(_table(["SOPs/sample"] + [la.name for la in results[0].layers] + ["total"], erows))
    for k, r in enumerate(results):
        if not r.attn:
            continue
        h.append(f"<h2>Attention: {html.escape(r.name)}</h2>")
        h.append(w.fig(partial(FG.fig_masks, r), f"masks_{k}", "Stability: share of steps t -> t+1 a channel keeps its group, mean over clips and channels (1 = "
                       "fixed split); agreement: how much clips agree on the split (1 = identical)."))
        h.append(w.fig(partial(FG.fig_spatial_maps, r, t_star), f"spatial_maps_{k}"))
    (out / "report.html").write_text(f"<!doctype html><html><head><meta charset=utf-8><title>ASA redundancy report</title>"
                                     f"<style>{CSS}</style></head><body>{''.join(h)}</body></html>\n")
    data = {"command": command, "options": _num(asdict(opts)), "findings": findings(results),
            "models": [model_json(r) for r in results], "comparison": comparison(results)}
    (out / "analysis.json").write_text(json.dumps(data, indent=1) + "\n")
    arrays = {}
    for k, r in enumerate(results):
        for la in r.layers:
            arrays[f"m{k}_{la.name}_nsfr"] = la.nsfr.astype(np.float32)
            arrays[f"m{k}_{la.name}_mpd"] = la.hist
    np.savez_compressed(out / "arrays.npz", mpd_edges=edges, **arrays)
    return out / "report.html"


__all__ = ["comparison", "findings", "model_json", "write_report"]
