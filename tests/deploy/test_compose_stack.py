"""docker-compose.yml (+ docker-compose.gpu.yml): valid for Debian's docker-compose, and wired together.

``docker-compose config`` (Debian package ``docker-compose``, installed when missing) validates the
files against the Compose schema and resolves the override; the resolved YAML is then checked for what
the stack promises: health checks, named volumes, Prometheus scraping the service, Grafana provisioned
with the data source and the dashboard, anonymous read-only access, the GPU variant's device and
execution provider.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import DEPLOY, REPO, require_tool

BASE = REPO / "docker-compose.yml"
GPU = REPO / "docker-compose.gpu.yml"


def compose_config(*files: Path) -> dict[str, Any]:
    exe = require_tool("docker-compose", "docker-compose")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASASNN_", "GRAFANA_", "COMPOSE_"))}
    args = [exe, "--project-directory", str(REPO)]
    for f in files:
        args += ["-f", str(f)]
    r = subprocess.run([*args, "config"], check=False, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, f"docker-compose config {[f.name for f in files]} failed:\n{r.stderr}"
    return yaml.safe_load(r.stdout)


@pytest.fixture(scope="module")
def cpu() -> dict[str, Any]:
    return compose_config(BASE)


@pytest.fixture(scope="module")
def gpu() -> dict[str, Any]:
    return compose_config(BASE, GPU)


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of a resolved service's volumes (short or long syntax)."""
    out = {}
    for v in service.get("volumes", []):
        if isinstance(v, str):
            src, dst = v.split(":")[:2]
        else:
            src, dst = v["source"], v["target"]
        out[dst] = src
    return out


def test_services_have_health_checks(cpu: dict[str, Any]) -> None:
    assert set(cpu["services"]) == {"asasnn", "prometheus", "grafana"}
    for name, svc in cpu["services"].items():
        hc = svc.get("healthcheck")
        assert hc and hc["test"][0] in {"CMD", "CMD-SHELL"}, f"{name} has no health check"
    assert "/readyz" in " ".join(cpu["services"]["asasnn"]["healthcheck"]["test"])


def test_service_image_and_command(cpu: dict[str, Any]) -> None:
    svc = cpu["services"]["asasnn"]
    assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (Path(svc["build"]["context"]) / svc["build"]["dockerfile"]).is_file()
    assert svc["command"] == ["asasnn", "serve", "--host", "0.0.0.0", "--port", "8000"]
    ports = json.dumps(svc["ports"])
    assert "8000:8000" in ports or '"target": 8000' in ports
    assert "127.0.0.1" in ports, "ports bind to loopback unless ASASNN_BIND says otherwise"


def test_env_names_are_settings(cpu: dict[str, Any], gpu: dict[str, Any]) -> None:
    from service.config import Settings

    for cfg in (cpu, gpu):
        for name in cfg["services"]["asasnn"]["environment"]:
            if name.startswith("ASASNN_"):
                assert name[len("ASASNN_") :].lower() in Settings.model_fields, f"{name} is not a setting"


def test_named_volumes_and_bind_mounts(cpu: dict[str, Any]) -> None:
    assert {"prometheus-data", "grafana-data"} <= set(cpu["volumes"])
    prom, graf = cpu["services"]["prometheus"], cpu["services"]["grafana"]
    assert mounts(prom)["/prometheus"] == "prometheus-data"
    assert mounts(graf)["/var/lib/grafana"] == "grafana-data"
    for svc in (prom, graf):
        for target, source in mounts(svc).items():
            if source.startswith("/"):
                assert Path(source).exists(), f"bind mount {source} -> {target} does not exist"
                assert Path(source).is_relative_to(DEPLOY)


