"""deploy/k8s: every manifest validates against its schema, and the pieces fit each other and the service.

Kubernetes' own kinds are checked by ``kubernetes-validate`` (strict: unknown fields are errors) with
the schemas it ships; the custom resources (ServiceMonitor, PrometheusRule, ScaledObject, HTTPRoute)
and the Kustomizations by the JSON schemas vendored in deploy/k8s/schemas. Nothing is downloaded.
The overlays are rendered by the real kustomize (``kubectl kustomize``; the tests that need a rendering
skip where kubectl is missing) and every rendered object is validated too.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import DEPLOY, REPO

K8S = DEPLOY / "k8s"
SCHEMAS = K8S / "schemas"
K8S_VERSIONS = ("1.28.0", "1.37.0")  # oldest we promise, newest kubernetes-validate knows
BUILTIN_GROUPS = {"v1", "apps/v1", "networking.k8s.io/v1", "policy/v1", "autoscaling/v2"}
DOCKERFILE_UID = 10001

kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is part of the dev extra")
jsonschema = pytest.importorskip("jsonschema")


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if "schemas" not in p.parts)


def crd_schema(doc: dict[str, Any]) -> dict[str, Any]:
    group = doc["apiVersion"].split("/")[0].split(".")[0]
    version = doc["apiVersion"].split("/")[-1]
    path = SCHEMAS / f"{doc['kind'].lower()}-{group}-{version}.json"
    assert path.is_file(), f"no vendored schema {path.name} for {doc['kind']} {doc['apiVersion']}"
    return json.loads(path.read_text())


def validate(doc: dict[str, Any], where: str) -> None:
    if doc["apiVersion"] in BUILTIN_GROUPS:
        for version in K8S_VERSIONS:
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                pytest.fail(
                    f"{where}: {doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes {version}: {path}: {e.message}"
                )
    else:
        errors = sorted(
            jsonschema.Draft202012Validator(crd_schema(doc)).iter_errors(doc), key=lambda e: list(e.path)
        )
        assert not errors, f"{where}: " + "; ".join(
            f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors
        )


# ---- rendering: the real kustomize -------------------------------------------------------------------
KUBECTL = shutil.which("kubectl")


@functools.cache
def _kustomize(directory: str) -> str:
    r = subprocess.run(
        [KUBECTL or "kubectl", "kustomize", directory],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, f"kubectl kustomize {directory} failed:\n{r.stderr}"
    return r.stdout


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl apply -k`` would send: rendered by ``kubectl kustomize`` (kustomize built into
    kubectl), so patches, images, namespace and the ``labels`` transformer behave exactly as in a cluster."""
    if KUBECTL is None:
        pytest.skip("kubectl not found: the overlays are rendered with `kubectl kustomize` (kubectl >= 1.14)")
    kz = yaml.safe_load((directory / "kustomization.yaml").read_text())
    validate_kustomization(kz, directory)
    return [d for d in yaml.safe_load_all(_kustomize(str(directory))) if d]  # fresh objects every call


def patch_files(directory: Path) -> set[Path]:
    """The files a kustomization applies as patches (partial objects, validated only once rendered)."""
    kz = yaml.safe_load((directory / "kustomization.yaml").read_text())
    return {(directory / p["path"]).resolve() for p in kz.get("patches", []) if "path" in p}


def validate_kustomization(kz: dict[str, Any], directory: Path) -> None:
    schema = json.loads((SCHEMAS / "kustomization-kustomize-v1beta1.json").read_text())
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(kz))
    assert not errors, f"{directory}/kustomization.yaml: {[e.message for e in errors]}"
    for ref in [*kz.get("resources", []), *(p["path"] for p in kz.get("patches", []))]:
        assert (directory / ref).exists(), f"{directory}/kustomization.yaml names missing {ref}"


def pod_spec(d: dict[str, Any]) -> dict[str, Any]:
    return d["spec"]["template"]["spec"]


def one(docs: list[dict[str, Any]], kind: str, name: str = "asasnn") -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = pod_spec(one(docs, "Deployment"))["containers"]
    return c


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


