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


def one(kind: str) -> dict[str, Any]:
    [found] = [d for d in docs() if d["kind"] == kind]
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
    volumes = {v["name"]: v for v in pod["volumes"]}
    secret = one("Secret")
    assert volumes["keys"]["secret"]["secretName"] == secret["metadata"]["name"]
    assert env["FEDDX_SERVE_KEYS_FILE"] == f"{mounts['keys']}/{next(iter(secret['stringData']))}"
    assert env["FEDDX_SERVE_AUDIT_LOG"].startswith(mounts["audit"] + "/$(POD_NAME)")
    claims = {d["metadata"]["name"] for d in docs() if d["kind"] == "PersistentVolumeClaim"}
    assert {
        v["persistentVolumeClaim"]["claimName"]
        for v in volumes.values()
        if "persistentVolumeClaim" in v
    } == claims
    assert set(mounts) == set(volumes)
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
    keys = yaml.safe_load(one("Secret")["stringData"]["keys.json"])
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
