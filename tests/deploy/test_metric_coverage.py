"""Every metric that the Grafana dashboard, the alert rules and the autoscaler query is one the service
exports. The names are found by parsing the PromQL (deploy_support.metric_names), never listed by hand;
they are compared with the service's own exposition: the metric registry of service.telemetry (no
server needed) and the live GET /metrics of a running `asasnn serve`.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from deploy_support import DEPLOY, REPO
from promql_names import (
    exported_names,
    grafana_query_metrics,
    metric_family,
    metric_names,
    parse_exposition,
    tokenize,
)

DASHBOARD = DEPLOY / "grafana" / "dashboards" / "asasnn.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
K8S = DEPLOY / "k8s"
# Series that Prometheus itself writes for every target, not the service.
PROMETHEUS_SERIES = {
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_series_added",
    "ALERTS",
}


# ---- where the queries are ----------------------------------------------------------------------------
def dashboard_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for p in panels:
        out.append(p)
        out += dashboard_panels(p.get("panels", []))  # collapsed rows hold their panels
    return out


def dashboard_queries() -> dict[str, set[str]]:
    """``where -> metric names`` for every panel target and every query variable of the dashboard."""
    dash = json.loads(DASHBOARD.read_text())
    out: dict[str, set[str]] = {}
    for p in dashboard_panels(dash["panels"]):
        for t in p.get("targets", []):
            out[f"panel {p['title']!r} {t['refId']}: {t['expr']}"] = metric_names(t["expr"])
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            out[f"variable ${v['name']}: {q}"] = grafana_query_metrics(q)
    return out


def rule_queries() -> dict[str, set[str]]:
    out = {}
    for g in yaml.safe_load(ALERTS.read_text())["groups"]:
        for r in g["rules"]:
            out[f"rule {r.get('alert') or r.get('record')}: {r['expr']}"] = metric_names(str(r["expr"]))
    return out


def autoscaler_queries() -> dict[str, set[str]]:
    out = {}
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "ScaledObject":
                for t in doc["spec"]["triggers"]:
                    if t["type"] == "prometheus":
                        q = t["metadata"]["query"]
                        out[f"{path.relative_to(REPO)} trigger {t.get('name')}: {q}"] = metric_names(q)
    return out


def all_queries() -> dict[str, set[str]]:
    return {**dashboard_queries(), **rule_queries(), **autoscaler_queries()}


def missing(queries: dict[str, set[str]], exposition: str) -> list[str]:
    types, samples = parse_exposition(exposition)
    series = exported_names(types, samples) | PROMETHEUS_SERIES
    histograms = {f for f, k in types.items() if k == "histogram"}
    return [
        f"{metric_family(n, histograms)} ({n}) in {where}"
        for where, names in queries.items()
        for n in sorted(names)
        if n not in series
    ]


# ---- the tokenizer, pinned on hand-written expressions --------------------------------------------------
@pytest.mark.parametrize(
    "expr, names",
    [
        ('up{job="asasnn"} == 0', {"up"}),
        (
            "histogram_quantile(0.99, sum by (model, le) (rate(asasnn_step_latency_seconds_bucket[5m]))) > 0.015",
            {"asasnn_step_latency_seconds_bucket"},
        ),
        (
            'sum without (instance) (rate(a_total{model=~"$model", instance=~"${instance}"}[$__rate_interval])) / on (model) group_left (label) b',
            {"a_total", "b"},
        ),
        (
            "abs(avg_over_time(x[15m]) - avg_over_time(x[1d] offset 15m)) > 0.5 * avg by (m) (y) and on (m) (sum by (m) (z) > 0)",
            {"x", "y", "z"},
        ),
        (
            '{__name__="named_by_matcher", le="+Inf"} unless count(sum(q) by (or_label)) or absent(w)',
            {"named_by_matcher", "q", "w"},
        ),
        (
            "max_over_time(rate(v[1m])[10m:30s]) + topk(3, u) @ 1700000000 - bool_metric * 1e3 + 0x1f",
            {"v", "u", "bool_metric"},
        ),
        ("# a comment\nsum(m:recorded:rate5m)", {"m:recorded:rate5m"}),
    ],
)
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_tokenizer_keeps_strings_and_variables_whole() -> None:
    toks = tokenize('a{l="x}y", m=~"$model"}[$__rate_interval]')
    assert ("string", '"x}y"') in toks and ("var", "$__rate_interval") in toks


def test_grafana_variable_queries() -> None:
    assert grafana_query_metrics("label_values(asasnn_model_info, model)") == {"asasnn_model_info"}
    assert grafana_query_metrics('label_values(up{job="asasnn"}, instance)') == {"up"}
    assert grafana_query_metrics("label_values(model)") == set()
    with pytest.raises(ValueError):
        grafana_query_metrics("metrics(asasnn_.*)")


def test_exposition_names() -> None:
    text = (
        '# HELP c_total x\n# TYPE c counter\nc_total{m="a"} 1.0\n'
        "# HELP h x\n# TYPE h histogram\n"
        "# HELP g x\n# TYPE g gauge\n"
    )
    types, samples = parse_exposition(text)
    assert types == {"c": "counter", "h": "histogram", "g": "gauge"} and samples == {"c_total"}
    names = exported_names(types, samples)
    assert {"c_total", "h_bucket", "h_sum", "h_count", "g"} <= names and "h" not in names and "c" not in names
    assert missing({"q": {"h_bucket", "h", "nope"}}, text) == ["h (h) in q", "nope (nope) in q"]


# ---- the real thing ----------------------------------------------------------------------------------
def test_queries_were_found() -> None:
    """The collection is not vacuous: every panel, rule and trigger names at least one metric."""
    queries = all_queries()
    assert len(dashboard_queries()) >= 40 and len(rule_queries()) >= 8 and len(autoscaler_queries()) >= 4
    empty = [w for w, names in queries.items() if not names and "label_values(model)" not in w]
    assert not empty, empty
    used = set().union(*queries.values())
    for required in (
        "asasnn_active_sessions",
        "asasnn_events_received_total",
        "asasnn_events_rejected_total",
        "asasnn_steps_total",
        "asasnn_batch_size_bucket",
        "asasnn_step_latency_seconds_bucket",
        "asasnn_e2e_latency_seconds_bucket",
        "asasnn_layer_spike_rate",
        "asasnn_network_spike_rate",
        "asasnn_synaptic_ops_total",
        "asasnn_energy_proxy_joules_total",
        "asasnn_energy_first_layer_joules_total",
        "asasnn_energy_synaptic_joules_total",
        "asasnn_predictions_total",
    ):
        assert required in used, f"the dashboard shows nothing of {required}"


def test_names_exist_in_the_service_registry() -> None:
    """Against service.telemetry's registry, rendered without a server."""
    from service.telemetry import Metrics

    problems = missing(all_queries(), Metrics().render().decode())
    assert not problems, "queried but not exported:\n" + "\n".join(problems)


