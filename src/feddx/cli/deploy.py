"""``feddx deploy ...``: credentials, a loopback federation, Kubernetes Secrets.

Thin wrappers over :mod:`feddx.federated.certs` and :mod:`feddx.federated.deploy`; see
``deploy/README.md`` for the whole procedure.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from feddx.cli._app import app, console
from feddx.errors import ConfigError
from feddx.io import atomic_write_text

deploy_app = typer.Typer(
    help="Deploy the federated app: certificates, a loopback federation, Kubernetes Secrets.",
    no_args_is_help=True,
)
app.add_typer(deploy_app, name="deploy")


class IsolationOption(StrEnum):
    subprocess = "subprocess"
    process = "process"


def _split_names(text: str | None) -> list[str]:
    return [n.strip() for n in (text or "").split(",") if n.strip()]


@deploy_app.command()
def certs(
    out: Annotated[Path, typer.Option("--out", help="Folder for the CA, certificates and keys.")],
    nodes: Annotated[
        str | None,
        typer.Option(
            "--nodes", help="Comma-separated institution names, e.g. hospital-a,hospital-b."
        ),
    ] = None,
    partition: Annotated[
        Path | None,
        typer.Option(help="Take the node names from a 'feddx data partition' folder instead."),
    ] = None,
    hostname: Annotated[
        list[str] | None,
        typer.Option(
            "--hostname",
            help="Extra DNS name of the SuperLink for its certificate (repeatable), e.g. "
            "feddx-superlink.feddx.svc or superlink.example.org.",
        ),
    ] = None,
    ip: Annotated[
        list[str] | None,
        typer.Option("--ip", help="Extra IP address of the SuperLink (repeatable)."),
    ] = None,
    days: Annotated[int, typer.Option(min=1, help="Validity of the CA and certificate.")] = 365,
    force: Annotated[bool, typer.Option(help="Replace existing credentials in --out.")] = False,
) -> None:
    """Generate a federation CA, the SuperLink TLS certificate and one SuperNode key per node.

    localhost and 127.0.0.1 are always in the certificate. Private keys are written 0600; give
    each institution only its own nodes/<name>.key (plus ca.pem).
    """
    from feddx.federated.certs import generate_credentials
    from feddx.federated.deploy.local import nodes_from_partition

    names = _split_names(nodes)
    if partition is not None:
        if names:
            raise ConfigError("give either --nodes or --partition, not both")
        names = [n.name for n in nodes_from_partition(partition)]
    creds, created = generate_credentials(
        out, names, hostnames=hostname or (), ip_addresses=ip or (), validity_days=days, force=force
    )
    verb = "wrote" if created else "unchanged (already generated for these nodes):"
    console.print(f"{verb} {creds.root}", markup=False, highlight=False)
    table = Table("node", "private key (give to this node only)", "public key fingerprint")
    for name, keys in sorted(creds.nodes.items()):
        table.add_row(name, str(keys.private_key), keys.fingerprint)
    console.print(table)
    sans = ", ".join(creds.hostnames + creds.ip_addresses)
    console.print(
        f"SuperLink certificate names: {sans}; valid until {creds.not_after:%Y-%m-%d}",
        markup=False,
        highlight=False,
    )


@deploy_app.command()
def prepare(
    out: Annotated[Path, typer.Option("--out", help="Folder for shards/ and eval.jsonl.")],
    data: Annotated[
        str, typer.Option(help="SOURCE[:PATH] of the whole dataset, as in 'feddx data stats'.")
    ] = "uci-heart",
    attribute: Annotated[
        str, typer.Option(help="Case attribute that defines the institutions.")
    ] = "institution",
    validation_fraction: Annotated[
        float, typer.Option(min=0.01, max=0.9, help="Share held out for the server.")
    ] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of the split.")] = 0,
    max_cases: Annotated[
        int,
        typer.Option(
            "--limit", min=0, help="At most this many cases, a stratified sample (0: all)."
        ),
    ] = 0,
) -> None:
    """Split a dataset for a loopback federation: the server's validation set (eval.jsonl) and
    one training shard per institution (shards/), disjoint."""
    from feddx.federated.deploy.local import prepare_local_data

    prepared = prepare_local_data(
        data,
        out,
        attribute=attribute,
        validation_fraction=validation_fraction,
        seed=seed,
        max_cases=max_cases,
    )
    table = Table("node", "training cases")
    sizes = json.loads((prepared.partition_dir / "manifest.json").read_text())["sizes"]
    for spec, size in zip(prepared.nodes, sizes, strict=True):
        table.add_row(spec.name, str(size))
    console.print(table)
    console.print(
        f"server validation: {prepared.eval_path} ({prepared.n_eval} cases); "
        f"shards: {prepared.partition_dir}",
        markup=False,
        highlight=False,
    )


@deploy_app.command()
def local(
    certs_dir: Annotated[
        Path, typer.Option("--certs", help="Credentials folder from 'feddx deploy certs'.")
    ],
    node: Annotated[
        list[str] | None,
        typer.Option(
            "--node",
            help="NAME=SOURCE:PATH, one per institution (repeatable), e.g. "
            "hospital-a=jsonl:/data/a.jsonl.",
        ),
    ] = None,
    partition: Annotated[
        Path | None,
        typer.Option(help="One node per client shard of a 'feddx data partition' folder."),
    ] = None,
    app_dir: Annotated[
        Path,
        typer.Option("--app", help="Flower app project (pyproject.toml with [tool.flwr.app])."),
    ] = Path("."),
    run_dir: Annotated[
        Path | None,
        typer.Option(help="Folder for logs, PIDs and the summary (default: runs/deploy-<time>)."),
    ] = None,
    run_config: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override one app setting: KEY=VALUE (repeatable; several space-separated "
            "pairs in one value as for 'flwr run'), e.g. num-rounds=1.",
        ),
    ] = None,
    isolation: Annotated[
        IsolationOption,
        typer.Option(
            help="subprocess: daemons start the apps; process: separate executors (as in Kubernetes)."
        ),
    ] = IsolationOption.subprocess,
    threads_per_node: Annotated[
        int, typer.Option(min=0, help="CPU threads per SuperNode's ClientApp (0: cores / nodes).")
    ] = 0,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds allowed for the run.")] = 3600.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Run the app on a real local federation: a TLS SuperLink with node authentication and one
    SuperNode process per institution on 127.0.0.1; everything started is stopped at the end."""
    from flwr.common.config import parse_config_args

    from feddx.federated.deploy.local import (
        LocalFederationConfig,
        NodeSpec,
        nodes_from_partition,
        run_local_federation,
    )

    specs = [NodeSpec.parse(n) for n in node or []]
    if partition is not None:
        specs += nodes_from_partition(partition)
    if not specs:
        raise ConfigError("no nodes: give --node NAME=SOURCE:PATH (repeatable) or --partition DIR")
    overrides = parse_config_args(run_config) if run_config else {}
    run_dir = run_dir or Path("runs") / f"deploy-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    result = run_local_federation(
        LocalFederationConfig(
            run_dir=run_dir,
            credentials=certs_dir,
            nodes=specs,
            app_dir=app_dir,
            run_config=overrides,
            threads_per_node=threads_per_node or None,
            run_timeout=timeout,
            isolation=isolation.value,  # type: ignore[arg-type]  # enum values are the literals
        )
    )
    if as_json:
        typer.echo(json.dumps(asdict(result)))
        return
    table = Table("", "")
    table.add_row("run", f"{result.run_id}: {result.status}")
    table.add_row("SuperLink", result.superlink_address + " (TLS, SuperNode auth)")
    table.add_row("SuperNodes", ", ".join(sorted(result.node_ids)))
    for key, seconds in result.timings_s.items():
        table.add_row(key.replace("_", " "), f"{seconds:.1f} s")
    table.add_row("processes left", str(len(result.leftover_pids)))
    table.add_row("logs", str(Path(result.run_dir) / "logs"))
    console.print(table)


