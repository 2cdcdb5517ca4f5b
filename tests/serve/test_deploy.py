"""``deploy/serve``: the Kubernetes manifests validated against the Kubernetes 1.37 schemas
(kubernetes-validate, offline, strict), and the wiring a typo would break: probes, ports, the
keys Secret, the settings the ConfigMap sets, the Dockerfile's user and volumes, compose."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from feddx.serve.settings import ServeSettings, environment_settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "serve"
K8S = DEPLOY / "k8s"
K8S_VERSION = "1.37.0"


def docs() -> list[dict[str, Any]]:
    return [
        d
        for p in sorted(K8S.glob("*.yaml"))
        if p.name != "kustomization.yaml"
        for d in yaml.safe_load_all(p.read_text())
        if d
    ]


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    [found] = [d for d in docs() if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    return found


@pytest.mark.parametrize("doc", docs(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_manifest_is_valid_kubernetes(doc: dict[str, Any]) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert doc["metadata"].get("namespace", "feddx-serve") == "feddx-serve"


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == sorted(
        p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"
    )


def test_deployment_probes_ports_and_secret_wiring() -> None:
    dep = one("Deployment")
    pod = dep["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["ports"][0] == {"name": "http", "containerPort": 8000, "protocol": "TCP"}
    assert (
        pod["securityContext"]["runAsNonRoot"] is True
        and c["securityContext"]["readOnlyRootFilesystem"]
    )
    env = {e["name"]: e.get("value") for e in c["env"]}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    init_mounts = {m["name"] for i in pod["initContainers"] for m in i["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    secret = one("Secret", "feddx-serve-keys")
    assert volumes["keys"]["secret"]["secretName"] == secret["metadata"]["name"]
    assert env["FEDDX_SERVE_KEYS_FILE"] == f"{mounts['keys']}/{next(iter(secret['stringData']))}"
    assert env["FEDDX_SERVE_AUDIT_LOG"].startswith(mounts["audit"] + "/$(POD_NAME)")
    [key_ref] = [
        e["valueFrom"]["secretKeyRef"] for e in c["env"] if e["name"] == "FEDDX_HISTORY_KEY"
    ]
    assert key_ref["key"] in one("Secret", key_ref["name"])["stringData"]
    claims = {d["metadata"]["name"] for d in docs() if d["kind"] == "PersistentVolumeClaim"}
    job = one("Job")["spec"]["template"]["spec"]
    assert {
        v["persistentVolumeClaim"]["claimName"]
        for v in [*volumes.values(), *job["volumes"]]
        if "persistentVolumeClaim" in v
    } == claims
    assert set(mounts) | init_mounts == set(volumes)
    svc = one("Service")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    hpa = one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": dep["metadata"]["name"],
    }
    assert [r["configMapRef"]["name"] for r in c["envFrom"]] == [
        one("ConfigMap")["metadata"]["name"]
    ]


def test_configmap_and_env_are_valid_service_settings(tmp_path: Path) -> None:
    cm = one("ConfigMap")["data"]
    [c] = one("Deployment")["spec"]["template"]["spec"]["containers"]
    env = {
        **cm,
        **{
            e["name"]: e["value"]
            for e in c["env"]
            if "value" in e and e["name"].startswith("FEDDX_SERVE_")
        },
    }
    env["FEDDX_SERVE_AUDIT_LOG"] = env["FEDDX_SERVE_AUDIT_LOG"].replace("$(POD_NAME)", "pod-0")
    settings = ServeSettings.from_mapping(environment_settings(env))
    assert settings.scheduler == "batched" and settings.adapter_cache == 8
    assert str(settings.keys_file) == "/etc/feddx/keys/keys.json"
    assert str(settings.audit_log) == "/var/log/feddx/pod-0.jsonl"
    keys = yaml.safe_load(one("Secret", "feddx-serve-keys")["stringData"]["keys.json"])
    assert keys == {"format": 1, "keys": [], "ehrs": []}


def test_dockerfile_is_cpu_non_root_with_volumes() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    torch = next(p for p in pins if p.startswith("torch=="))
    assert f'"{torch}"' in text and "download.pytorch.org/whl/cpu" in text
    assert re.search(r"^USER 10001:10001$", text, re.M)
    [volumes] = re.findall(r"^VOLUME (\[.*\])$", text, re.M)
    assert set(yaml.safe_load(volumes)) >= {"/var/cache/feddx", "/var/lib/feddx/registry"}
    assert re.search(r"^FROM python:3\.11\.\d+-slim-bookworm", text, re.M)
    assert 'ENTRYPOINT ["feddx", "serve", "--host", "0.0.0.0", "--port", "8000"]' in text
    envs = dict(re.findall(r"(FEDDX_SERVE_[A-Z_]+)=(\S+)", text))
    ServeSettings.from_mapping(environment_settings(envs))


def test_compose_runs_the_image_with_its_volumes_and_secret() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    svc = compose["services"]["serve"]
    assert svc["build"]["dockerfile"] == "deploy/serve/Dockerfile"
    assert svc["ports"] == ["127.0.0.1:8000:8000"] and svc["read_only"] is True
    assert svc["environment"]["FEDDX_SERVE_KEYS_FILE"] == "/run/secrets/feddx_keys"
    mounted = {v.split(":")[1] for v in svc["volumes"]}
    assert {"/var/cache/feddx", "/var/lib/feddx/registry"} <= mounted
    assert set(compose["volumes"]) == {v.split(":")[0] for v in svc["volumes"]}
    ServeSettings.from_mapping(
        environment_settings({k: str(v) for k, v in svc["environment"].items()})
    )


def test_the_registry_has_one_writer_and_pods_read_their_own_copy() -> None:
    """SQLite's locking does not hold over network filesystems: only the registration Job
    (parallelism 1) mounts the registry volume writable; the service pods mount it read-only,
    copy it to an emptyDir at start and point FEDDX_SERVE_REGISTRY at the copy."""
    pod = one("Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    [source] = [
        n
        for n, v in volumes.items()
        if "persistentVolumeClaim" in v
        and v["persistentVolumeClaim"]["claimName"] == "feddx-registry"
    ]
    assert volumes[source]["persistentVolumeClaim"]["readOnly"] is True
    every_mount = [m for c in pod["initContainers"] + pod["containers"] for m in c["volumeMounts"]]
    assert all(m.get("readOnly") is True for m in every_mount if m["name"] == source)
    [serve] = pod["containers"]
    env = {e["name"]: e.get("value") for e in serve["env"]}
    [local] = [m for m in serve["volumeMounts"] if m["mountPath"] == env["FEDDX_SERVE_REGISTRY"]]
    assert "emptyDir" in volumes[local["name"]]
    [copy] = pod["initContainers"]
    [src] = [m["mountPath"] for m in copy["volumeMounts"] if m["name"] == source]
    assert f"cp -a {src}/. {env['FEDDX_SERVE_REGISTRY']}/" in " ".join(copy["command"])
    job = one("Job")
    spec = job["spec"]["template"]["spec"]
    assert job["spec"]["parallelism"] == 1 and spec["restartPolicy"] == "Never"
    [writer] = [
        v["name"]
        for v in spec["volumes"]
        if v.get("persistentVolumeClaim", {}).get("claimName") == "feddx-registry"
    ]
    [mount] = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == writer]
    assert not mount.get("readOnly") and "--registry" in spec["containers"][0]["args"]
    pvc = one("PersistentVolumeClaim", "feddx-registry")
    assert "ReadWriteMany" not in pvc["spec"]["accessModes"]


def test_replicas_share_a_store() -> None:
    """More than one replica (the autoscaler's minimum) needs the shared store, and the
    NetworkPolicy lets the pods reach it (and nothing else but DNS)."""
    assert one("HorizontalPodAutoscaler")["spec"]["minReplicas"] > 1
    url = one("ConfigMap")["data"]["FEDDX_SERVE_SHARED_STORE"]
    assert ServeSettings(shared_store=url).shared_store == url
    ports = {p["port"] for rule in one("NetworkPolicy")["spec"]["egress"] for p in rule["ports"]}
    assert ports == {6379, 53}
