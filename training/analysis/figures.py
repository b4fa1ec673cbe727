"""Figures of the redundancy report, one function per figure, each returning a matplotlib ``Figure``.

Conventions: N-SFR and attention maps on a fixed 0-1 colour scale (blue = never fires, red = fires
in every sample, as in the paper's Figures 2 and 5); one colour per model throughout; every axis
names its quantity and unit. Uses ``matplotlib.figure.Figure`` directly (no pyplot, no global state).
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator, NullLocator

from training.analysis import metrics as M
from training.analysis.run import ModelResult

NSFR_CMAP = "RdYlBu_r"  # 0 blue, 1 red
PATTERN_COLOURS = {M.NOISE: "#d62728", M.NORMAL: "#1f77b4", M.NULL: "#9e9e9e"}
MODEL_COLOURS = ["#444444", "#d95f02", "#1b9e77", "#7570b3", "#e7298a", "#66a61e"]
MARKERS = ["o", "s", "^", "D", "v", "P"]


def colour(k: int) -> str:
    return MODEL_COLOURS[k % len(MODEL_COLOURS)]


def _conv(r: ModelResult) -> list[int]:
    return [i for i, layer in enumerate(r.layers) if layer.conv]


def fig_tsfr(results: list[ModelResult]) -> Figure:
    """T-SFR against the timestep, network and per layer (observation 2: flat over time?)."""
    names = [layer.name for layer in results[0].layers]
    n = len(names) + 1
    cols = min(3, n)
    rows = -(-n // cols)
    fig = Figure(figsize=(3.6 * cols, 2.7 * rows), layout="constrained")
    grid = fig.subplots(rows, cols, squeeze=False)
    for ax in grid.flat[n:]:
        ax.axis("off")
    axes = grid.flat[:n]
    for k, r in enumerate(results):
        t = np.arange(1, len(r.tsfr) + 1)
        curves = [r.tsfr] + [layer.tsfr for layer in r.layers]
        for ax, y in zip(axes, curves):
            ax.plot(t, y, marker=MARKERS[k % 6], ms=3, color=colour(k), label=r.name)
    for ax, title in zip(axes, ["network", *names]):
        ax.set_title(f"T-SFR, {title}")
        ax.set_xlabel("timestep t")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(bottom=0)
    for ax in grid[:, 0]:
        ax.set_ylabel("spikes / neuron / timestep")
    axes[0].legend(fontsize=8)
    return fig


def fig_rates(results: list[ModelResult]) -> Figure:
    """Firing rate and spikes per sample per layer, with the change against the first model."""
    names = [layer.name for layer in results[0].layers] + ["network"]
    x = np.arange(len(names))
    w = 0.8 / len(results)
    fig = Figure(figsize=(max(8, 1.6 * len(names) * 2), 3.4), layout="constrained")
    a, b = fig.subplots(1, 2)
    base = [layer.spikes_per_sample for layer in results[0].layers] + [results[0].summary["spikes_per_sample"]]
    for k, r in enumerate(results):
        fr = [layer.firing_rate for layer in r.layers] + [r.nasfr]
        sp = [layer.spikes_per_sample for layer in r.layers] + [r.summary["spikes_per_sample"]]
        off = (k - (len(results) - 1) / 2) * w
        a.bar(x + off, fr, w, color=colour(k), label=r.name)
        bars = b.bar(x + off, sp, w, color=colour(k), label=r.name)
        if k:
            for bar, s0, s1 in zip(bars, base, sp):
                b.annotate(f"{M.pct_change(s0, s1):+.0f}%", (bar.get_x() + w / 2, bar.get_height()),
                           ha="center", va="bottom", fontsize=7, rotation=90)
    a.set_title("firing rate per layer (network: NASFR)")
    a.set_ylabel("spikes / neuron / timestep")
    b.set_title(f"spikes per sample (% change vs {results[0].name})")
    b.set_ylabel("spikes / sample (whole window)")
    b.set_yscale("log")
    for ax in (a, b):
        ax.set_xticks(x, names)
        ax.legend(fontsize=8)
    return fig


def fig_csfr(results: list[ModelResult]) -> Figure:
    """C-SFR per channel, sorted, coloured by pattern (noise / normal / null)."""
    conv = _conv(results[0])
    fig = Figure(figsize=(3.6 * len(results), 2.4 * len(conv)), layout="constrained")
    axes = fig.subplots(len(conv), len(results), squeeze=False)
    for row, i in enumerate(conv):
        top = max(float(r.layers[i].csfr.max()) for r in results) * 1.05 or 1.0
        for col, r in enumerate(results):
            layer, ax = r.layers[i], axes[row, col]
            order = np.argsort(-layer.csfr, kind="stable")
            ax.bar(np.arange(len(order)), layer.csfr[order], 0.9, color=[PATTERN_COLOURS[p] for p in layer.pattern[order]])
            counts = {p: int((layer.pattern == p).sum()) for p in (M.NOISE, M.NORMAL, M.NULL)}
            ax.set_title(f"{r.name}, {layer.name}: {counts[M.NOISE]} noise / {counts[M.NORMAL]} normal / {counts[M.NULL]} null",
                         fontsize=8)
            ax.set_ylim(0, top)
            ax.set_xlabel("channel rank (by C-SFR)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if col == 0:
                ax.set_ylabel("C-SFR (mean over t)")
    fig.legend(handles=[Patch(color=c, label=p) for p, c in PATTERN_COLOURS.items()], loc="outside upper right", ncols=3)
    return fig


def fig_nsfr_maps(results: list[ModelResult]) -> Figure:
    """N-SFR averaged over channels and timesteps, per layer; first column: how often each input pixel
    is in the event region."""
    conv = _conv(results[0])
    fig = Figure(figsize=(2.6 * (len(conv) + 1) + 1, 2.4 * len(results)), layout="constrained")
    axes = fig.subplots(len(results), len(conv) + 1, squeeze=False)
    tops = [max(float(r.layers[i].nsfr.mean(axis=(0, 1)).max()) for r in results) or 1.0 for i in conv]
    for row, r in enumerate(results):
        im = axes[row, 0].imshow(r.region_freq, cmap="magma", vmin=0, vmax=1)
        axes[row, 0].set_title(f"{r.name}\nevent region (share of clips)", fontsize=8)
        fig.colorbar(im, ax=axes[row, 0], shrink=0.8)
        for col, i in enumerate(conv, start=1):
            im = axes[row, col].imshow(r.layers[i].nsfr.mean(axis=(0, 1)), cmap=NSFR_CMAP, vmin=0, vmax=tops[col - 1])
            axes[row, col].set_title(f"{r.layers[i].name}: mean N-SFR", fontsize=8)
            fig.colorbar(im, ax=axes[row, col], shrink=0.8, label="N-SFR")
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    return fig


def mosaic(tiles: np.ndarray, cols: int, gap: int = 1) -> np.ndarray:
    """Tiles ``[N, H, W]`` laid out ``cols`` to a row, separated by ``gap`` NaN pixels (drawn blank)."""
    n, h, w = tiles.shape
    rows = -(-n // cols)
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap), np.nan)
    for k in range(n):
        r, c = divmod(k, cols)
        out[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = tiles[k]
    return out


def _cmap(name: str):
    import matplotlib

    return matplotlib.colormaps[name].with_extremes(bad="white")


def fig_spike_features(results: list[ModelResult], i: int, t: int, max_channels: int = 64) -> Figure:
    """Definition 2 / Figures 2a and 5a: every channel's spike feature at timestep ``t``, one panel per
    model, on the fixed 0-1 N-SFR scale. Labels: channel, pattern (N noise, n normal, 0 null), C-SFR."""
    c = min(results[0].layers[i].nsfr.shape[1], max_channels)
    cols = min(8, c)
    rows = -(-c // cols)
    h, w = results[0].layers[i].nsfr.shape[-2:]
    fig = Figure(figsize=(1.3 * cols + 1.2, (1.3 * rows + 0.45) * len(results)), layout="constrained")
    axes = fig.subplots(len(results), 1, squeeze=False)[:, 0]
    im = None
    for ax, r in zip(axes, results):
        layer = r.layers[i]
        im = ax.imshow(mosaic(layer.nsfr[t, :c], cols, gap=max(1, h // 8)), cmap=_cmap(NSFR_CMAP), vmin=0, vmax=1)
        g = max(1, h // 8)
        for ch in range(c):
            rr, cc = divmod(ch, cols)
            p = layer.pattern[ch]
            ax.text(cc * (w + g), rr * (h + g) - 0.6, f"c{ch} {TAG[p]} {layer.csfr_t[t, ch]:.2f}", fontsize=6.5,
                    color=PATTERN_COLOURS[p], va="bottom")
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_title(f"{r.name}, {layer.name}, t={t + 1}", fontsize=9, pad=10)
    fig.colorbar(im, ax=axes, shrink=0.6, label="N-SFR (share of clips spiking)")
    return fig


TAG = {M.NOISE: "N", M.NORMAL: "n", M.NULL: "0"}


def pick_channels(layer) -> list[tuple[str, int]]:
    """The channels followed over time: the most active one and the most object-focused active one."""
    out = [("most active", int(np.argmax(layer.csfr)))]
    active = np.flatnonzero(layer.pattern != M.NULL)
    if active.size:
        focused = int(active[np.argmin(np.nan_to_num(layer.bg_share[active], nan=1.0))])
        if focused != out[0][1]:
            out.append(("most on events", focused))
    return out


def fig_channel_time(results: list[ModelResult], i: int, max_steps: int = 16) -> Figure:
    """Figures 2b and 5b: one channel's spike feature across timesteps (fixed 0-1 scale); per model the
    most active channel and the active channel with the smallest share of spikes off the event region."""
    t_all = results[0].layers[i].nsfr.shape[0]
    steps = np.unique(np.linspace(0, t_all - 1, min(max_steps, t_all)).round().astype(int))
    h, w = results[0].layers[i].nsfr.shape[-2:]
    g = max(1, h // 8)
    fig = Figure(figsize=(0.9 * len(steps) + 2.4, 2.0 * len(results) + 0.4), layout="constrained")
    axes = fig.subplots(len(results), 1, squeeze=False)[:, 0]
    im = None
    for ax, r in zip(axes, results):
        layer = r.layers[i]
        chans = pick_channels(layer)
        tiles = np.stack([layer.nsfr[t, ch] for _, ch in chans for t in steps])
        im = ax.imshow(mosaic(tiles, len(steps), g), cmap=_cmap(NSFR_CMAP), vmin=0, vmax=1)
        ax.set_xticks([k * (w + g) + w / 2 - 0.5 for k in range(len(steps))], [str(t + 1) for t in steps], fontsize=7)
        ax.set_yticks([k * (h + g) + h / 2 - 0.5 for k in range(len(chans))],
                      [f"c{ch} {why}\n({layer.pattern[ch]}, C-SFR {layer.csfr[ch]:.2f})" for why, ch in chans], fontsize=7)
        ax.set_xlabel("timestep t", fontsize=8)
        ax.set_title(f"{r.name}, {layer.name}: one channel across timesteps", fontsize=9)
    fig.colorbar(im, ax=axes, shrink=0.7, label="N-SFR")
    return fig


def fig_similarity(results: list[ModelResult], i: int) -> Figure:
    """Observation 1: cosine similarity of the channels' spike features, channels sorted by C-SFR."""
    fig = Figure(figsize=(3.4 * len(results) + 0.8, 3.2), layout="constrained")
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    im = None
    for ax, r in zip(axes, results):
        layer = r.layers[i]
        order = np.argsort(-layer.csfr, kind="stable")
        im = ax.imshow(layer.sim[np.ix_(order, order)], cmap="viridis", vmin=0, vmax=1)
        g = layer.ghost
        ax.set_title(f"{r.name}, {layer.name}\n{g['channels']} ch. with a near duplicate, {g['pairs']} pairs", fontsize=8)
        ax.set_xlabel("channel rank (by C-SFR)")
    axes[0].set_ylabel("channel rank (by C-SFR)")
    fig.colorbar(im, ax=axes, shrink=0.8, label="cosine similarity of spike features")
    return fig


