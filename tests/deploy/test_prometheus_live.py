"""The monitoring stack with real parts: Prometheus (Debian's package) runs the project's own
deploy/prometheus config, rewritten only for loopback addresses, a temporary data directory and a
1 s scrape interval, against a real `asasnn serve`; synthetic events are streamed into it, one session
is refused (unknown model) and one packet too (misaligned), and the Prometheus HTTP API must then show
the service up, its counters risen, live spike rates and a non-zero energy rate, the refusals as a
first increase from 0 (and the alert on them firing). The alert rules load (promtool, and the live rule
manager) and pass their unit tests, which cover every alert, and every query of the Grafana dashboard
returns data on the live data (every series the service exports starts at 0, so none may be empty).
"""

from __future__ import annotations

import copy
import json
import math
import re
import subprocess
import time
from typing import Any

import pytest
import yaml
from deploy_support import (
    DEPLOY,
    Prometheus,
    free_port,
    log_tail,
    refused_packet,
    refused_session,
    require_tool,
    running,
    stream_synthetic,
    wait_http,
)
from promql_names import grafana_query_metrics, metric_names

from models.events.types import EVENT_BYTES

PROM_DIR = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "asasnn.json"
SCRAPE_S = 1


def promtool() -> str:
    require_tool("prometheus", "prometheus")
    return require_tool("promtool", "prometheus")


def rewrite_config(service_port: int, prom_port: int) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with loopback targets, 1 s intervals and an absolute rule path;
    nothing else changes (asserted)."""
    original = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    conf = copy.deepcopy(original)
    conf["global"].update(
        scrape_interval=f"{SCRAPE_S}s", scrape_timeout=f"{SCRAPE_S}s", evaluation_interval=f"{SCRAPE_S}s"
    )
    conf["rule_files"] = [str(PROM_DIR / f) for f in conf["rule_files"]]
    loopback = {"asasnn:8000": f"127.0.0.1:{service_port}", "localhost:9090": f"127.0.0.1:{prom_port}"}
    for job in conf["scrape_configs"]:
        for sc in job["static_configs"]:
            sc["targets"] = [loopback[t] for t in sc["targets"]]
    # the rewrite touched only what it had to
    strip = copy.deepcopy(conf)
    for c in (strip, orig := copy.deepcopy(original)):
        for k in ("scrape_interval", "scrape_timeout", "evaluation_interval"):
            c["global"].pop(k)
        c.pop("rule_files")
        for job in c["scrape_configs"]:
            for sc in job["static_configs"]:
                sc.pop("targets")
    assert strip == orig
    return conf


@pytest.fixture(scope="module")
def prometheus(live_service, tmp_path_factory: pytest.TempPathFactory):
    prom_bin = require_tool("prometheus", "prometheus")
    tool = promtool()
    tmp = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    conf = tmp / "prometheus.yml"
    conf.write_text(yaml.safe_dump(rewrite_config(live_service.port, port)))
    r = subprocess.run(
        [tool, "check", "config", str(conf)], check=False, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stdout + r.stderr
    log = tmp / "prometheus.log"
    cmd = [
        prom_bin,
        f"--config.file={conf}",
        f"--storage.tsdb.path={tmp / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=1h",
        "--log.level=warn",
    ]
    with running(cmd, log, cwd=tmp) as proc:
        wait_http(f"http://127.0.0.1:{port}/-/ready", timeout=60, proc=proc, log=log)
        prom = Prometheus(f"http://127.0.0.1:{port}")
        prom.log = log  # type: ignore[attr-defined]
        yield prom


def test_promtool_checks_the_rules() -> None:
    tool = promtool()
    r = subprocess.run(
        [tool, "check", "rules", str(PROM_DIR / "alerts.yml")],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"SUCCESS: (\d+) rules found", r.stdout)


def test_every_alert_is_unit_tested() -> None:
    """alerts_test.yml expects every alert of alerts.yml to fire in some test and to stay quiet in some
    (other) case; an increase()-based alert is tested on the first event: a series of its counter that
    starts at 0 (as the service exports it) and then rises."""
    alerts = {
        r["alert"]: r["expr"]
        for g in yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"]
        for r in g["rules"]
        if "alert" in r
    }
    tests = yaml.safe_load((PROM_DIR / "alerts_test.yml").read_text())["tests"]
    fired, quiet = set(), set()
    for t in tests:
        for case in t.get("alert_rule_test", []):
            (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert len(alerts) >= 10
    assert set(alerts) <= fired, f"never expected to fire: {sorted(set(alerts) - fired)}"
    assert set(alerts) <= quiet, f"never expected to stay quiet: {sorted(set(alerts) - quiet)}"
    increase_based = {name for name, expr in alerts.items() if "increase(" in expr}
    assert increase_based, "no increase()-based alert"
    for name in increase_based:
        counters = metric_names(alerts[name])
        first_event = [
            series
            for t in tests
            if any(c["alertname"] == name and c.get("exp_alerts") for c in t.get("alert_rule_test", []))
            for series in t["input_series"]
            if series["series"].split("{")[0] in counters
            and re.match(r"0(x\d+)?\s+[1-9]", series["values"].strip())
        ]
        assert first_event, f"{name}: no test with a counter at 0 that then gets its first increment"


def test_alert_rule_unit_tests() -> None:
    """deploy/prometheus/alerts_test.yml: every alert fires when it should (service down after 1 min,
    no target, the first refused session, p99 over the timestep, a standing queue, rejected and dropped
    events, backpressure, spike-rate drift, a silent network) and stays quiet otherwise."""
    r = subprocess.run(
        [promtool(), "test", "rules", "alerts_test.yml"],
        cwd=PROM_DIR,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def sum_or_zero(prom: Prometheus, expr: str) -> float:
    v = prom.value(f"sum({expr})")
    return 0.0 if v is None else v


COUNTERS = (
    "asasnn_events_received_total",
    "asasnn_steps_total",
    "asasnn_synaptic_ops_total",
    "asasnn_energy_proxy_joules_total",
)


# The refusals the `streamed` fixture provokes, as the series that count them.
REFUSED_SESSION = 'asasnn_sessions_rejected_total{job="asasnn", reason="unknown_model"}'
REFUSED_PACKET = 'asasnn_messages_rejected_total{job="asasnn", model="default", reason="misaligned_packet"}'
REFUSED_EVENTS = 'asasnn_events_rejected_total{job="asasnn", model="default", reason="misaligned_packet"}'
REFUSALS = (REFUSED_SESSION, REFUSED_PACKET, REFUSED_EVENTS)


@pytest.fixture(scope="module")
def streamed(prometheus: Prometheus, live_service) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Counter totals as Prometheus saw them before, and the summaries of 3 s of synthetic events
    streamed into both served models at once while Prometheus scrapes every second; then one session
    refused (unknown model) and one packet refused (14 bytes: one event record and a stray byte)."""
    up = prometheus.wait_for('up{job="asasnn"}', lambda v: v == 1, timeout=20)
    assert up == 1, f"the service is not up in Prometheus\n{log_tail(prometheus.log)}"
    before = {m: sum_or_zero(prometheus, m) for m in COUNTERS}
    # the refusal series exist, at 0, before the first refusal (so increase() will see it)
    before.update({q: prometheus.value(q) for q in REFUSALS})  # type: ignore[misc]
    summaries = stream_synthetic(live_service.ws_url, seconds=3.0, models=("default", "vanilla"))
    error = refused_session(live_service.ws_url, {"type": "start", "model": "no-such-model"})
    assert error["code"] == "unknown_model", error
    error = refused_packet(live_service.ws_url, b"\0" * (EVENT_BYTES + 1), model="default")
    assert error["code"] == "misaligned_packet", error
    return before, summaries


