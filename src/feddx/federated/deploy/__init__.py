"""Deploying the feddx Flower app on real processes: a SuperLink and one SuperNode per
institution, with TLS and SuperNode authentication.

* :mod:`~feddx.federated.deploy.local` -- the whole federation on loopback (``feddx deploy
  local``, ``scripts/federation-local.sh``, the CI integration test);
* :mod:`~feddx.federated.deploy.control` -- the ``flwr`` CLI: connections, registration, runs;
* :mod:`~feddx.federated.deploy.processes` -- starting daemons and stopping exactly those;
* :mod:`~feddx.federated.deploy.k8s` -- Kubernetes Secrets from a credentials folder.

Credentials come from :mod:`feddx.federated.certs`; container images and manifests live in
``deploy/`` at the repository root.
"""