def fig_noise_scatter(results: list[ModelResult], noise_ratio: float, min_rate: float) -> Figure:
    """Observation 3: C-SFR against where a channel fires (noise-pattern heuristic): the background /
    event-region spike density ratio, on a log scale (1: no preference; inf drawn at the top)."""
    conv = _conv(results[0])
    fig = Figure(figsize=(3.6 * len(conv), 3.5), layout="constrained")
    axes = fig.subplots(1, len(conv), squeeze=False, sharey=True)[0]
    for ax, i in zip(axes, conv):
        for k, r in enumerate(results):
            layer = r.layers[i]
            ratio = np.clip(np.nan_to_num(layer.density_ratio, nan=np.nan, posinf=RATIO_MAX), 1 / RATIO_MAX, RATIO_MAX)
            ax.scatter(layer.csfr, ratio, s=18, color=colour(k), marker=MARKERS[k % 6], alpha=0.8, label=r.name)
        ax.axhline(noise_ratio, color="#d62728", ls="--", lw=1, label=f"noise if >= {noise_ratio:g}")
        ax.axvline(min_rate, color="#9e9e9e", ls=":", lw=1, label=f"null if C-SFR < {min_rate:g}")
        ax.set_xscale("symlog", linthresh=min_rate)
        ax.set_yscale("log")
        ax.set_yticks(RATIO_TICKS, [f"{t:g}" for t in RATIO_TICKS])
        ax.yaxis.set_minor_locator(NullLocator())
        ax.set_title(results[0].layers[i].name)
        ax.set_xlabel("C-SFR (spikes / neuron / timestep)")
    vals = np.concatenate([r.layers[i].density_ratio for r in results for i in conv])
    vals = np.clip(vals[~np.isnan(vals)], 1 / RATIO_MAX, RATIO_MAX)
    if vals.size:
        axes[0].set_ylim(min(vals.min(), noise_ratio) / 1.5, max(vals.max(), noise_ratio) * 1.5)
    axes[0].set_ylabel("spike density off / on the event region")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=8)
    return fig