def test_live_metrics_reach_prometheus(prometheus: Prometheus, streamed) -> None:
    before, summaries = streamed
    assert all(s["steps"] > 0 and s["events"] > 0 for s in summaries), summaries
    assert all(s["predictions_seen"] > 0 for s in summaries), "the service streamed predictions back"

    for metric, was in before.items():
        now = prometheus.wait_for(f"sum({metric})", lambda v, was=was: v > was, timeout=15)
        assert now is not None and now > was, f"{metric} did not rise in Prometheus ({was} -> {now})"
    expected = before["asasnn_steps_total"] + sum(s["steps"] for s in summaries)
    steps = prometheus.wait_for("sum(asasnn_steps_total)", lambda v: v >= expected, timeout=15)
    assert steps == expected, f"Prometheus counted {steps} timesteps, the streams {expected}"

    # live spike rates: every model fired, and the first conv layer of each has a non-zero rate
    rates = {
        r["metric"]["model"]: float(r["value"][1])
        for r in prometheus.query('asasnn_network_spike_rate{job="asasnn"}')
    }
    assert set(rates) == {"default", "vanilla"} and all(v > 0 for v in rates.values()), rates
    layers = prometheus.query("max by (model) (asasnn_layer_spike_rate)")
    assert len(layers) == 2 and all(float(r["value"][1]) > 0 for r in layers), layers
    # energy proxy in watts and SOPs/s over the streaming window
    window = "30s"
    watts = prometheus.value(f"sum(rate(asasnn_energy_proxy_joules_total[{window}]))")
    sops = prometheus.value(f"sum(rate(asasnn_synaptic_ops_total[{window}]))")
    assert watts is not None and watts > 0 and sops is not None and sops > 0, (watts, sops)
    # both models and their labels show up in the series the dashboard selects on
    assert {r["metric"]["model"] for r in prometheus.query("asasnn_model_info")} == {"default", "vanilla"}
    assert prometheus.query("sum by (model) (asasnn_predictions_total)")


