"""``feddx serve``: the diagnosis service, and ``feddx serve keys ...``: its identities.

Thin wrappers over :mod:`feddx.serve`: options become :class:`~feddx.serve.settings.ServeSettings`
(a ``--config`` file and ``FEDDX_SERVE_*`` variables fill in the rest), and uvicorn runs
:func:`~feddx.serve.app.create_app`. uvicorn's access log is off: request paths can hold patient
ids, and the audit log records every request without them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from feddx.cli._app import app, console, console_err, quiet_libraries
from feddx.cli._hardware import Device, Dtype, Quantize
from feddx.errors import ConfigError

if TYPE_CHECKING:
    from feddx.serve.security import KeyStore

serve_app = typer.Typer(
    help="Serve diagnoses over HTTP (FastAPI): REST, CDS Hooks and the clinician page.",
    invoke_without_command=True,
)
app.add_typer(serve_app, name="serve")
keys_app = typer.Typer(
    help="Institutions' API keys and EHR issuers (CDS Hooks JWTs).", no_args_is_help=True
)
serve_app.add_typer(keys_app, name="keys")

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="Settings file (YAML or JSON).", dir_okay=False)
]
KeysOpt = Annotated[
    Path | None, typer.Option("--keys", help="Identities file (default: the settings').")
]


@serve_app.callback()
def serve(
    ctx: typer.Context,
    model: Annotated[
        str | None, typer.Option(help="Base model: alias, .gguf, directory or hub id.")
    ] = None,
    device: Device = None,
    dtype: Dtype = None,
    quantize: Quantize = None,
    registry: Annotated[Path | None, typer.Option(help="Adapter registry root.")] = None,
    keys: KeysOpt = None,
    audit_log: Annotated[Path | None, typer.Option(help="Audit log (JSON lines).")] = None,
    history_dir: Annotated[
        Path | None, typer.Option(help="Store patient histories here (enables /v1/patients).")
    ] = None,
    candidates: Annotated[
        str | None,
        typer.Option(help="Candidates when the adapter records none: uci-heart or a file."),
    ] = None,
    scheduler: Annotated[
        str | None, typer.Option(help="batched (default) or serial (the naive baseline).")
    ] = None,
    config: ConfigOpt = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Start the service (the model loads in the background; /readyz says when it is ready)."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"config": config, "keys": keys}
        return
    import uvicorn

    from feddx.serve.app import create_app
    from feddx.serve.settings import ServeSettings

    settings = ServeSettings.load(
        config,
        model=model,
        device=device,
        dtype=dtype,
        quantize=quantize,
        registry=registry,
        keys_file=keys,
        audit_log=audit_log,
        history_dir=history_dir,
        candidates=candidates,
        scheduler=scheduler,
    )
    quiet_libraries()
    from feddx.model.hardware import resolve_hardware
    from feddx.serve.security import KeyStore

    hardware = resolve_hardware(settings.hardware_spec())  # a missing GPU: one line, not /readyz
    from feddx.model.loading import resolve_model

    resolve_model(settings.model)  # an unknown --model: one line and exit 2, not a dead server

    store = KeyStore(settings.keys_file)
    if not store.key_records() and not store.ehr_issuers():
        console_err.print(
            f"warning: no keys in {settings.keys_file}: every request will be refused; add one "
            "with 'feddx serve keys add INSTITUTION --region REGION'",
            markup=False,
        )
    console_err.print(
        f"feddx serve: http://{host}:{port}  model {settings.model} ({hardware.describe()})  "
        f"registry {settings.registry}",
        markup=False,
    )
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        server_header=False,
        **settings.proxy_options(),
    )


def _keystore(ctx: typer.Context, keys: Path | None) -> KeyStore:
    from feddx.serve.security import KeyStore
    from feddx.serve.settings import ServeSettings

    parent = ctx.find_object(dict) or {}
    path = keys or parent.get("keys")
    if path is None:
        path = ServeSettings.load(parent.get("config")).keys_file
    return KeyStore(Path(path))


def _registry_name(name: str, what: str) -> str:
    from feddx.personalize.registry import normalize_scope

    return normalize_scope(name, what)


@keys_app.command("add")
def keys_add(
    ctx: typer.Context,
    institution: Annotated[str, typer.Argument(help="Institution (as named in the registry).")],
    region: Annotated[str | None, typer.Option(help="The institution's region.")] = None,
    operator: Annotated[
        bool, typer.Option("--operator", help="A monitoring key: reads /metrics only.")
    ] = False,
    keys: KeysOpt = None,
) -> None:
    """Create an API key and print it once; only its scrypt hash is stored."""
    store = _keystore(ctx, keys)
    if operator:
        if region:
            raise ConfigError("an operator key has no region")
        key, rec = store.add_key(institution, None, role="operator")
    else:
        key, rec = store.add_key(
            _registry_name(institution, "institution"),
            _registry_name(region, "region") if region else None,
        )
    console_err.print(
        f"key {rec.key_id} for {rec.institution}"
        + (f" ({rec.region})" if rec.region else "")
        + f" stored in {store.path}. It is shown once; keep it secret:",
        markup=False,
    )
    typer.echo(key)


@keys_app.command("list")
def keys_list(
    ctx: typer.Context,
    keys: KeysOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The keys (ids, institutions, regions; never hashes) and the EHR issuers."""
    store = _keystore(ctx, keys)
    records = [
        {
            "key_id": k.key_id,
            "institution": k.institution,
            "region": k.region,
            "role": k.role,
            "created_at": k.created_at,
        }
        for k in store.key_records()
    ]
    ehrs = [
        {"issuer": e.issuer, "institution": e.institution, "region": e.region}
        for e in store.ehr_issuers()
    ]
    if as_json:
        typer.echo(json.dumps({"keys": records, "ehrs": ehrs}, indent=1))
        return
    table = Table("key id", "institution", "region", "role", "created")
    for r in records:
        table.add_row(
            *(str(r[c] or "") for c in ("key_id", "institution", "region", "role", "created_at"))
        )
    console.print(table)
    for e in ehrs:
        console.print(f"EHR issuer {e['issuer']} -> {e['institution']} ({e['region'] or '-'})")


@keys_app.command("revoke")
def keys_revoke(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(help="The key id (see 'feddx serve keys list').")],
    keys: KeysOpt = None,
) -> None:
    """Delete a key; a running service refuses it on the next request."""
    store = _keystore(ctx, keys)
    store.revoke(key_id)
    console_err.print(f"key {key_id} revoked", markup=False)


@keys_app.command("add-ehr")
def keys_add_ehr(
    ctx: typer.Context,
    issuer: Annotated[str, typer.Argument(help="The EHR's JWT 'iss' value.")],
    institution: Annotated[str, typer.Option(help="The institution the EHR speaks for.")],
    public_key: Annotated[
        Path, typer.Option(help="The EHR's public key (PEM, EC or RSA).", exists=True)
    ],
    region: Annotated[str | None, typer.Option(help="The institution's region.")] = None,
    keys: KeysOpt = None,
) -> None:
    """Register an EHR whose signed JWTs may call the CDS Hooks endpoints."""
    store = _keystore(ctx, keys)
    ehr = store.add_ehr(
        issuer,
        _registry_name(institution, "institution"),
        _registry_name(region, "region") if region else None,
        public_key.read_text(encoding="utf-8"),
    )
    console_err.print(f"EHR {ehr.issuer} registered for {ehr.institution}", markup=False)