RATIO_MAX = 100.0
RATIO_TICKS = [0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100]


def _mpd_xrange(results: list[ModelResult], i: int, edges: np.ndarray) -> tuple[float, float]:
    h = sum(r.layers[i].hist.sum(axis=0) for r in results).astype(float)
    if h.sum() == 0:
        return float(edges[0]), float(edges[-1])
    cdf = np.cumsum(h) / h.sum()
    lo, hi = np.searchsorted(cdf, 0.002), np.searchsorted(cdf, 0.998)
    v_th = results[0].v_th
    return float(min(edges[lo], -0.2)), float(max(edges[min(hi + 1, len(edges) - 1)], v_th + 0.2))


def fig_mpd(results: list[ModelResult], i: int, edges: np.ndarray, max_channels: int = 16) -> Figure:
    """Definition 5: per-channel membrane-potential histograms stacked (ridgeline), one panel per model;
    channels ordered by C-SFR (top = most active), bar height proportional to the square root of the
    count (so the tails show), each scaled to its own tallest bin. Red line: Vth;
    black tick: centre of the peak interval (Vth + PTD)."""
    centres = 0.5 * (edges[:-1] + edges[1:])
    lo, hi = _mpd_xrange(results, i, edges)
    n = min(max_channels, results[0].layers[i].hist.shape[0])
    fig = Figure(figsize=(4.2 * len(results), 0.42 * n + 1.3), layout="constrained")
    axes = fig.subplots(1, len(results), squeeze=False, sharex=True)[0]
    for k, (ax, r) in enumerate(zip(axes, results)):
        layer = r.layers[i]
        order = np.argsort(-layer.csfr, kind="stable")
        picks = order[np.unique(np.linspace(0, len(order) - 1, n).round().astype(int))]
        labels = []
        for row, ch in enumerate(picks):
            y0 = len(picks) - 1 - row
            h = np.sqrt(layer.hist[ch].astype(float))
            h = h / h.max() * 0.9 if h.max() > 0 else h
            ax.fill_between(centres, y0, y0 + h, where=h > 0, step="mid", color=colour(k), alpha=0.75, lw=0)
            if np.isfinite(layer.ptd[ch]):
                ax.plot([r.v_th + layer.ptd[ch]] * 2, [y0, y0 + 0.9], color="k", lw=1.2)
            labels.append((y0, f"c{ch} fr {layer.csfr[ch]:.2f} PTD {layer.ptd[ch]:+.2f} var {layer.variance[ch]:.3f}"))
        ax.axvline(r.v_th, color="#d62728", lw=1.2)
        ax.set_yticks([y + 0.35 for y, _ in labels], [t for _, t in labels], fontsize=6.5)
        ax.set_xlim(lo, hi)
        ax.set_ylim(-0.1, len(picks))
        ax.set_xlabel("membrane potential U")
        ax.set_title(f"{r.name}, {layer.name}: MPD per channel", fontsize=9)
    fig.suptitle(f"bar height ~ sqrt(count), each channel scaled to its tallest bin; red: Vth = {results[0].v_th:g}; "
                 "black: peak interval centre (Vth + PTD); labels: channel, C-SFR, PTD, variance", fontsize=8)
    return fig


