"""Generate the Grafana dashboard of the ASA-SNN stream service (deploy/grafana/dashboards/asasnn.json).

The JSON is committed (Grafana provisions it from disk); this script is its source, so that the
panels stay uniform and every query is written once. Regenerate after an edit:

    python deploy/grafana/dashboard.py            # rewrite the JSON
    python deploy/grafana/dashboard.py --check    # exit 1 if the committed JSON is stale

Every metric a query names must be exported by the service (tests/deploy checks it against a live
GET /metrics, and that every query returns data once a stream has run). Selectors carry ``$model`` /
``$instance``; the A/B row compares ``$model_a`` with ``$model_b`` (e.g. a vanilla and an ASA bundle
served side by side): A defaults to ``vanilla`` and B to ``default`` (bundled models), and B's choices
leave out A's model, so the row never compares a model with itself. Every stat panel has explicit
thresholds (Grafana's own default turns any value over 80 red).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards" / "asasnn.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'model=~"$model", instance=~"$instance"'
RI = "$__rate_interval"
# The A/B row's defaults, two bundled models: A the baseline without attention, B the causal-ASA one
# (so "reduction B vs A" reads as what attention saves).
MODEL_A, MODEL_B = "vanilla", "default"

_next_id = 0


def _id() -> int:
    global _next_id
    _next_id += 1
    return _next_id


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> dict[str, Any]:
    t: dict[str, Any] = {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto", "refId": ref}
    if instant:
        t.update(instant=True, range=False, format="table")
    return t


# Threshold steps (colour, from value; the first from -inf). NEUTRAL: a figure without good or bad.
Steps = list[tuple[str, float | None]]
NEUTRAL: Steps = [("blue", None)]


def panel(
    kind: str,
    title: str,
    targets: list[dict[str, Any]],
    grid: tuple[int, int, int, int],
    unit: str = "short",
    description: str = "",
    thresholds: Steps | None = None,
    **options: Any,
) -> dict[str, Any]:
    if kind == "stat" and not thresholds:
        raise ValueError(f"stat panel {title!r} needs thresholds (Grafana's default is red above 80)")
    x, y, w, h = grid
    for ref, t in zip("ABCDEFGH", targets):
        t["refId"] = ref
    p: dict[str, Any] = {
        "id": _id(),
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": options or {},
    }
    if thresholds:
        p["fieldConfig"]["defaults"]["thresholds"] = {
            "mode": "absolute",
            "steps": [{"color": color, "value": value} for color, value in thresholds],
        }
    if kind == "timeseries":
        stacking = (options or {}).pop("stacking", {"mode": "none"})
        p["fieldConfig"]["defaults"]["custom"] = {
            "lineWidth": 1,
            "fillOpacity": 10,
            "showPoints": "never",
            "stacking": stacking,
        }
        p["options"] = {
            "legend": {"displayMode": "list", "placement": "bottom"},
            "tooltip": {"mode": "multi"},
            **(options or {}),
        }
    return p


def row(title: str, y: int, repeat: str | None = None) -> dict[str, Any]:
    r: dict[str, Any] = {
        "id": _id(),
        "type": "row",
        "title": title,
        "collapsed": False,
        "gridPos": {"x": 0, "y": y, "w": 24, "h": 1},
        "panels": [],
    }
    if repeat:
        r["repeat"] = repeat
    return r


def quantiles(metric: str, by: str = "model", sel: str = SEL) -> list[dict[str, Any]]:
    return [
        target(
            f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{{{sel}}}[{RI}])))",
            f"p{int(q * 100)} {{{{{by}}}}}",
        )
        for q in (0.5, 0.95, 0.99)
    ]


def ab(expr: str, legend: str) -> list[dict[str, Any]]:
    """The same query for model A and model B (``@SEL`` in ``expr`` becomes each side's selector)."""
    return [
        target(
            expr.replace("@SEL", 'model="$model_a", instance=~"$instance"'), f"A: $model_a {legend}".strip()
        ),
        target(
            expr.replace("@SEL", 'model="$model_b", instance=~"$instance"'), f"B: $model_b {legend}".strip()
        ),
    ]


def model_var(
    name: str, label: str, multi: bool, default: str | None = None, selector: str = ""
) -> dict[str, Any]:
    """A model picker: ``multi`` with All (the per-model panels), or one model with a ``default`` that
    Grafana keeps while it is served (else it takes the first choice). ``selector``: label matchers
    that narrow the choices (model B leaves out model A's)."""
    query = (
        f"label_values(asasnn_model_info{{{selector}}}, model)"
        if selector
        else "label_values(asasnn_model_info, model)"
    )
    if multi:
        current = {"text": "All", "value": "$__all"}
    else:
        current = {"selected": True, "text": default, "value": default}
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": f"{name}-query"},
        "definition": query,
        "refresh": 2,
        "sort": 1,
        "multi": multi,
        "includeAll": multi,
        "current": current,
        **({"allValue": ".*"} if multi else {}),
    }


