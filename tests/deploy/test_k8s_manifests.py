"""deploy/k8s: every manifest validates against its schema, and the pieces fit each other and the service.

Kubernetes' own kinds are checked by ``kubernetes-validate`` (strict: unknown fields are errors) with
the schemas it ships; the custom resources (ServiceMonitor, PrometheusRule, ScaledObject, HTTPRoute)
and the Kustomizations by the JSON schemas vendored in deploy/k8s/schemas. Nothing is downloaded.
The overlays are rendered the way kustomize does for these files (strategic merge by ``name`` for
built-in kinds, JSON merge patch for custom resources) and the rendered objects are validated too.
"""

from __future__ import annotations

import copy
import json
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


# ---- kustomize, the parts these manifests use --------------------------------------------------------
def strategic_merge(base: Any, patch: Any) -> Any:
    """Maps merge recursively; lists of maps with a ``name`` merge item by item on it; other lists are
    replaced (Kubernetes' strategic merge for the fields our patches touch)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = strategic_merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and patch
        and all(isinstance(x, dict) and "name" in x for x in base + patch)
    ):
        out = [copy.deepcopy(x) for x in base]
        index = {x["name"]: i for i, x in enumerate(out)}
        for item in patch:
            if item["name"] in index:
                out[index[item["name"]]] = strategic_merge(out[index[item["name"]]], item)
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def json_merge(base: Any, patch: Any) -> Any:
    """RFC 7386 merge patch (what kustomize applies to custom resources it has no schema for)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(base) if isinstance(base, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = json_merge(out.get(k), v)
    return out


def render(directory: Path) -> list[dict[str, Any]]:
    kz = yaml.safe_load((directory / "kustomization.yaml").read_text())
    validate_kustomization(kz, directory)
    docs: list[dict[str, Any]] = []
    for res in kz.get("resources", []):
        target = directory / res
        docs += render(target) if target.is_dir() else load_docs(target)
    for patch in kz.get("patches", []):
        for p in load_docs(directory / patch["path"]):
            matches = [
                d for d in docs if d["kind"] == p["kind"] and d["metadata"]["name"] == p["metadata"]["name"]
            ]
            assert len(matches) == 1, f"patch {patch['path']} matches {len(matches)} resources"
            merge = strategic_merge if p["apiVersion"] in BUILTIN_GROUPS else json_merge
            docs[docs.index(matches[0])] = merge(matches[0], p)
    for img in kz.get("images", []):
        for d in docs:
            for c in pod_spec(d).get("containers", []) if d["kind"] == "Deployment" else []:
                name = c["image"].split(":")[0]
                if name == img["name"]:
                    c["image"] = f"{img.get('newName', name)}:{img['newTag']}"
    if "namespace" in kz:
        for d in docs:
            if d["kind"] != "Namespace":
                d.setdefault("metadata", {})["namespace"] = kz["namespace"]
    return docs


def validate_kustomization(kz: dict[str, Any], directory: Path) -> None:
    schema = json.loads((SCHEMAS / "kustomization-kustomize-v1beta1.json").read_text())
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(kz))
    assert not errors, f"{directory}/kustomization.yaml: {[e.message for e in errors]}"
    for ref in [*kz.get("resources", []), *(p["path"] for p in kz.get("patches", []))]:
        assert (directory / ref).exists(), f"{directory}/kustomization.yaml names missing {ref}"


def pod_spec(d: dict[str, Any]) -> dict[str, Any]:
    return d["spec"]["template"]["spec"]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
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
    for doc in load_docs(path):
        if doc.get("kind") == "Kustomization":
            validate_kustomization(doc, path.parent)
        elif path.parent.name == "gpu":
            continue  # partial patches: validated after rendering (test_rendered_overlay_validates)
        else:
            validate(doc, str(path.relative_to(REPO)))


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


def test_rendered_overlay_validates(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = rendered
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            "Namespace",
            "Deployment",
            "Service",
            "Ingress",
            "PodDisruptionBudget",
            "ServiceMonitor",
            "PrometheusRule",
            "ScaledObject",
        ]
    ), kinds
    for d in docs:
        validate(d, f"rendered {name}")
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == "asasnn"


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
    assert spec["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + 60, (
        "room to drain after the preStop delay"
    )
    strategy = one(docs, "Deployment")["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == DOCKERFILE_UID
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"]), "read-only root needs a writable /tmp"


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


def test_servicemonitor_scrapes_the_service(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    sm, svc = one(docs, "ServiceMonitor"), one(docs, "Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] in {p["name"] for p in svc["spec"]["ports"]} and ep["path"] == "/metrics"
    # job label = the Service's value of jobLabel, which the alert rules and the dashboard expect
    assert svc["metadata"]["labels"][sm["spec"]["jobLabel"]] == "asasnn"


def test_autoscaling_targets_the_deployment(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    so, dep = one(docs, "ScaledObject"), one(docs, "Deployment")
    assert so["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
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


def test_prometheusrule_matches_alerts_yml() -> None:
    rule = one(load_docs(K8S / "base" / "prometheusrule.yaml"), "PrometheusRule")
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"], "run python deploy/k8s/sync_rules.py"
    r = subprocess.run(
        [sys.executable, str(K8S / "sync_rules.py"), "--check"], check=False, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