@pytest.fixture(scope="module", params=["base", "gpu"])
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(K8S / request.param)


# ---- tests --------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_file_validates(path: Path) -> None:
    patches = patch_files(path.parent) if (path.parent / "kustomization.yaml").is_file() else set()
    for doc in load_docs(path):
        if doc.get("kind") == "Kustomization":
            validate_kustomization(doc, path.parent)
        elif path.resolve() in patches:
            continue  # partial objects: validated after rendering (test_rendered_overlay_validates)
        else:
            validate(doc, str(path.relative_to(REPO)))


def test_patches_are_the_only_partial_files() -> None:
    """Only the GPU overlay's two patches skip the per-file validation (the exporter is a whole object)."""
    assert {p.name for p in patch_files(K8S / "gpu")} == {"deployment-gpu.yaml", "scaledobject-gpu.yaml"}
    assert patch_files(K8S / "base") == set()


def test_the_validator_rejects_a_broken_manifest() -> None:
    """The checks are not vacuous: a misspelt field and a wrong type are caught, built-in and CRD alike."""
    dep = copy.deepcopy(one(load_docs(K8S / "base" / "deployment.yaml"), "Deployment"))
    pod_spec(dep)["containers"][0]["readinessProbes"] = pod_spec(dep)["containers"][0].pop("readinessProbe")
    with pytest.raises(BaseException, match="readinessProbes|not allowed|Additional properties"):
        validate(dep, "broken")
    so = copy.deepcopy(load_docs(K8S / "base" / "scaledobject.yaml")[0])
    so["spec"]["triggers"][0]["metadata"].pop("query")
    with pytest.raises(AssertionError, match="query"):
        validate(so, "broken")


BASE_OBJECTS = [
    ("Namespace", "asasnn"),
    ("Deployment", "asasnn"),
    ("Service", "asasnn"),
    ("Ingress", "asasnn"),
    ("PodDisruptionBudget", "asasnn"),
    ("ServiceMonitor", "asasnn"),
    ("PrometheusRule", "asasnn"),
    ("ScaledObject", "asasnn"),
]
DCGM_OBJECTS = [
    ("DaemonSet", "dcgm-exporter"),
    ("Service", "dcgm-exporter"),
    ("ServiceMonitor", "dcgm-exporter"),
]