@deploy_app.command("k8s-secrets")
def k8s_secrets(
    certs_dir: Annotated[
        Path, typer.Option("--certs", help="Credentials folder from 'feddx deploy certs'.")
    ],
    namespace: Annotated[str, typer.Option(help="Kubernetes namespace.")] = "feddx",
    nodes: Annotated[
        str | None,
        typer.Option(
            help="Only these nodes' Secrets (comma-separated; 'none' for none). Default: all."
        ),
    ] = None,
    superlink: Annotated[
        bool, typer.Option(help="Include the SuperLink's Secrets and the public-key ConfigMap.")
    ] = True,
    out: Annotated[Path | None, typer.Option(help="Write here (0600) instead of printing.")] = None,
) -> None:
    """Print Kubernetes Secrets for deploy/k8s (pipe into 'kubectl apply -f -')."""
    from feddx.federated.certs import load_credentials
    from feddx.federated.deploy.k8s import k8s_secrets_yaml

    text = k8s_secrets_yaml(
        load_credentials(certs_dir),
        namespace=namespace,
        nodes=None if nodes is None else [n for n in _split_names(nodes) if n != "none"],
        include_superlink=superlink,
    )
    if out is None:
        typer.echo(text, nl=False)
        return
    atomic_write_text(out, text, private=True)
    console.print(
        f"wrote {out} (contains private keys: keep it out of version control)",
        markup=False,
        highlight=False,
    )


