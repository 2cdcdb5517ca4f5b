"""CDS Hooks ``patient-view``: prefetch sizes of the Synthea bulk export's patients, and the time
per hook call.

    .venv/bin/python -m benchmarks.bench_cds                                   # tiny model
    .venv/bin/python -m benchmarks.bench_cds --model smollm2-135m-instruct \
        --out results/cds-prefetch.txt                                         # the README's

1. **sizes**: for every patient of ``--data`` (a FHIR bulk export), the bytes of the hook request
   an EHR sends with the service's prefetch templates (``_count`` and ``_sort`` honoured) and
   without their bounds (an EHR that ignores ``_count``): what sized ``cds_max_body_bytes``.
2. **latency**: the service (``create_app``, in process through Starlette's TestClient: the
   whole ASGI stack, JWT check, FHIR parsing, scoring, audit fsync; no socket) with one global
   adapter (random LoRA, rank 8 on q/v of the top 2 layers, prompt budget 320 tokens, the
   layout feddx trains on CPU) answers each patient's bounded prefetch ``--calls`` times after
   one warm-up call; p50/p95 per call over all calls, and the median per patient. ``--dtype
   bfloat16`` loads the base model in bf16 (the service's ``dtype``), ``--cds-max-prompt-tokens``
   caps the hook's prompts below the adapter's budget (the service's ``cds_max_prompt_tokens``).

Figures only, never assertions; one process, one scoring thread, torch's default threads
unless OMP_NUM_THREADS says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

DEFAULT_DATA = (
    Path(__file__).resolve().parents[1].parent / "shared/data/fhir/synthea_bulk_10_patients"
)


def hook(patient_id: str, prefetch: dict[str, Any]) -> dict[str, Any]:
    return {
        "hookInstance": str(uuid.uuid4()),
        "hook": "patient-view",
        "context": {"userId": "Practitioner/bench", "patientId": patient_id},
        "prefetch": prefetch,
    }


def sizes(data: Path) -> list[str]:
    from feddx.serve.prefetch import CDS_MAX_BODY_BYTES, bulk_prefetches

    bounded = {p: len(json.dumps(hook(p, f)).encode()) for p, f in bulk_prefetches(data)}
    full = {
        p: len(json.dumps(hook(p, f)).encode()) for p, f in bulk_prefetches(data, bounded=False)
    }
    lines = ["patient   request bytes, templates honoured   request bytes, unbounded"]
    for p in sorted(full, key=full.__getitem__, reverse=True):
        lines.append(f"{p[:8]}  {bounded[p]:>32,}  {full[p]:>24,}")
    lines.append(
        f"largest: {max(bounded.values()):,} bytes bounded, {max(full.values()):,} unbounded; "
        f"cds_max_body_bytes {CDS_MAX_BODY_BYTES:,} "
        f"({CDS_MAX_BODY_BYTES / max(full.values()):.1f}x the largest unbounded)"
    )
    return lines


def _world(
    model: str, root: Path, dtype: str = "auto", cap: int | None = None
) -> tuple[Any, Any, Any]:
    """(settings, diagnoser, registry) with one global adapter and an EHR for 'bench', the base
    model loaded on the CPU in ``dtype`` (the service's ``dtype`` setting) and the hook's
    prompts capped at ``cap`` tokens (``cds_max_prompt_tokens``; ``None``: the adapter's 320)."""
    import torch
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from feddx.model.adapter import LoraSpec, attach_lora, save_adapter
    from feddx.model.hardware import HardwareSpec, resolve_hardware
    from feddx.model.predict import Diagnoser
    from feddx.personalize.registry import AdapterRegistry
    from feddx.serve.security import KeyStore
    from feddx.serve.settings import ServeSettings

    spec = HardwareSpec(device="cpu", dtype=dtype)  # type: ignore[arg-type]
    diagnoser = Diagnoser.load(model, hardware=resolve_hardware(spec))
    torch.manual_seed(1)
    net = attach_lora(diagnoser.model, LoraSpec(rank=8, alpha=16, dropout=0.0, top_layers=2))
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.02)
    save_adapter(
        net,
        root / "adapter",
        base_fingerprint=diagnoser.base_fingerprint,
        max_prompt_tokens=320,
        metadata={"data": "uci-heart"},
    )
    net.unload()
    registry = AdapterRegistry(root / "registry")
    registry.register(root / "adapter", level="global")
    private = ec.generate_private_key(ec.SECP384R1())
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    KeyStore(root / "keys.json").add_ehr("https://ehr.bench", "bench", None, public.decode())
    settings = ServeSettings(
        model=model,
        registry=root / "registry",
        keys_file=root / "keys.json",
        audit_log=root / "audit.jsonl",
        public_url="https://cds.bench",
        dtype=dtype,
        cds_max_prompt_tokens=cap,
        rate_per_minute=1e6,
        rate_burst=100_000,
    )
    return settings, diagnoser, (registry, private)


def latency(
    model: str, data: Path, calls: int, dtype: str = "auto", cap: int | None = None
) -> list[str]:
    import jwt
    from fastapi.testclient import TestClient

    from feddx.serve.app import create_app
    from feddx.serve.prefetch import bulk_prefetches

    with tempfile.TemporaryDirectory() as tmp:
        settings, diagnoser, (registry, private) = _world(model, Path(tmp), dtype, cap)
        url = "https://cds.bench/cds-services/feddx-differential"

        def headers() -> dict[str, str]:
            now = int(time.time())
            claims = {"iss": "https://ehr.bench", "aud": url, "iat": now, "exp": now + 60}
            token = jwt.encode(claims | {"jti": uuid.uuid4().hex}, private, algorithm="ES384")
            return {"Authorization": f"Bearer {token}"}

        app = create_app(settings, diagnoser=diagnoser, registry=registry)
        times: list[float] = []
        per_patient: list[str] = []
        with TestClient(app) as client:
            for patient_id, prefetch in bulk_prefetches(data):
                body = hook(patient_id, prefetch)
                mine = []
                for i in range(calls + 1):
                    body["hookInstance"] = str(uuid.uuid4())
                    start = time.perf_counter()
                    r = client.post(
                        "/cds-services/feddx-differential", json=body, headers=headers()
                    )
                    took = (time.perf_counter() - start) * 1000
                    if r.status_code != 200:
                        raise SystemExit(f"{patient_id[:8]}: HTTP {r.status_code} {r.text[:200]}")
                    if i:  # the first call of a patient is a warm-up
                        mine.append(took)
                times += mine
                per_patient.append(f"{patient_id[:8]} median {statistics.median(mine):8.1f} ms")
    q = statistics.quantiles(times, n=20)
    return [
        f"hook calls: {len(times)} ({calls} per patient after one warm-up each)",
        f"p50 {statistics.median(times):.1f} ms  p95 {q[18]:.1f} ms  "
        f"min {min(times):.1f} ms  max {max(times):.1f} ms",
        *per_patient,
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny", help="tiny (a random tiny Llama) or a model")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a FHIR bulk export folder")
    ap.add_argument("--calls", type=int, default=3, help="timed calls per patient")
    ap.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16"],
        help="the base model's dtype on the CPU (auto: float32; bfloat16 where the CPU has "
        "bf16 units: faster, scores within bf16 rounding)",
    )
    ap.add_argument(
        "--cds-max-prompt-tokens",
        type=int,
        default=None,
        help="the service's cds_max_prompt_tokens (default: unset, the adapter's 320 tokens)",
    )
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from benchmarks.bench_serve import prepare_model

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    lines = [
        f"# python -m benchmarks.bench_cds --model {args.model} --calls {args.calls}"
        + (f" --dtype {args.dtype}" if args.dtype != "auto" else "")
        + (
            f" --cds-max-prompt-tokens {args.cds_max_prompt_tokens}"
            if args.cds_max_prompt_tokens
            else ""
        )
        + (f" --out {args.out}" if args.out else ""),
        f"# commit {commit}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        f"# data {args.data.name}",
        "",
        *sizes(args.data),
        "",
    ]
    print("\n".join(lines), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        model = prepare_model(args.model, Path(tmp))
        lines += latency(model, args.data, args.calls, args.dtype, args.cds_max_prompt_tokens)
    print("\n".join(lines[-(len(lines) - lines.index("", 5)) :]))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