def fig_ptd_variance(results: list[ModelResult]) -> Figure:
    """Figure 6: PTD against variance of every conv channel, coloured by C-SFR."""
    fig = Figure(figsize=(3.8 * len(results) + 1, 3.4), layout="constrained")
    axes = fig.subplots(1, len(results), squeeze=False, sharex=True, sharey=True)[0]
    top = max(float(layer.csfr.max()) for r in results for layer in r.layers if layer.conv) or 1.0
    sc = None
    for ax, r in zip(axes, results):
        for j, i in enumerate(_conv(r)):
            layer = r.layers[i]
            sc = ax.scatter(layer.ptd, layer.variance, c=layer.csfr, cmap="plasma", vmin=0, vmax=top, s=22,
                            marker=MARKERS[j % 6], edgecolors="k", linewidths=0.3, label=layer.name)
        ax.axvline(0, color="#d62728", lw=1, ls="--")
        ax.set_title(r.name)
        ax.set_xlabel("PTD = peak interval centre - Vth")
        ax.set_yscale("log")
    axes[0].set_ylabel("variance of U")
    names = [results[0].layers[i].name for i in _conv(results[0])]
    axes[0].legend(handles=[Line2D([], [], ls="", marker=MARKERS[j % 6], color="#999999", markeredgecolor="k", label=n)
                            for j, n in enumerate(names)], fontsize=7)
    fig.colorbar(sc, ax=axes, label="C-SFR")
    return fig