def test_first_refusals_reach_prometheus(prometheus: Prometheus, streamed) -> None:
    """The refusal counters were scraped at 0 before the first refusal, rose to 1 after it, increase()
    sees it, and the alert on refused sessions fires on this first one."""
    before, _ = streamed
    for q in REFUSALS:
        assert before[q] == 0, f"{q} was {before[q]} before the first refusal (must exist at 0)"
        now = prometheus.wait_for(q, lambda v: v >= 1, timeout=15)
        assert now == 1, f"{q}: {now}"
        grew = prometheus.value(f"increase({q}[5m])")
        assert grew is not None and grew > 0, f"increase({q}[5m]) = {grew}"
    deadline, firing = time.monotonic() + 30, []
    while time.monotonic() < deadline and not firing:
        firing = [
            a
            for a in prometheus.api("alerts")["alerts"]
            if a["labels"]["alertname"] == "AsasnnSessionsRejected"
            and a["labels"].get("reason") == "unknown_model"
            and a["state"] == "firing"
        ]
        time.sleep(0.5)
    assert firing, (
        f"AsasnnSessionsRejected did not fire on the first refused session: {prometheus.api('alerts')}"
    )


def test_rules_load_and_stay_quiet(prometheus: Prometheus) -> None:
    """The live rule manager loaded every group of alerts.yml and evaluates it without error; with a
    healthy service no availability alert is pending or firing."""
    expected = {g["name"] for g in yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"]}
    groups = {}
    for _ in range(40):
        groups = {g["name"]: g for g in prometheus.api("rules")["groups"]}
        if set(groups) == expected and all(
            r.get("health") == "ok" for g in groups.values() for r in g["rules"]
        ):
            break
        time.sleep(0.5)
    assert set(groups) == expected
    bad = [
        (r["name"], r.get("health"), r.get("lastError"))
        for g in groups.values()
        for r in g["rules"]
        if r.get("health") != "ok"
    ]
    assert not bad, bad
    active = {a["labels"]["alertname"] for a in prometheus.api("alerts")["alerts"]}
    assert not active & {"AsasnnServiceDown", "AsasnnNoTarget"}, active


def grafana_to_promql(expr: str, model_a: str, model_b: str, rate_interval: str = "2m") -> str:
    """Substitute the dashboard's template variables the way Grafana would with 'All' selected (the
    rate interval covers everything this Prometheus has scraped, so the stream is in every window)."""
    subs = {
        "model": ".*",
        "instance": ".*",
        "model_a": model_a,
        "model_b": model_b,
        "__rate_interval": rate_interval,
    }
    return re.sub(r"\$\{?(\w+)\}?", lambda m: subs[m.group(1)], expr)


def dashboard_defaults() -> tuple[dict[str, Any], str, str]:
    """The dashboard and the defaults of its A/B variables."""
    dash = json.loads(DASHBOARD.read_text())
    v = {x["name"]: x for x in dash["templating"]["list"]}
    return dash, v["model_a"]["current"]["value"], v["model_b"]["current"]["value"]


def test_ab_variables_resolve_to_two_served_models(prometheus: Prometheus, streamed) -> None:
    """Model A's and model B's queries, run the way Grafana runs ``label_values``, offer their defaults;
    B's choices leave out A's model."""
    dash, model_a, model_b = dashboard_defaults()
    assert model_a != model_b
    choices = {}
    for var in dash["templating"]["list"]:
        if var["name"] not in ("model_a", "model_b"):
            continue
        q = grafana_to_promql(var["query"]["query"], model_a, model_b)
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\s*\)", q)
        assert m and grafana_query_metrics(var["query"]["query"]), q
        choices[var["name"]] = set(prometheus.api(f"label/{m.group(2)}/values", **{"match[]": m.group(1)}))
    assert model_a in choices["model_a"] and model_b in choices["model_b"], choices
    assert model_a not in choices["model_b"], choices


def test_every_dashboard_query_returns_data(prometheus: Prometheus, streamed) -> None:
    """After the stream and the refusals, every panel query is valid PromQL on the live Prometheus and
    returns data: at least one series with a finite value. Every series the service exports exists
    from the start at 0, so no panel may be empty (the A/B row is queried with its default models)."""
    for q in ("sum(asasnn_batch_size_count)", *REFUSALS):  # the last scrape after the stream is in
        prometheus.wait_for(q, lambda v: v > 0, timeout=15)
    dash, model_a, model_b = dashboard_defaults()
    failures, checked = [], 0
    for p in dash["panels"]:
        for t in p.get("targets", []):
            q = grafana_to_promql(t["expr"], model_a, model_b)
            try:
                result = prometheus.query(q)
            except AssertionError as e:
                failures.append(f"{p['title']}: {q}: {e}")
                continue
            checked += 1
            values = [float(r["value"][1]) for r in result]
            if not values:
                failures.append(f"{p['title']} ({t['refId']}): {q}: no data")
            elif not any(math.isfinite(v) for v in values):
                failures.append(f"{p['title']} ({t['refId']}): {q}: only {values}")
    assert checked >= 40
    assert not failures, "\n".join(failures)
