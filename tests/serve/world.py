"""A small world for the service tests: tiny random Llama adapters registered in a real
registry as a hierarchy (global > regional > institutional), keys for four institutions, and a
Diagnoser over the same tiny base model.

Institutions (region): ``cleveland`` (usa) has its own adapter; ``va-long-beach`` (usa) is
answered by the USA regional adapter; ``hungary-inst`` (hungary) has no regional adapter and is
answered by the global one. The adapters are random, so what they rank first is whatever
these weights say: tests compare the service's answer with the Diagnoser's own answer for the
same adapter, and the fixture makes sure the adapters disagree, so routing is visible.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feddx.data.uci_heart import DIAGNOSES, ICD10
from tiny_llama import make_tiny_llama

BASE = "tiny-llama:serve-test"
LAYERS = 2
CANDIDATES = list(DIAGNOSES.values())
SEEDS = {"global": 11, "usa": 12, "cleveland": 16, "cleveland-v2": 17}
INSTITUTIONS = {
    "cleveland": "usa",
    "va-long-beach": "usa",
    "hungary-inst": "hungary",
}

CASE: dict[str, Any] = {
    "case_id": "t-1",
    "age": 63,
    "sex": "male",
    "findings": [
        {"name": "chest pain", "value": "asymptomatic"},
        {"name": "resting BP", "value": 145, "unit": "mmHg"},
        {"name": "exercise angina", "value": True},
    ],
}


def save_adapter(
    tokenizer: Any,
    directory: Path,
    seed: int,
    *,
    candidates: bool = True,
    names: list[str] | None = None,
) -> Path:
    """A LoRA adapter (rank 4, q/v of both layers) with random, non-zero B matrices, recording
    UCI Heart's candidates (``names``: these instead; ``candidates=False``: none)."""
    import torch

    from feddx.model.adapter import LoraSpec, attach_lora, save_adapter

    base = make_tiny_llama(len(tokenizer), LAYERS, initializer_range=0.2)
    torch.manual_seed(seed)
    net = attach_lora(base, LoraSpec(rank=4, alpha=8, dropout=0.0))
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    meta: dict[str, Any] = {"data": "test"}
    if candidates:
        meta |= {"candidates": names or CANDIDATES, "icd10": {} if names else ICD10}
    save_adapter(net, directory, base_fingerprint=BASE, max_prompt_tokens=64, metadata=meta)
    return directory


def make_diagnoser(tokenizer: Any) -> Any:
    from feddx.model.predict import Diagnoser

    base = make_tiny_llama(len(tokenizer), LAYERS, initializer_range=0.2)
    return Diagnoser(base, tokenizer, base_fingerprint=BASE, model_name="tiny-llama")


@dataclass
class World:
    root: Path
    sources: dict[str, Path]
    registry: Any
    keys: dict[str, str]
    keys_file: Path
    ids: dict[str, str]


def build_registry(root: Path, sources: dict[str, Path]) -> tuple[Any, dict[str, str]]:
    from feddx.personalize.registry import AdapterRegistry

    reg = AdapterRegistry(root)
    g = reg.register(sources["global"], level="global", metrics={"top1": 0.5})
    usa = reg.register(sources["usa"], level="regional", region="usa", parent_id=g.adapter_id)
    cle = reg.register(
        sources["cleveland"],
        level="institutional",
        institution="cleveland",
        parent_id=usa.adapter_id,
    )
    return reg, {"global": g.adapter_id, "usa": usa.adapter_id, "cleveland": cle.adapter_id}


def add_keys(keys_file: Path) -> dict[str, str]:
    from feddx.serve.security import KeyStore

    store = KeyStore(keys_file)
    keys = {inst: store.add_key(inst, region)[0] for inst, region in INSTITUTIONS.items()}
    keys["operator"] = store.add_key("monitoring", None, role="operator")[0]
    return keys


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_server(app: Any, *, timeout: float = 30.0, **options: Any) -> Iterator[str]:
    """``app`` served by a real uvicorn on 127.0.0.1 (a free port) in a thread, with the
    proxy options ``feddx serve`` passes (``options`` override them); yields its base URL and
    stops the server on exit."""
    import uvicorn

    port = free_port()
    options = {**app.state.service.settings.proxy_options(), **options}
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        **options,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        assert not thread.is_alive(), "uvicorn did not stop"