def test_names_exist_in_live_metrics(live_service) -> None:
    """Against GET /metrics of a running `asasnn serve`."""
    problems = missing(all_queries(), live_service.metrics_text())
    assert not problems, "queried but not exported:\n" + "\n".join(problems)


def test_names_are_documented() -> None:
    doc = REPO / "docs" / "metrics.md"
    if not doc.is_file():
        pytest.skip("docs/metrics.md not written yet")
    from service.telemetry import Metrics

    types, _ = parse_exposition(Metrics().render().decode())
    histograms = {f for f, k in types.items() if k == "histogram"}
    text = doc.read_text()
    used = {
        metric_family(n, histograms) for names in all_queries().values() for n in names
    } - PROMETHEUS_SERIES
    undocumented = sorted(n for n in used if n not in text and n.removesuffix("_total") not in text)
    assert not undocumented, f"docs/metrics.md does not mention {undocumented}"


def test_every_exported_family_is_documented() -> None:
    """docs/metrics.md names every family GET /metrics exports, the process / platform / GC collectors'
    included, says that known label values start at 0, and explains the energy proxy's two parts."""
    from service.protocol import SESSION_REFUSALS
    from service.telemetry import BATCH_BUCKETS, Metrics

    text = (REPO / "docs" / "metrics.md").read_text()
    types, _ = parse_exposition(Metrics().render().decode())
    assert {"process_cpu_seconds_total", "python_info", "python_gc_collections_total"} <= set(types)
    missing_families = sorted(
        f
        for f in types
        if f"`{f}`" not in text
        and f"`{f.removesuffix('_total')}_total`" not in text
        and not f.endswith("_created")  # prometheus-client's creation timestamp of a counter's child
    )
    assert not missing_families, f"docs/metrics.md does not document {missing_families}"
    for reason in SESSION_REFUSALS:
        assert f"`{reason}`" in text, f"session refusal reason {reason!r} undocumented"
    assert "at 0" in text and "increase()" in text, "the initialisation at 0 and why it matters"
    assert "asasnn_energy_first_layer_joules_total" in text and "asasnn_energy_synaptic_joules_total" in text
    buckets = ", ".join(f"{b:g}" for b in BATCH_BUCKETS[:4])
    assert buckets in text, f"batch-size buckets ({buckets}, ...) as exported"


