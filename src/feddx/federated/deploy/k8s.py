"""Kubernetes Secrets for a federation, made from a credentials folder (``feddx deploy certs``).

The manifests in ``deploy/k8s`` mount Secrets by these names and keys; generating them here
keeps the two in step (a test checks it) and spares operators hand-written base64:

* ``feddx-superlink-tls`` -- ``ca.pem``, ``superlink.pem``, ``superlink.key``: the SuperLink's TLS
  identity (and the CA its ServerApp executor verifies it with);
* ``feddx-superexec-auth`` -- ``superexec.secret``: shared by the SuperLink and its executor;
* ``feddx-node-<name>`` -- ``ca.pem``, ``node.key``, ``node.pub``: one per institution, to be
  applied in *that institution's* cluster only (its private key never leaves it);
* ConfigMap ``feddx-node-public-keys`` -- every ``<name>.pub``, read by the registration Job.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from feddx.federated.certs import CredentialsError, FederationCredentials

SUPERLINK_TLS_SECRET = "feddx-superlink-tls"
SUPEREXEC_SECRET = "feddx-superexec-auth"
PUBLIC_KEYS_CONFIGMAP = "feddx-node-public-keys"
NODE_SECRET_PREFIX = "feddx-node-"
PART_OF = {"app.kubernetes.io/part-of": "feddx"}


def node_secret_name(node: str) -> str:
    return f"{NODE_SECRET_PREFIX}{node}"


def _secret(name: str, namespace: str, files: dict[str, Path], component: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**PART_OF, "app.kubernetes.io/component": component},
        },
        "type": "Opaque",
        "data": {key: base64.b64encode(path.read_bytes()).decode() for key, path in files.items()},
    }


def k8s_objects(
    creds: FederationCredentials,
    *,
    namespace: str = "feddx",
    nodes: Sequence[str] | None = None,
    include_superlink: bool = True,
) -> list[dict[str, Any]]:
    """The Secret/ConfigMap objects for ``creds`` (``nodes``: a subset, e.g. one hospital's)."""
    names = list(creds.nodes) if nodes is None else [creds.node(n).name for n in nodes]
    objects: list[dict[str, Any]] = []
    if include_superlink:
        objects.append(
            _secret(
                SUPERLINK_TLS_SECRET,
                namespace,
                {
                    "ca.pem": creds.ca_cert,
                    "superlink.pem": creds.server_cert,
                    "superlink.key": creds.server_key,
                },
                "superlink",
            )
        )
        objects.append(
            _secret(
                SUPEREXEC_SECRET,
                namespace,
                {"superexec.secret": creds.superexec_secret},
                "superlink",
            )
        )
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": PUBLIC_KEYS_CONFIGMAP,
                    "namespace": namespace,
                    "labels": {**PART_OF, "app.kubernetes.io/component": "superlink"},
                },
                "data": {
                    f"{n}.pub": creds.nodes[n].public_key.read_text(encoding="utf-8")
                    for n in sorted(creds.nodes)
                },
            }
        )
    for name in names:
        keys = creds.node(name)
        if not keys.private_key.is_file():
            raise CredentialsError(f"{keys.private_key}: private key of node '{name}' missing")
        objects.append(
            _secret(
                node_secret_name(name),
                namespace,
                {
                    "ca.pem": creds.ca_cert,
                    "node.key": keys.private_key,
                    "node.pub": keys.public_key,
                },
                "supernode",
            )
        )
    return objects


def k8s_secrets_yaml(
    creds: FederationCredentials,
    *,
    namespace: str = "feddx",
    nodes: Sequence[str] | None = None,
    include_superlink: bool = True,
) -> str:
    """:func:`k8s_objects` as one multi-document YAML string for ``kubectl apply -f -``."""
    docs = k8s_objects(creds, namespace=namespace, nodes=nodes, include_superlink=include_superlink)
    return yaml.safe_dump_all(docs, sort_keys=False)