def test_rendered_overlay_validates(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = rendered
    objects = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert objects == sorted(BASE_OBJECTS + (DCGM_OBJECTS if name == "gpu" else [])), objects
    for d in docs:
        validate(d, f"rendered {name}")
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == "asasnn"


def test_labels_transformer(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    """kustomize's ``labels`` (includeSelectors: false) marks every object, and never a selector (the
    selectors of a live Deployment are immutable)."""
    _, docs = rendered
    for d in docs:
        assert d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "asasnn-stream", d["metadata"]
    for d in docs:
        selector = d["spec"].get("selector", {}) if d["kind"] != "Namespace" else {}
        labels = selector.get("matchLabels", selector) if isinstance(selector, dict) else {}
        assert "app.kubernetes.io/part-of" not in labels, f"{d['kind']}/{d['metadata']['name']}: {selector}"


def test_probes_and_ports_point_at_the_service(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    dep, svc = one(docs, "Deployment"), one(docs, "Service")
    c = container(docs)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8000}
    assert c["args"] == ["asasnn", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] in ports
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= set(ports)


def test_routes_exist_in_the_app() -> None:
    """The paths the manifests probe and scrape, and the stream route, are routes of the real app
    (matched the way Starlette dispatches a request, whatever the router nesting)."""
    from starlette.routing import Match

    from service.config import Settings
    from service.main import create_app

    app = create_app(Settings())

    def routed(path: str, kind: str = "http") -> bool:
        scope = {
            "type": kind,
            "path": path,
            "method": "GET",
            "root_path": "",
            "headers": [],
            "query_string": b"",
        }
        return any(r.matches(scope)[0] == Match.FULL for r in app.router.routes)

    docs = load_docs(K8S / "base" / "deployment.yaml") + load_docs(K8S / "base" / "servicemonitor.yaml")
    c = container(docs)
    probed = {c[p]["httpGet"]["path"] for p in ("readinessProbe", "livenessProbe", "startupProbe")}
    scraped = {ep["path"] for ep in one(docs, "ServiceMonitor")["spec"]["endpoints"]}
    for path in probed | scraped:
        assert routed(path), f"{path} is not a route of the app"
    assert routed("/ws/infer", "websocket") and not routed("/no/such/route")


def test_env_names_are_settings(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    """Every ASASNN_* variable the manifests set is a field of service.config.Settings."""
    from service.config import Settings

    fields = set(Settings.model_fields)
    for name in env_of(container(rendered[1])):
        if name.startswith("ASASNN_"):
            assert name[len("ASASNN_") :].lower() in fields, f"{name} is not a setting"


def test_drain_budget_and_security(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    spec = pod_spec(one(docs, "Deployment"))
    c = container(docs)
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    # preStop, then the drain (drain_timeout_s for streams to end, 5 s to send snapshots and close),
    # then uvicorn's graceful shutdown (drain_timeout_s again), all before the kubelet's SIGKILL
    drain_s = float(env_of(c)["ASASNN_DRAIN_TIMEOUT_S"])
    budget = int(pre_stop[1]) + drain_s + 5 + drain_s
    assert spec["terminationGracePeriodSeconds"] >= budget + 15, (
        f"grace period {spec['terminationGracePeriodSeconds']} s leaves no margin over {budget} s of drain"
    )
    strategy = one(docs, "Deployment")["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == DOCKERFILE_UID
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"]), "read-only root needs a writable /tmp"


def test_replicas_share_the_snapshot_secret(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    """Every replica reads the snapshot HMAC key from one Secret, so that a stream drained by one replica
    resumes on another (a per-process key would refuse it as tampered)."""
    env = env_of(container(rendered[1]))
    ref = env["ASASNN_SNAPSHOT_SECRET"]["secretKeyRef"]
    assert ref == {"name": "asasnn-snapshot", "key": "secret"}, ref
    assert "asasnn-snapshot" in (REPO / "docs" / "deploy.md").read_text(), "docs say how to create it"


def test_ingress_is_websocket_ready(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    ing, svc = one(docs, "Ingress"), one(docs, "Service")
    ann = ing["metadata"]["annotations"]
    assert int(ann["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert int(ann["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600
    (rule,) = ing["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    backend = path["backend"]["service"]
    assert backend["name"] == svc["metadata"]["name"]
    assert backend["port"]["name"] in {p["name"] for p in svc["spec"]["ports"]}


def test_gateway_route_alternative() -> None:
    (route,) = load_docs(K8S / "gateway" / "httproute.yaml")
    validate(route, "gateway/httproute.yaml")
    svc = one(load_docs(K8S / "base" / "service.yaml"), "Service")
    (rule,) = route["spec"]["rules"]
    assert rule["timeouts"]["request"] == "0s"
    assert {(b["name"], b["port"]) for b in rule["backendRefs"]} == {
        (svc["metadata"]["name"], svc["spec"]["ports"][0]["port"])
    }


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def test_servicemonitor_scrapes_the_service(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    sm, svc = one(docs, "ServiceMonitor"), one(docs, "Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    scraped = [
        d
        for d in docs
        if d["kind"] == "Service" and selects(sm["spec"]["selector"]["matchLabels"], d["metadata"]["labels"])
    ]
    assert scraped == [svc], "the service's ServiceMonitor selects its Service only"
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] in {p["name"] for p in svc["spec"]["ports"]} and ep["path"] == "/metrics"
    # job label = the Service's value of jobLabel, which the alert rules and the dashboard expect
    assert svc["metadata"]["labels"][sm["spec"]["jobLabel"]] == "asasnn"


def test_keda_owns_the_replica_count(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    """A Deployment that a ScaledObject scales sets no ``replicas``: every ``kubectl apply`` would reset
    the count KEDA chose (and scale a busy fleet down to it)."""
    _, docs = rendered
    scaled = {so["spec"]["scaleTargetRef"]["name"] for so in docs if so["kind"] == "ScaledObject"}
    assert scaled, "no ScaledObject"
    for name in scaled:
        dep = one(docs, "Deployment", name)
        assert "replicas" not in dep["spec"], f"Deployment/{name} sets replicas although KEDA scales it"
    # and the source files, patches included, do not bring it back
    for path in manifest_files():
        for doc in load_docs(path):
            if doc.get("kind") == "Deployment" and doc["metadata"]["name"] in scaled:
                assert "replicas" not in doc.get("spec", {}), f"{path.relative_to(REPO)} sets replicas"


def test_autoscaling_targets_the_deployment(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    so, dep = one(docs, "ScaledObject"), one(docs, "Deployment")
    assert so["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert so["spec"]["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    assert 1 <= so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"]
    queries = {t["metadata"]["query"] for t in so["spec"]["triggers"] if t["type"] == "prometheus"}
    assert any("asasnn_active_sessions" in q for q in queries) and any(
        "asasnn_queue_depth" in q for q in queries
    )
    for t in so["spec"]["triggers"]:
        assert f'namespace="{dep["metadata"]["namespace"]}"' in t["metadata"]["query"]
    down = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= 300 and down["policies"] == [
        {"type": "Pods", "value": 1, "periodSeconds": 300}
    ]
    per_replica = {t["name"]: float(t["metadata"]["threshold"]) for t in so["spec"]["triggers"]}
    max_sessions = int(env_of(container(docs))["ASASNN_MAX_SESSIONS"])
    assert per_replica["active-streams"] < max_sessions, "scale out before replicas refuse streams"


def test_gpu_variant_requests_the_gpu() -> None:
    docs = render(K8S / "gpu")
    c = container(docs)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1" == c["resources"]["requests"]["nvidia.com/gpu"]
    env = env_of(c)
    assert env["ASASNN_DEVICE"] == "cuda" and env["ASASNN_BACKEND"] == "onnx"
    assert c["image"].endswith(":cuda")
    assert "ASASNN_API_KEYS" in env, "the patch merges env by name and keeps the base's variables"
    tol = pod_spec(one(docs, "Deployment"))["tolerations"]
    assert any(t["key"] == "nvidia.com/gpu" for t in tol)
    base_c = container(render(K8S / "base"))
    assert "nvidia.com/gpu" not in base_c["resources"].get("limits", {})
    assert base_c["image"].endswith(":cpu")


DCGM_IMAGE = "nvcr.io/nvidia/k8s/dcgm-exporter"


def dcgm_tag(image: str) -> str:
    """The tag of a DCGM exporter image, which must be pinned: ``<DCGM x.y.z>-<exporter x.y.z>-<flavour>``."""
    name, _, tag = image.partition(":")
    assert name == DCGM_IMAGE, image
    assert re.fullmatch(r"\d+\.\d+\.\d+-\d+\.\d+\.\d+-[a-z0-9.]+", tag), f"{image}: pin a full version tag"
    return tag


def test_gpu_overlay_runs_the_dcgm_exporter() -> None:
    """NVIDIA's DCGM exporter on the GPU nodes, scraped by the Prometheus that scrapes the service."""
    docs = render(K8S / "gpu")
    ds, svc = one(docs, "DaemonSet", "dcgm-exporter"), one(docs, "Service", "dcgm-exporter")
    sm = one(docs, "ServiceMonitor", "dcgm-exporter")
    spec = pod_spec(ds)
    (c,) = spec["containers"]
    dcgm_tag(c["image"])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 9400}
    env = env_of(c)
    assert env["DCGM_EXPORTER_LISTEN"] == ":9400" and env["DCGM_EXPORTER_KUBERNETES"] == "true"
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "metrics"}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in spec["volumes"]}
    assert (
        vols[mounts["/var/lib/kubelet/pod-resources"]]["hostPath"]["path"] == "/var/lib/kubelet/pod-resources"
    )
    # on the nodes the GPU replicas run on, through their taint
    gpu_pods = pod_spec(one(docs, "Deployment"))
    assert spec["nodeSelector"] == gpu_pods["nodeSelector"]
    assert all(t in spec["tolerations"] for t in gpu_pods["tolerations"])
    # Service -> pods, ServiceMonitor -> Service, job label "dcgm-exporter", the same Prometheus
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    assert selects(ds["spec"]["selector"]["matchLabels"], pod_labels)
    assert selects(svc["spec"]["selector"], pod_labels)
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= set(ports)
    assert not selects(one(docs, "Service")["spec"]["selector"], pod_labels), (
        "asasnn's Service must not select it"
    )
    assert selects(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
    assert svc["metadata"]["labels"][sm["spec"]["jobLabel"]] == "dcgm-exporter"
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] in {p["name"] for p in svc["spec"]["ports"]} and ep["path"] == "/metrics"
    assert sm["metadata"]["labels"]["release"] == one(docs, "ServiceMonitor")["metadata"]["labels"]["release"]
    assert not [d for d in render(K8S / "base") if d["kind"] == "DaemonSet"], (
        "the CPU base has no GPU exporter"
    )


def test_dcgm_exporter_is_pinned_alike_in_compose_and_k8s() -> None:
    (ds,) = [d for d in load_docs(K8S / "gpu" / "dcgm-exporter.yaml") if d["kind"] == "DaemonSet"]
    compose = yaml.safe_load((REPO / "docker-compose.gpu.yml").read_text())
    k8s_image = pod_spec(ds)["containers"][0]["image"]
    assert compose["services"]["dcgm-exporter"]["image"] == k8s_image
    dcgm_tag(k8s_image)


def test_sync_rules_help_writes_nothing(tmp_path: Path) -> None:
    """``--help`` prints usage and exits 0 without touching the rules file; an unknown option is an error."""
    out = K8S / "base" / "prometheusrule.yaml"
    before = (out.stat().st_mtime_ns, out.read_bytes())
    for args, rc in ((["--help"], 0), (["-h"], 0), (["--chek"], 2)):
        r = subprocess.run(
            [sys.executable, str(K8S / "sync_rules.py"), *args], check=False, capture_output=True, text=True
        )
        assert r.returncode == rc, (args, r.stdout, r.stderr)
        assert "usage:" in r.stdout + r.stderr and "wrote" not in r.stdout
    assert (out.stat().st_mtime_ns, out.read_bytes()) == before, "sync_rules.py wrote the rules file"


def test_sync_rules_check_and_rewrite(tmp_path: Path) -> None:
    """On a copy of the tree: ``--check`` fails on a stale file without writing it; a plain run rewrites it."""
    (tmp_path / "k8s" / "base").mkdir(parents=True)
    (tmp_path / "prometheus").mkdir()
    shutil.copy(K8S / "sync_rules.py", tmp_path / "k8s")
    shutil.copy(DEPLOY / "prometheus" / "alerts.yml", tmp_path / "prometheus")
    out = tmp_path / "k8s" / "base" / "prometheusrule.yaml"
    out.write_text("stale\n")
    script = [sys.executable, str(tmp_path / "k8s" / "sync_rules.py")]
    r = subprocess.run([*script, "--check"], check=False, capture_output=True, text=True)
    assert r.returncode == 1 and "stale" in r.stderr and out.read_text() == "stale\n"
    assert subprocess.run(script, check=False, capture_output=True).returncode == 0
    assert out.read_text() == (K8S / "base" / "prometheusrule.yaml").read_text()
    assert subprocess.run([*script, "--check"], check=False).returncode == 0


def test_prometheusrule_matches_alerts_yml() -> None:
    rule = one(load_docs(K8S / "base" / "prometheusrule.yaml"), "PrometheusRule")
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"], "run python deploy/k8s/sync_rules.py"
    r = subprocess.run(
        [sys.executable, str(K8S / "sync_rules.py"), "--check"], check=False, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