superlink_app = typer.Typer(
    help="The local SuperLink 'flwr run . local' uses: start it so that it installs nothing at "
    "run time, see it, stop it.",
    no_args_is_help=True,
)
deploy_app.add_typer(superlink_app, name="superlink")


@superlink_app.command("start")
def superlink_start() -> None:
    """Start the local SuperLink that 'flwr run . local' uses, with runtime dependency
    installation off (Flower's own would run 'uv sync' and download the app's dependencies
    for every run). It keeps running: 'flwr run . local --stream' then uses it; stop it with
    'feddx deploy superlink stop'."""
    from feddx.federated.deploy.flwr_local import start_local_superlink

    link = start_local_superlink()
    console.print(
        f"local SuperLink running (pid {link.pid}, installs nothing at run time; log "
        f"{link.log_file}); run: flwr run . local --stream; stop: feddx deploy superlink stop",
        markup=False,
        highlight=False,
    )


@superlink_app.command("status")
def superlink_status(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Whether the local SuperLink of $FLWR_HOME runs, its processes, and whether it installs
    app dependencies at run time."""
    from feddx.federated.deploy.flwr_local import find_local_superlink

    link = find_local_superlink()
    body = {
        "running": link is not None,
        "pid": link.pid if link else None,
        "helper_pids": list(link.helper_pids) if link else [],
        "installs_dependencies": link.installs_dependencies if link else None,
        "log_file": str(link.log_file) if link else None,
    }
    if as_json:
        typer.echo(json.dumps(body))
        return
    if link is None:
        console.print("no local SuperLink running", markup=False)
        return
    installs = (
        "installs app dependencies at run time (stop it, then feddx deploy superlink start)"
        if link.installs_dependencies
        else "installs nothing at run time"
    )
    console.print(
        f"local SuperLink running: pid {link.pid}, helpers {list(link.helper_pids)}; "
        f"{installs}; log {link.log_file}",
        markup=False,
        highlight=False,
    )


@superlink_app.command("stop")
def superlink_stop() -> None:
    """Stop the local SuperLink (started by 'flwr run . local' or by 'feddx deploy superlink
    start') and the executor and apps it spawned; nothing else is touched."""
    from feddx.federated.deploy.flwr_local import stop_local_superlink

    stopped = stop_local_superlink()
    if not stopped:
        console.print("no local SuperLink running", markup=False)
        return
    console.print(f"stopped the local SuperLink (pids {stopped})", markup=False)
