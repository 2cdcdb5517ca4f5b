"""The service's configuration: one typed object, defaults that work, a file and the environment.

Precedence (highest first): explicit keyword arguments (what ``feddx serve`` passes for the
options given on its command line), ``FEDDX_SERVE_<FIELD>`` environment variables (what a
container or a Kubernetes ConfigMap sets; values are read as YAML scalars or lists, so
``FEDDX_SERVE_ADAPTER_CACHE=4`` is an integer), a YAML, JSON or TOML file (``feddx serve
--config FILE``, at the top level or under ``serve:``), the defaults below. Every field is
documented once, here. The model is feddx's one configuration idiom (:class:`feddx.settings.
Settings`): frozen, unknown keys refused, errors naming the origin and the key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from feddx.errors import ConfigError
from feddx.model.hardware import DtypeName, HardwareSpec, QuantizeName
from feddx.paths import cache_root, registry_root
from feddx.serve.prefetch import CDS_MAX_BODY_BYTES
from feddx.settings import Names, SettingPath, Settings, read_config_file

ENV_PREFIX = "FEDDX_SERVE_"
# Settings whose environment value is taken as written, not parsed as YAML.
_TEXT_FIELDS = frozenset(
    {
        "model",
        "registry",
        "keys_file",
        "audit_log",
        "history_dir",
        "candidates",
        "public_url",
        "scheduler",
        "shared_store",
    }
)


def _default_keys_file() -> Path:
    return registry_root().parent / "serve-keys.json"


def _default_audit_log() -> Path:
    return cache_root() / "serve" / "audit.jsonl"


class ServeSettings(Settings):
    """Everything ``create_app`` needs.

    Parameters
    ----------
    model
        Base model: alias, ``.gguf`` file, directory or hub id (as ``feddx train``).
    device, dtype, quantize
        Where and how the base model runs (:mod:`feddx.model.hardware`; ``auto``: a CUDA GPU
        in bf16 when present, else the CPU in float32). ``dtype: bfloat16`` on a CPU with bf16
        units (AVX512-BF16) is faster than float32, its LM head kept in float32
        (:func:`feddx.model.predict.float32_head`); its top-1 against float32 is measured in
        ``results/bench-serve.txt``.
    registry
        The adapter registry root (``feddx.personalize.registry``); institutions' adapter
        chains are resolved there on every request batch, so a newly registered version
        answers without a restart.
    keys_file
        The identities file (``feddx serve keys add``): API keys stored hashed, EHR issuers
        with their public keys.
    audit_log
        Append-only JSON-lines audit log (one line per request; never patient text).
    history_dir
        Where stored patient histories live (per institution, named by keyed HMACs of the
        pseudonymous patient id, encrypted with AES-GCM under ``FEDDX_HISTORY_KEY``, which
        must then be set); ``None`` disables the history endpoints.
    candidates
        The candidate diagnoses when the answering adapter records none (and for the base
        model alone): a pathless data source with a fixed label space (``uci-heart``) or a
        file with one name per line. ``None``: refuse to score without an adapter's list.
    scheduler
        ``"batched"`` (default): requests are micro-batched in one scoring thread.
        ``"serial"``: one request at a time under a lock (the naive baseline of the benchmark).
    batch_window_ms, max_batch_cases
        After the first request of a batch arrives, wait this long for more (while the scorer
        is busy, requests queue anyway); at most this many cases go into one batch.
    prefix_cache
        On (default): the scorer keeps, per adapter, the keys and values of the prompt
        preamble every case shares and starts each case after it (exact; less work per case).
    int8
        Off (default): float32 weights. On: the MLP's input projections run in int8 on the
        CPU (dynamic quantization; faster, measured top-1 loss in ``results/bench-serve.txt``);
        every answer's ``model`` then ends in ``+int8``. Activations are scaled per forward
        pass, so a case's scores then depend slightly on the cases batched with it.
    max_queue
        Requests waiting beyond this are refused with 503 (back-pressure, not a growing
        backlog of timeouts).
    request_timeout_s
        A request still unscored after this long gets 504.
    adapter_cache
        How many adapters the scorer holds at once (least recently used evicted).
    max_body_bytes
        Larger request bodies are refused with 413 before they are parsed.
    cds_max_body_bytes
        The same for the CDS Hooks routes, whose prefetch carries a patient's record: 8 MiB,
        about 3x the largest patient's prefetch of the Synthea export even unbounded (an EHR
        ignoring the templates' ``_count``, MedicationRequests included: 2.81 MB; see
        :mod:`feddx.serve.prefetch`).
    cds_max_prompt_tokens
        ``None`` (default): a CDS hook's prompt gets the answering adapter's own budget (the
        one it was trained with), like ``/v1/diagnose``. A number below it caps the hook's
        prompts there: a real chart's history and observations fill any budget, and the
        prompt pass costs time in proportion to its tokens, so this trades the oldest
        history and the last findings (what :func:`feddx.model.prompt.render_prompt` drops
        first) for latency; answers may then differ from the adapter's full-budget ones
        (``benchmarks/bench_cds.py --cds-max-prompt-tokens`` measures both).
    max_cases_per_request
        Cases one ``/v1/diagnose`` call may carry.
    shared_store
        ``None`` (default): rate limits and the JWT replay cache live in this process (right
        for one replica). ``redis://host:6379/0``: in that Redis, shared by every replica, so a
        JWT used at one is refused at the others and the rates hold across them
        (:mod:`feddx.serve.store`).
    rate_per_minute, rate_burst
        Token bucket per identity (and per client address for failed sign-ins): refill rate
        and bucket size; excess requests get 429 with ``Retry-After``.
    auth_failures_per_minute, auth_failure_burst
        The bucket of failed sign-ins per client address (checked before the key derivation):
        30 a minute after a burst of 10 by default, so guessing keys costs minutes, not CPU.
    jwt_algorithms, jwt_leeway_s, jwt_max_lifetime_s
        CDS Hooks JWTs: accepted signature algorithms (the specification names ES384 and
        RS384), clock skew tolerated, and the longest ``exp - iat`` accepted.
    public_url
        The URL the EHR calls (``https://cds.hospital.org``): a CDS Hooks JWT's ``aud`` must
        name this URL plus the endpoint called. Required whenever EHR issuers are registered
        (the service refuses to start otherwise, and refuses JWTs while it is unset): taking
        the URL from the request's ``Host`` header let a token issued for another CDS service
        be replayed here with a spoofed ``Host``.
    trusted_proxies
        Addresses (IPs or CIDR networks) of the reverse proxies whose ``X-Forwarded-For`` and
        ``X-Forwarded-Proto`` are believed. Empty (the default): no forwarded header is
        trusted, not even from loopback (uvicorn's own default trusts 127.0.0.1), so a caller
        cannot pick the client address that failed sign-ins are throttled by.
    fhir_deidentify
        De-identify free text of FHIR input before scoring. Off by default: request data is
        never stored, and the prompt is what the model was trained on.
    base_model_fallback
        Answer with the untuned base model when no adapter of the caller's chain verifies or
        the registry is unreadable; the answer then says so (``chain.base_model_only``, the
        card's summary). Off by default: such requests get 503 with the reason, and
        ``/readyz`` is 503 while the registry is unreadable.
    top_k
        Diagnoses returned by default (the request may ask for up to all candidates).
    api_docs
        Serve ``/docs`` (Swagger UI). Off by default: FastAPI's page loads its scripts and
        styles from a third-party CDN (jsDelivr), which a clinical network should not have its
        browsers fetch; ``/openapi.json`` (static, no data) is always served. ``/redoc`` is
        never served.
    cors_origins
        Origins allowed to call the API from a browser (the clinician page is same-origin and
        needs none).
    """

    settings_name: ClassVar[str] = "serve settings"
    file_section: ClassVar[str | None] = "serve"

    model: str = "smollm2-135m-instruct"
    device: str = "auto"
    dtype: DtypeName = "auto"
    quantize: QuantizeName = "none"
    registry: SettingPath = Field(default_factory=registry_root)
    keys_file: SettingPath = Field(default_factory=_default_keys_file)
    audit_log: SettingPath = Field(default_factory=_default_audit_log)
    history_dir: SettingPath | None = None
    candidates: str | None = "uci-heart"
    scheduler: Literal["batched", "serial"] = "batched"
    batch_window_ms: float = Field(default=2.0, ge=0, le=1000)
    max_batch_cases: int = Field(default=16, ge=1, le=1024)
    prefix_cache: bool = True
    int8: bool = False
    max_queue: int = Field(default=256, ge=1)
    request_timeout_s: float = Field(default=120.0, gt=0)
    adapter_cache: int = Field(default=8, ge=1)
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    cds_max_body_bytes: int = Field(default=CDS_MAX_BODY_BYTES, ge=1024)
    cds_max_prompt_tokens: int | None = Field(default=None, ge=32)
    shared_store: str | None = None
    rate_per_minute: float = Field(default=600.0, gt=0)
    rate_burst: int = Field(default=60, ge=1)
    auth_failures_per_minute: float = Field(default=30.0, gt=0)
    auth_failure_burst: int = Field(default=10, ge=1)
    jwt_algorithms: Names = ("ES384", "RS384")
    jwt_leeway_s: int = Field(default=30, ge=0)
    jwt_max_lifetime_s: int = Field(default=300, ge=1)
    public_url: str | None = None
    trusted_proxies: Names = ()
    fhir_deidentify: bool = False
    base_model_fallback: bool = False
    top_k: int = Field(default=5, ge=1)
    api_docs: bool = False
    cors_origins: Names = ()

    @field_validator("jwt_algorithms")
    @classmethod
    def _known_algorithms(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        allowed = {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384"}
        bad = [a for a in v if a not in allowed]
        if bad or not v:
            raise ValueError(f"must be asymmetric JWS algorithms from {sorted(allowed)}")
        return v

    @field_validator("public_url")
    @classmethod
    def _absolute_url(cls, v: str | None) -> str | None:
        if v is None:
            return None
        from urllib.parse import urlsplit

        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
            raise ValueError("must be an absolute http(s) URL without a query")
        return v.rstrip("/")

    @field_validator("shared_store")
    @classmethod
    def _redis_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return v

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        import ipaddress

        out = []
        for item in v:
            try:
                if "/" in item:
                    out.append(str(ipaddress.ip_network(item, strict=False)))
                else:
                    out.append(str(ipaddress.ip_address(item)))
            except ValueError:
                raise ValueError("must be IP addresses or CIDR networks") from None
        return tuple(out)

    def proxy_options(self) -> dict[str, Any]:
        """uvicorn's ``proxy_headers`` and ``forwarded_allow_ips`` for ``trusted_proxies``:
        forwarded headers are read only from those addresses, and not at all without any."""
        if not self.trusted_proxies:
            return {"proxy_headers": False, "forwarded_allow_ips": []}
        return {"proxy_headers": True, "forwarded_allow_ips": list(self.trusted_proxies)}

    def hardware_spec(self) -> HardwareSpec:
        """The device, dtype and quantization the base model loads with."""
        return HardwareSpec(device=self.device, dtype=self.dtype, quantize=self.quantize)

    @classmethod
    def load(cls, file: Path | None = None, **overrides: Any) -> ServeSettings:
        """Settings from ``file``, the environment and ``overrides`` (``None`` values are
        ignored, so a CLI can pass every option; see the module docstring). Raises
        :class:`ConfigError` naming the origin and the key at fault."""
        data: dict[str, Any] = {}
        origin = "serve settings"
        if file is not None:
            data = read_config_file(Path(file))
            section = cls.file_section
            if section is not None and set(data) == {section} and isinstance(data[section], dict):
                data = data[section]
            origin = str(file)
        env = environment_settings(os.environ)
        if env:
            origin += " + environment" if file is not None else " (environment)"
        data.update(env)
        data.update({k: _plain(v) for k, v in overrides.items() if v is not None})
        return cls.from_mapping(data, origin=origin)


def environment_settings(environ: Any) -> dict[str, Any]:
    """The ``FEDDX_SERVE_*`` variables as settings (values parsed as YAML scalars/lists).
    Raises :class:`ConfigError` naming an unknown variable."""
    import yaml

    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key not in ServeSettings.model_fields:
            raise ConfigError(f"environment: unknown setting {name}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        if key in _TEXT_FIELDS and value is not None:
            value = raw  # text keeps what was written (a model named "1e3" stays "1e3")
        out[key] = value
    return out


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value
