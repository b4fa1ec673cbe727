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