def test_dashboard_is_generated() -> None:
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, str(DEPLOY / "grafana" / "dashboard.py"), "--check"],
        check=False,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr


def test_dashboard_structure() -> None:
    """What Grafana needs to render it: unique ids, panels inside the 24-column grid, every variable
    a query uses defined, the A/B pair and the per-model variable present."""
    dash = json.loads(DASHBOARD.read_text())
    panels = dashboard_panels(dash["panels"])
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "model", "instance", "model_a", "model_b"} <= variables
    import re

    for p in panels:
        for t in p.get("targets", []):
            used = set(re.findall(r"\$\{?(\w+)", t["expr"])) - {"__rate_interval", "__interval", "__range"}
            assert used <= variables, f"{p['title']}: undefined variables {used - variables}"
    titles = " ".join(p["title"] for p in panels)
    for topic in (
        "Active streams",
        "Events in",
        "Timesteps",
        "Batch size",
        "Step latency",
        "End-to-end latency",
        "Spike rate per layer",
        "Network spike rate",
        "Synaptic operations",
        "Energy proxy (W)",
        "predictions by label",
        "A vs B",
    ):
        assert topic.lower() in titles.lower(), f"no panel about {topic}"
    units = {p["title"]: p["fieldConfig"]["defaults"]["unit"] for p in panels if p["type"] != "row"}
    assert units["Energy proxy (W)"] == "watt" and units["Step latency (one batched model call)"] == "s"


def panel_by_title(title: str) -> dict[str, Any]:
    (p,) = [p for p in dashboard_panels(json.loads(DASHBOARD.read_text())["panels"]) if p["title"] == title]
    return p


def test_stat_panels_have_thresholds() -> None:
    """Explicit absolute thresholds on every stat panel (Grafana's default paints anything over 80 red:
    80 events/s, 80 streams), starting from -inf, increasing."""
    panels = [p for p in dashboard_panels(json.loads(DASHBOARD.read_text())["panels"]) if p["type"] == "stat"]
    assert len(panels) >= 8
    for p in panels:
        th = p["fieldConfig"]["defaults"].get("thresholds")
        assert th and th["mode"] == "absolute", f"{p['title']}: no thresholds"
        steps = th["steps"]
        assert steps[0]["value"] is None and all(s["color"] for s in steps), p["title"]
        values = [s["value"] for s in steps[1:]]
        assert values == sorted(values) and len(set(values)) == len(values), p["title"]
        assert not any(s["value"] == 80 and s["color"] == "red" for s in steps), (
            f"{p['title']}: Grafana's default"
        )
    latency = panel_by_title("p99 step latency")["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert latency[-1]["color"] == "red" and latency[-1]["value"] == 0.015


def test_ab_variables_default_to_two_models() -> None:
    """The A/B row opens on two different models (bundled ones, which the model directories of the tests
    serve), and B's choices leave out A's model, so the row never compares a model with itself."""
    dash = json.loads(DASHBOARD.read_text())
    v = {x["name"]: x for x in dash["templating"]["list"]}
    a, b = v["model_a"], v["model_b"]
    assert not a["multi"] and not b["multi"] and not a["includeAll"] and not b["includeAll"]
    defaults = a["current"]["value"], b["current"]["value"]
    assert defaults[0] != defaults[1]
    bundled = REPO / "models" / "bundled"
    if bundled.is_dir():
        assert all((bundled / m / "card.json").is_file() for m in defaults), f"{defaults} are not bundled"
    q = b["query"]["query"]
    assert "$model_a" in q and 'model!="$model_a"' in q, q
    assert "$model_b" not in a["query"]["query"]


def test_panel_descriptions() -> None:
    batch = panel_by_title("Batch size (streams per model call)")
    d = batch["description"]
    assert "at most" in d and "power" in d and "asasnn_batch_size_sum" in d and "asasnn_batch_size_count" in d
    watts = panel_by_title("Energy proxy (W)")
    d = watts["description"].lower()
    assert "fixed cost" in d and "first layer" in d and "80 %" in d
    series = [metric_names(t["expr"]) for t in watts["targets"]]
    assert series == [
        {"asasnn_energy_proxy_joules_total"},
        {"asasnn_energy_first_layer_joules_total"},
        {"asasnn_energy_synaptic_joules_total"},
    ]
    legends = [t["legendFormat"] for t in watts["targets"]]
    assert legends == ["total {{model}}", "first layer {{model}}", "synaptic {{model}}"]