def test_prometheus_scrapes_the_service(cpu: dict[str, Any]) -> None:
    prom = cpu["services"]["prometheus"]
    conf_dir = Path(mounts(prom)["/etc/prometheus"])
    conf = yaml.safe_load((conf_dir / "prometheus.yml").read_text())
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    (job,) = [j for j in conf["scrape_configs"] if j["job_name"] == "asasnn"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["asasnn:8000"], "target = compose service name and the service's port"
    for f in conf["rule_files"]:
        assert (conf_dir / f).is_file()


def test_grafana_is_provisioned(cpu: dict[str, Any]) -> None:
    graf = cpu["services"]["grafana"]
    env, m = graf["environment"], mounts(graf)
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true" and env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    prov = Path(m["/etc/grafana/provisioning"])
    (ds,) = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090" and ds["isDefault"]
    (provider,) = yaml.safe_load((prov / "dashboards" / "asasnn.yml").read_text())["providers"]
    dash_dir = provider["options"]["path"]
    assert dash_dir in m, f"dashboards path {dash_dir} is not mounted"
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dash_dir + "/")
    assert (Path(m[dash_dir]) / Path(home).name).is_file()
    dashboard = json.loads((Path(m[dash_dir]) / Path(home).name).read_text())
    ds_var = next(v for v in dashboard["templating"]["list"] if v["type"] == "datasource")
    assert ds_var["current"]["value"] == ds["uid"], (
        "the dashboard's default data source is the provisioned one"
    )
    assert graf["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_gpu_override(gpu: dict[str, Any]) -> None:
    svc = gpu["services"]["asasnn"]
    assert svc["build"]["dockerfile"] == "deploy/Dockerfile.cuda"
    (dev,) = svc["deploy"]["resources"]["reservations"]["devices"]
    assert dev["driver"] == "nvidia" and "gpu" in dev["capabilities"]
    assert svc["environment"]["ASASNN_DEVICE"] == "cuda"
    assert svc["environment"]["ASASNN_BACKEND"] == "onnx"
    assert svc["command"] == ["asasnn", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert set(gpu["services"]) == {"asasnn", "prometheus", "grafana", "dcgm-exporter"}


def test_gpu_stack_runs_the_dcgm_exporter(cpu: dict[str, Any], gpu: dict[str, Any]) -> None:
    """NVIDIA's DCGM exporter, pinned, on the GPU the service uses, scraped by the stack's Prometheus
    (started on prometheus.gpu.yml: prometheus.yml plus the exporter's job, nothing else changed)."""
    dcgm, svc = gpu["services"]["dcgm-exporter"], gpu["services"]["asasnn"]
    name, _, tag = dcgm["image"].partition(":")
    assert name == "nvcr.io/nvidia/k8s/dcgm-exporter" and re.fullmatch(
        r"\d+\.\d+\.\d+-\d+\.\d+\.\d+-[a-z0-9.]+", tag
    )
    (dev,) = dcgm["deploy"]["resources"]["reservations"]["devices"]
    (served,) = svc["deploy"]["resources"]["reservations"]["devices"]
    assert dev["driver"] == "nvidia" and "gpu" in dev["capabilities"]
    assert dev["device_ids"] == served["device_ids"], "the exporter watches the GPU the service runs on"
    assert "SYS_ADMIN" in dcgm.get("cap_add", [])
    port = int(dcgm["environment"]["DCGM_EXPORTER_LISTEN"].rpartition(":")[2])
    assert "dcgm-exporter" not in cpu["services"]

    prom_cpu, prom_gpu = cpu["services"]["prometheus"], gpu["services"]["prometheus"]
    conf_dir = Path(mounts(prom_gpu)["/etc/prometheus"])
    (flag,) = [a for a in prom_gpu["command"] if a.startswith("--config.file=")]
    conf_file = conf_dir / Path(flag.partition("=")[2]).relative_to("/etc/prometheus")
    assert conf_file.name == "prometheus.gpu.yml"
    assert [a for a in prom_gpu["command"] if a != flag] == [
        a for a in prom_cpu["command"] if not a.startswith("--config.file=")
    ], "only the config file differs"
    conf = yaml.safe_load(conf_file.read_text())
    base = yaml.safe_load((conf_dir / "prometheus.yml").read_text())
    (job,) = [j for j in conf["scrape_configs"] if j["job_name"] == "dcgm-exporter"]
    assert [t for sc in job["static_configs"] for t in sc["targets"]] == [f"dcgm-exporter:{port}"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    conf["scrape_configs"].remove(job)
    assert conf == base, "prometheus.gpu.yml = prometheus.yml + the dcgm-exporter job"
    promtool = require_tool("promtool", "prometheus")
    r = subprocess.run(
        [promtool, "check", "config", str(conf_file)], check=False, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_compose_config_rejects_a_broken_file(tmp_path: Path) -> None:
    """docker-compose really validates: a misspelt key fails."""
    broken = yaml.safe_load(BASE.read_text())
    broken["services"]["asasnn"]["healthcheck"]["intervall"] = "5s"
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    exe = require_tool("docker-compose", "docker-compose")
    r = subprocess.run(
        [exe, "-f", str(path), "config", "-q"], check=False, capture_output=True, text=True, timeout=120
    )
    assert r.returncode != 0 and "intervall" in r.stderr
