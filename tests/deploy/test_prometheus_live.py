"""The monitoring stack with real parts: Prometheus (Debian's package) runs the project's own
deploy/prometheus config, rewritten only for loopback addresses, a temporary data directory and a
1 s scrape interval, against a real `asasnn serve`; synthetic events are streamed into it and the
Prometheus HTTP API must then show the service up, its counters risen, live spike rates and a
non-zero energy rate. The alert rules load (promtool, and the live rule manager) and pass their unit
tests, and every query of the Grafana dashboard evaluates on the live data.
"""

from __future__ import annotations

import copy
import json
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
    require_tool,
    running,
    stream_synthetic,
    wait_http,
)
from promql_names import metric_names, parse_exposition

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


def test_alert_rule_unit_tests() -> None:
    """deploy/prometheus/alerts_test.yml: the alerts fire when they should (service down after 1 min,
    p99 over the timestep, dropped events, spike-rate drift) and stay quiet otherwise."""
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


@pytest.fixture(scope="module")
def streamed(prometheus: Prometheus, live_service) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Counter totals as Prometheus saw them before, and the summaries of 3 s of synthetic events
    streamed into both served models at once while Prometheus scrapes every second."""
    up = prometheus.wait_for('up{job="asasnn"}', lambda v: v == 1, timeout=20)
    assert up == 1, f"the service is not up in Prometheus\n{log_tail(prometheus.log)}"
    before = {m: sum_or_zero(prometheus, m) for m in COUNTERS}
    summaries = stream_synthetic(live_service.ws_url, seconds=3.0, models=("default", "vanilla"))
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


def grafana_to_promql(expr: str, model_a: str, model_b: str) -> str:
    """Substitute the dashboard's template variables the way Grafana would with 'All' selected."""
    subs = {"model": ".*", "instance": ".*", "model_a": model_a, "model_b": model_b, "__rate_interval": "30s"}
    return re.sub(r"\$\{?(\w+)\}?", lambda m: subs[m.group(1)], expr)


def test_every_dashboard_query_evaluates(prometheus: Prometheus, live_service, streamed) -> None:
    """Each panel query is valid PromQL on the live Prometheus, and returns data whenever all the
    series it selects exist in the service's exposition (a panel on never-incremented error counters
    may legitimately be empty)."""
    prometheus.wait_for("sum(asasnn_batch_size_count)", lambda v: v > 0, timeout=15)
    _, present = parse_exposition(live_service.metrics_text())
    dash = json.loads(DASHBOARD.read_text())
    failures, checked = [], 0
    for p in dash["panels"]:
        for t in p.get("targets", []):
            q = grafana_to_promql(t["expr"], "default", "vanilla")
            try:
                result = prometheus.query(q)
            except AssertionError as e:
                failures.append(f"{p['title']}: {q}: {e}")
                continue
            checked += 1
            if all(n in present for n in metric_names(t["expr"])) and not result:
                failures.append(f"{p['title']}: {q}: no data although every series exists")
    assert checked >= 40
    assert not failures, "\n".join(failures)