def fig_qe(results: list[ModelResult]) -> Figure:
    """Table 4: quantisation error per layer."""
    names = [layer.name for layer in results[0].layers]
    x, w = np.arange(len(names)), 0.8 / len(results)
    fig = Figure(figsize=(max(5, 1.2 * len(names) + 2), 3.0), layout="constrained")
    ax = fig.subplots()
    for k, r in enumerate(results):
        ax.bar(x + (k - (len(results) - 1) / 2) * w, [layer.qe for layer in r.layers], w, color=colour(k), label=r.name)
    ax.set_xticks(x, names)
    ax.set_ylabel("QE = mean (U - S)^2")
    ax.set_title("quantisation error per layer")
    ax.legend(fontsize=8)
    return fig


def fig_energy(results: list[ModelResult]) -> Figure:
    """SOPs per layer and the energy proxy per sample, split into its terms."""
    names = [layer.name for layer in results[0].layers]
    x, w = np.arange(len(names)), 0.8 / len(results)
    fig = Figure(figsize=(11, 3.2), layout="constrained")
    a, b = fig.subplots(1, 2, width_ratios=[2, 1])
    for k, r in enumerate(results):
        a.bar(x + (k - (len(results) - 1) / 2) * w, [layer.sops_per_sample for layer in r.layers], w, color=colour(k), label=r.name)
        em = r.summary["energy_model"]
        mac = em["e_mac_j"] * em["first_layer_macs_per_step"] * r.timesteps * 1e6
        ac = em["e_ac_j"] * r.summary["sops_per_sample"] * 1e6
        b.bar(k, mac, 0.6, color="#bbbbbb", label="first layer MACs" if k == 0 else None)
        b.bar(k, ac, 0.6, bottom=mac, color=colour(k))
        b.annotate(f"{mac + ac:.3g}", (k, mac + ac), ha="center", va="bottom", fontsize=8)
    a.set_xticks(x, names)
    a.set_ylabel("SOPs / sample")
    a.set_title("synaptic operations triggered by each layer's spikes")
    a.legend(fontsize=8)
    b.set_xticks(range(len(results)), [r.name for r in results], fontsize=7, rotation=15)
    b.set_ylabel("energy proxy / sample (uJ)")
    b.set_title("energy proxy\nE = E_MAC MACs(layer 1) + E_AC SOPs", fontsize=9)
    b.legend(fontsize=7)
    return fig


