"""Fixtures of the service tests (see :mod:`world`)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .world import (
    SEEDS,
    World,
    add_keys,
    build_registry,
    make_diagnoser,
    running_server,
    save_adapter,
)


@pytest.fixture(scope="session")
def adapter_sources(tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The adapters of the world, saved once per session (registries copy them)."""
    root = tmp_path_factory.mktemp("serve-adapters")
    return {name: save_adapter(tokenizer, root / name, seed) for name, seed in SEEDS.items()}


@pytest.fixture(scope="session")
def session_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """One keys file per session (scrypt makes each key cost ~40 ms); tests copy it."""
    path = tmp_path_factory.mktemp("serve-keys") / "keys.json"
    return path, add_keys(path)


@pytest.fixture()
def world(
    tmp_path: Path, adapter_sources: dict[str, Path], session_keys: tuple[Path, dict[str, str]]
) -> World:
    registry, ids = build_registry(tmp_path / "registry", adapter_sources)
    keys_file = tmp_path / "keys.json"
    shutil.copy(session_keys[0], keys_file)
    return World(tmp_path, adapter_sources, registry, dict(session_keys[1]), keys_file, ids)


@pytest.fixture()
def make_settings(world: World) -> Callable[..., Any]:
    from feddx.serve.settings import ServeSettings

    def make(**overrides: Any) -> ServeSettings:
        values: dict[str, Any] = {
            "model": "tiny-llama",
            "registry": world.root / "registry",
            "keys_file": world.keys_file,
            "audit_log": world.root / "audit" / "audit.jsonl",
            "history_dir": world.root / "histories",
            "candidates": None,
            "batch_window_ms": 1.0,
        }
        values.update(overrides)
        return ServeSettings(**values)

    return make


@pytest.fixture()
def make_client(
    world: World, tokenizer: Any, make_settings: Callable[..., Any]
) -> Iterator[Callable[..., Any]]:
    """``make_client(**settings)``: a started TestClient over a fresh app and Diagnoser."""
    from fastapi.testclient import TestClient

    from feddx.serve.app import create_app

    clients: list[Any] = []

    def make(**overrides: Any) -> Any:
        app = create_app(
            make_settings(**overrides), diagnoser=make_diagnoser(tokenizer), registry=world.registry
        )
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture()
def server(
    world: World, tokenizer: Any, make_settings: Callable[..., Any]
) -> Iterator[Callable[..., str]]:
    """``server(**settings)``: the app on a real uvicorn; returns its base URL."""
    from contextlib import ExitStack

    from feddx.serve.app import create_app

    with ExitStack() as stack:

        def start(**overrides: Any) -> str:
            app = create_app(
                make_settings(**overrides),
                diagnoser=make_diagnoser(tokenizer),
                registry=world.registry,
            )
            return stack.enter_context(running_server(app))

        yield start


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


CDS_BASE = "https://cds.example.org"
CDS_URL = f"{CDS_BASE}/cds-services/feddx-differential"


@pytest.fixture()
def ehr(world: World, make_client: Callable[..., Any]) -> tuple[Any, Callable[..., dict[str, str]]]:
    """A client of a service with an EHR registered for cleveland (public URL ``CDS_BASE``),
    and ``auth(url)``: headers with a fresh JWT that EHR signed for ``url``."""
    from feddx.serve.security import KeyStore

    from .test_security import ec_keypair, make_jwt

    private, public = ec_keypair()
    KeyStore(world.keys_file).add_ehr("https://ehr.example.org", "cleveland", "usa", public)
    client = make_client(public_url=CDS_BASE)

    def auth(url: str = CDS_URL) -> dict[str, str]:
        return bearer(make_jwt(private, aud=url))

    return client, auth


HISTORY_KEY = "5f" * 32


@pytest.fixture(autouse=True)
def _history_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stored histories are encrypted with FEDDX_HISTORY_KEY: every service test has one."""
    monkeypatch.setenv("FEDDX_HISTORY_KEY", HISTORY_KEY)


# The clinician page's browser tests drive Debian's chromium (scripts/test.sh installs it).
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture()
def browser() -> Iterator[Any]:
    """Debian's chromium, headless, driven by Playwright; the test is skipped without it."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (scripts/test.sh installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
        try:
            yield b
        finally:
            b.close()