def build() -> dict[str, Any]:
    global _next_id
    _next_id = 0
    P: list[dict[str, Any]] = []
    y = 0

    # ---- overview: one number each ----------------------------------------------------------------
    P.append(row("Overview", y))
    y += 1
    stats: list[tuple[str, str, str, Steps, str]] = [
        ("Active streams", f"sum(asasnn_active_sessions{{{SEL}}})", "short", NEUTRAL, ""),
        ("Events in /s", f"sum(rate(asasnn_events_received_total{{{SEL}}}[{RI}]))", "short", NEUTRAL, ""),
        ("Timesteps /s", f"sum(rate(asasnn_steps_total{{{SEL}}}[{RI}]))", "short", NEUTRAL, ""),
        (
            "p99 step latency",
            f"histogram_quantile(0.99, sum by (le) (rate(asasnn_step_latency_seconds_bucket{{{SEL}}}[{RI}])))",
            "s",
            [("green", None), ("orange", 0.010), ("red", 0.015)],
            (
                "p99 of one batched model call, all selected models together. Orange from 10 ms, red from "
                "15 ms (the paper models' timestep; the bundled models' is 50 ms). The alert "
                "AsasnnStepLatencyOverTimestep holds each model to its own timestep."
            ),
        ),
        ("Network spike rate", f"avg(asasnn_network_spike_rate{{{SEL}}})", "percentunit", NEUTRAL, ""),
        (
            "Energy proxy",
            f"sum(rate(asasnn_energy_proxy_joules_total{{{SEL}}}[{RI}]))",
            "watt",
            NEUTRAL,
            "Energy proxy of the 45 nm convention in watts, not a power measurement (see the Energy proxy (W) panel).",
        ),
    ]
    for i, (title, expr, unit, steps, description) in enumerate(stats):
        P.append(
            panel(
                "stat",
                title,
                [target(expr)],
                (4 * i, y, 4, 4),
                unit,
                description,
                steps,
                reduceOptions={"calcs": ["lastNotNull"], "fields": "", "values": False},
                colorMode="value",
                graphMode="area",
            )
        )
    y += 4

    # ---- traffic --------------------------------------------------------------------------------
    P.append(row("Streams and events", y))
    y += 1
    P.append(
        panel(
            "timeseries",
            "Active streams",
            [
                target(f"sum by (model) (asasnn_active_sessions{{{SEL}}})", "{{model}}"),
            ],
            (0, y, 8, 8),
            "short",
            "Sessions holding a state slot (WebSocket streams and REST recordings).",
        )
    )
    P.append(
        panel(
            "timeseries",
            "Events in and rejected /s",
            [
                target(f"sum by (model) (rate(asasnn_events_received_total{{{SEL}}}[{RI}]))", "in {{model}}"),
                target(
                    f"sum by (model, reason) (rate(asasnn_events_rejected_total{{{SEL}}}[{RI}]))",
                    "rejected {{model}} {{reason}}",
                ),
                target(
                    f"sum by (model, reason) (rate(asasnn_events_dropped_total{{{SEL}}}[{RI}]))",
                    "dropped {{model}} {{reason}}",
                ),
            ],
            (8, y, 8, 8),
            "short",
        )
    )
    P.append(
        panel(
            "timeseries",
            "Sessions started and refused /s",
            [
                target(
                    f"sum by (model) (rate(asasnn_sessions_started_total{{{SEL}}}[{RI}]))",
                    "started {{model}}",
                ),
                target(
                    f'sum by (reason) (rate(asasnn_sessions_rejected_total{{instance=~"$instance"}}[{RI}]))',
                    "refused {{reason}}",
                ),
            ],
            (16, y, 8, 8),
            "short",
        )
    )
    y += 8
    P.append(
        panel(
            "timeseries",
            "Timesteps /s",
            [
                target(f"sum by (model) (rate(asasnn_steps_total{{{SEL}}}[{RI}]))", "{{model}}"),
                target(
                    f"sum by (model) (rate(asasnn_skipped_steps_total{{{SEL}}}[{RI}]))",
                    "skipped (gap cap) {{model}}",
                ),
            ],
            (0, y, 8, 8),
            "short",
        )
    )
    P.append(
        panel(
            "timeseries",
            "Batch size (streams per model call)",
            [
                *quantiles("asasnn_batch_size")[::2],
                target(
                    f"sum by (model) (rate(asasnn_batch_size_sum{{{SEL}}}[{RI}])) / sum by (model) (rate(asasnn_batch_size_count{{{SEL}}}[{RI}]))",
                    "mean {{model}}",
                ),
            ],
            (8, y, 8, 8),
            "short",
            "Streams per model call. The histogram's buckets are powers of two (0.999, 1, 2, 4, ..., 1024), "
            'so p50 and p99 are interpolated inside a bucket: read them as "at most" the bucket\'s upper '
            "bound (p99 = 6 means 99 % of the calls batched at most 8 streams), not as exact sizes. The mean "
            "is exact: rate(asasnn_batch_size_sum) / rate(asasnn_batch_size_count).",
        )
    )
    P.append(
        panel(
            "timeseries",
            "Queue depth and backpressure",
            [
                target(f"sum by (model) (asasnn_queue_depth{{{SEL}}})", "queued steps {{model}}"),
                target(
                    f"sum by (model, action) (rate(asasnn_backpressure_total{{{SEL}}}[{RI}]))",
                    "backpressure/s {{model}} {{action}}",
                ),
            ],
            (16, y, 8, 8),
            "short",
        )
    )
    y += 8

    # ---- latency --------------------------------------------------------------------------------
    P.append(row("Latency", y))
    y += 1
    P.append(
        panel(
            "timeseries",
            "Step latency (one batched model call)",
            [
                *quantiles("asasnn_step_latency_seconds"),
                target(f"max by (model) (asasnn_model_timestep_seconds{{{SEL}}})", "timestep {{model}}", "D"),
                target(
                    f"sum by (model) (rate(asasnn_step_cpu_seconds_total{{{SEL}}}[{RI}])) / "
                    f"sum by (model) (rate(asasnn_step_latency_seconds_count{{{SEL}}}[{RI}]))",
                    "CPU per call {{model}}",
                    "E",
                ),
            ],
            (0, y, 12, 8),
            "s",
            "Must stay below the model's timestep (the timestep series, asasnn_model_timestep_seconds) to keep "
            "up with real time; AsasnnStepLatencyOverTimestep fires when p99 does not. CPU per call: the "
            "mean CPU time of the calling thread; a call's wall time far above it waited for a core or the GIL.",
        )
    )
    P.append(
        panel(
            "timeseries",
            "End-to-end latency (packet completing a timestep arrives -> prediction sent)",
            quantiles("asasnn_e2e_latency_seconds"),
            (12, y, 12, 8),
            "s",
        )
    )
    y += 8

    # ---- spiking activity ----------------------------------------------------------------------------
    P.append(row("Spiking activity", y))
    y += 1
    P.append(
        panel(
            "timeseries",
            "Spike rate per layer",
            [
                target(f"avg by (model, layer) (asasnn_layer_spike_rate{{{SEL}}})", "{{model}} {{layer}}"),
            ],
            (0, y, 8, 9),
            "percentunit",
            "Spikes per neuron per timestep, EMA over ~100 steps.",
        )
    )
    P.append(
        panel(
            "timeseries",
            "Network spike rate (NASFR)",
            [
                target(f"avg by (model) (asasnn_network_spike_rate{{{SEL}}})", "{{model}}"),
            ],
            (8, y, 8, 9),
            "percentunit",
            "Network average spike firing rate: neurons weighted by layer size.",
        )
    )
    P.append(
        panel(
            "timeseries",
            "Spikes /s per layer",
            [
                target(
                    f"sum by (model, layer) (rate(asasnn_spikes_total{{{SEL}}}[{RI}]))", "{{model}} {{layer}}"
                ),
            ],
            (16, y, 8, 9),
            "short",
        )
    )
    y += 9

    # ---- energy ----------------------------------------------------------------------------------
    P.append(row("Synaptic operations and energy proxy", y))
    y += 1
    P.append(
        panel(
            "timeseries",
            "Synaptic operations /s",
            [
                target(f"sum by (model) (rate(asasnn_synaptic_ops_total{{{SEL}}}[{RI}]))", "{{model}}"),
            ],
            (0, y, 8, 8),
            "ops",
            "SOPs = input spikes x fan-out, summed over the spiking layers.",
        )
    )
    P.append(
        panel(
            "timeseries",
            "Energy proxy (W)",
            [
                target(
                    f"sum by (model) (rate(asasnn_energy_proxy_joules_total{{{SEL}}}[{RI}]))",
                    "total {{model}}",
                ),
                target(
                    f"sum by (model) (rate(asasnn_energy_first_layer_joules_total{{{SEL}}}[{RI}]))",
                    "first layer {{model}}",
                ),
                target(
                    f"sum by (model) (rate(asasnn_energy_synaptic_joules_total{{{SEL}}}[{RI}]))",
                    "synaptic {{model}}",
                ),
            ],
            (8, y, 8, 8),
            "watt",
            "Energy proxy E = 4.6 pJ x MACs(first layer) + 0.9 pJ x SOPs per second (45 nm convention), "
            "drawn with its two parts. It is mostly a fixed cost per stream and timestep: the first layer "
            "runs dense multiply-accumulates on the input frame whatever the spikes (about 80 % of the total "
            "for the bundled default model), so the total follows timesteps/s. Only the synaptic part "
            "(0.9 pJ x SOPs) follows the spike rate, and it is where attention saves energy.",
        )
    )
    P.append(
        panel(
            "timeseries",
            "Energy proxy per timestep",
            [
                target(
                    f"sum by (model) (rate(asasnn_energy_proxy_joules_total{{{SEL}}}[{RI}])) / sum by (model) (rate(asasnn_steps_total{{{SEL}}}[{RI}]))",
                    "{{model}}",
                ),
            ],
            (16, y, 8, 8),
            "joule",
        )
    )
    y += 8

    # ---- predictions -------------------------------------------------------------------------------
    P.append(row("Predictions", y))
    y += 1
    P.append(
        panel(
            "timeseries",
            "Streamed predictions by label /s",
            [
                target(
                    f"sum by (model, label) (rate(asasnn_predictions_total{{{SEL}}}[{RI}]))",
                    "{{model}} {{label}}",
                ),
            ],
            (0, y, 12, 8),
            "short",
            stacking={"mode": "normal"},
        )
    )
    P.append(
        panel(
            "timeseries",
            "REST classifications by label /s",
            [
                target(
                    f"sum by (model, label) (rate(asasnn_classifications_total{{{SEL}}}[{RI}]))",
                    "{{model}} {{label}}",
                ),
            ],
            (12, y, 6, 8),
            "short",
        )
    )
    P.append(
        panel(
            "table",
            "Served models",
            [
                target(
                    f"max by (model, version, backend, device) (asasnn_model_info{{{SEL}}})", instant=True
                ),
            ],
            (18, y, 6, 8),
            "short",
        )
    )
    y += 8

    # ---- A/B ------------------------------------------------------------------------------------
    P.append(row("Side by side: $model_a (A) vs $model_b (B)", y))
    y += 1
    P.append(
        panel(
            "stat",
            "Spike-rate reduction B vs A",
            [
                target(
                    '1 - avg(asasnn_network_spike_rate{model="$model_b", instance=~"$instance"}) '
                    '/ avg(asasnn_network_spike_rate{model="$model_a", instance=~"$instance"})'
                ),
            ],
            (0, y, 4, 8),
            "percentunit",
            "1 - NASFR(B) / NASFR(A): how much less model B fires than model A (green when B fires less). "
            "The paper reports about 78 % less for ASA against vanilla (DVS128 Gesture).",
            [("orange", None), ("green", 0)],
            reduceOptions={"calcs": ["lastNotNull"], "fields": "", "values": False},
        )
    )
    P.append(
        panel(
            "stat",
            "Energy per timestep B / A",
            [
                target(
                    '(sum(rate(asasnn_energy_proxy_joules_total{model="$model_b", instance=~"$instance"}[$__rate_interval])) '
                    '/ sum(rate(asasnn_steps_total{model="$model_b", instance=~"$instance"}[$__rate_interval]))) '
                    '/ (sum(rate(asasnn_energy_proxy_joules_total{model="$model_a", instance=~"$instance"}[$__rate_interval])) '
                    '/ sum(rate(asasnn_steps_total{model="$model_a", instance=~"$instance"}[$__rate_interval])))'
                ),
            ],
            (0, y + 8, 4, 8),
            "percentunit",
            "Energy proxy per timestep of model B over model A's (green under 100 %: B is cheaper). Mostly the "
            "first layer's fixed cost, so attention moves it much less than the spike rate.",
            [("green", None), ("orange", 1)],
            reduceOptions={"calcs": ["lastNotNull"], "fields": "", "values": False},
        )
    )
    P.append(
        panel(
            "timeseries",
            "Network spike rate A vs B",
            ab("avg(asasnn_network_spike_rate{@SEL})", ""),
            (4, y, 10, 8),
            "percentunit",
        )
    )
    P.append(
        panel(
            "timeseries",
            "Spike rate per layer A vs B",
            ab("avg by (layer) (asasnn_layer_spike_rate{@SEL})", "{{layer}}"),
            (14, y, 10, 8),
            "percentunit",
        )
    )
    y += 8
    P.append(
        panel(
            "timeseries",
            "Energy proxy per timestep A vs B",
            ab(
                f"sum(rate(asasnn_energy_proxy_joules_total{{@SEL}}[{RI}])) / sum(rate(asasnn_steps_total{{@SEL}}[{RI}]))",
                "",
            ),
            (4, y, 7, 8),
            "joule",
        )
    )
    P.append(
        panel(
            "timeseries",
            "SOPs per timestep A vs B",
            ab(
                f"sum(rate(asasnn_synaptic_ops_total{{@SEL}}[{RI}])) / sum(rate(asasnn_steps_total{{@SEL}}[{RI}]))",
                "",
            ),
            (11, y, 7, 8),
            "short",
        )
    )
    P.append(
        panel(
            "timeseries",
            "p99 step latency A vs B",
            ab(
                f"histogram_quantile(0.99, sum by (le) (rate(asasnn_step_latency_seconds_bucket{{@SEL}}[{RI}])))",
                "",
            ),
            (18, y, 6, 8),
            "s",
        )
    )
    y += 8

    return {
        "uid": "asasnn-stream",
        "title": "ASA-SNN stream",
        "description": "Live streams, latency, spike rates and energy proxy of the ASA-SNN inference service.",
        "tags": ["asasnn", "snn", "dvs"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "5s",
        "time": {"from": "now-30m", "to": "now"},
        "timepicker": {"refresh_intervals": ["5s", "10s", "30s", "1m", "5m"]},
        "schemaVersion": 39,
        "version": 1,
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {"text": "Prometheus", "value": "prometheus"},
                    "hide": 0,
                },
                model_var("model", "Model", multi=True),
                {
                    "name": "instance",
                    "label": "Replica",
                    "type": "query",
                    "datasource": DS,
                    "query": {
                        "query": "label_values(asasnn_model_info, instance)",
                        "refId": "instance-query",
                    },
                    "definition": "label_values(asasnn_model_info, instance)",
                    "refresh": 2,
                    "sort": 1,
                    "multi": True,
                    "includeAll": True,
                    "allValue": ".*",
                    "current": {"text": "All", "value": "$__all"},
                },
                model_var("model_a", "Model A", multi=False, default=MODEL_A),
                model_var("model_b", "Model B", multi=False, default=MODEL_B, selector='model!="$model_a"'),
            ]
        },
        "panels": P,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--check", action="store_true", help="exit 1 if the committed JSON differs from this script's output"
    )
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.is_file() or OUT.read_text() != text:
            print(f"{OUT} is stale: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