def fig_masks(r: ModelResult) -> Figure:
    """Which channels ASA put in the important group M1 per timestep: top row the share of clips,
    bottom row the mask of one clip (black = important)."""
    n = len(r.attn)
    one = all(len(a.masks) for a in r.attn)
    fig = Figure(figsize=(3.4 * n + 0.8, 6.0 if one else 3.3), layout="constrained")
    axes = fig.subplots(2 if one else 1, n, squeeze=False)
    im = None
    for j, a in enumerate(r.attn):
        t, c = a.freq.shape
        ext = (0.5, t + 0.5, c - 0.5, -0.5)
        ax = axes[0, j]
        im = ax.imshow(a.freq.T, cmap="Greys", vmin=0, vmax=1, aspect="auto", interpolation="nearest", extent=ext)
        ax.set_title(f"{a.layer}: share of clips\nstability {a.stability.mean():.2f}, agreement {a.agreement:.2f}",
                     fontsize=8)
        if one:
            axes[1, j].imshow(a.masks[0].T, cmap="Greys", vmin=0, vmax=1, aspect="auto", interpolation="nearest",
                              extent=ext)
            axes[1, j].set_title(f"{a.layer}: M1 of clip 0 (black = important)", fontsize=8)
        for ax in axes[:, j]:
            ax.set_xlabel("timestep t")
            ax.set_ylabel("channel")
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"{r.name}: channels in the important group M1", fontsize=9)
    fig.colorbar(im, ax=axes, shrink=0.6, label="share of clips with (t, c) in M1")
    return fig


def fig_spatial_maps(r: ModelResult, t: int) -> Figure:
    """The two spatial attention maps f_S1, f_S2 of each ASA layer on the first samples."""
    k = min(len(r.inputs), *(len(a.maps) for a in r.attn))
    cols = 1 + 2 * len(r.attn)
    fig = Figure(figsize=(1.7 * cols + 0.8, 1.7 * k + 0.6), layout="constrained")
    axes = fig.subplots(k, cols, squeeze=False)
    im = None
    for s in range(k):
        axes[s, 0].imshow(r.inputs[s], cmap="gray_r")
        axes[s, 0].set_ylabel(f"clip {s}", fontsize=8)
        for j, a in enumerate(r.attn):
            tt = 0 if a.maps.shape[2] == 1 else min(t, a.maps.shape[2] - 1)
            for g in range(2):
                ax = axes[s, 1 + 2 * j + g]
                im = ax.imshow(a.maps[s, g, tt], cmap="viridis", vmin=0, vmax=1)
                if s == 0:
                    when = "window" if a.maps.shape[2] == 1 else f"t={tt + 1}"
                    ax.set_title(f"{a.layer} f_S{g + 1}\n({when})", fontsize=7)
    axes[0, 0].set_title("input events\n(window)", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    fig.colorbar(im, ax=axes, shrink=0.7, label="spatial attention (0-1)")
    return fig


__all__ = [name for name in dir() if name.startswith("fig_")] + ["pick_channels"]
