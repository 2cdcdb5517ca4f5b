"""Settings precedence (arguments > environment > file > defaults), ``feddx serve keys``, and
an internal error that reaches neither the response nor the log with request data."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from feddx.cli import main
from feddx.errors import ConfigError
from feddx.serve.settings import ServeSettings

from .conftest import bearer
from .world import CASE, World


def test_settings_precedence_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "serve.yaml"
    file.write_text("serve:\n  adapter_cache: 3\n  batch_window_ms: 5\n  model: from-file\n")
    monkeypatch.setenv("FEDDX_SERVE_BATCH_WINDOW_MS", "7.5")
    monkeypatch.setenv("FEDDX_SERVE_MODEL", "1e3")  # text settings stay text
    s = ServeSettings.load(file, adapter_cache=None, model="from-cli")
    assert (s.adapter_cache, s.batch_window_ms, s.model) == (3, 7.5, "from-cli")
    assert ServeSettings.load(file).model == "1e3"
    monkeypatch.setenv("FEDDX_SERVE_ADAPTR_CACHE", "2")
    with pytest.raises(ConfigError, match="unknown setting FEDDX_SERVE_ADAPTR_CACHE"):
        ServeSettings.load(file)
    monkeypatch.delenv("FEDDX_SERVE_ADAPTR_CACHE")
    file.write_text("serve:\n  adapter_cache: 0\n")
    with pytest.raises(ConfigError, match=r"serve\.yaml.*adapter_cache must be >= 1"):
        ServeSettings.load(file)
    file.write_text("serve:\n  jwt_algorithms: [HS256]\n")
    with pytest.raises(ConfigError, match="jwt_algorithms"):
        ServeSettings.load(file)


def test_keys_cli_add_list_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = str(tmp_path / "keys.json")
    assert main(["serve", "keys", "add", "Hospital A", "--region", "Europe", "--keys", keys]) == 0
    out = capsys.readouterr()
    key = out.out.strip()
    assert key.startswith("fdx_") and "hospital-a (europe)" in out.err and "shown once" in out.err
    assert main(["serve", "keys", "add", "ops", "--operator", "--keys", keys]) == 0
    capsys.readouterr()
    assert main(["serve", "keys", "list", "--json", "--keys", keys]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(k["institution"], k["region"], k["role"]) for k in listed["keys"]] == [
        ("hospital-a", "europe", "institution"),
        ("ops", None, "operator"),
    ]
    assert key.split("_", 2)[2] not in json.dumps(listed)
    assert main(["serve", "keys", "revoke", listed["keys"][0]["key_id"], "--keys", keys]) == 0
    assert main(["serve", "keys", "revoke", "nope", "--keys", keys]) != 0
    assert "feddx: error: no key 'nope'" in capsys.readouterr().err
    # A name the registry cannot hold is refused before any key is made.
    assert main(["serve", "keys", "add", "///", "--keys", keys]) == 2
    assert "not a valid registry name" in capsys.readouterr().err


def test_internal_error_leaks_nothing(
    make_client: Callable[..., Any], world: World, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client()
    diagnoser = client.app.state.service.scheduler.pool.diagnoser

    text = "patient " + "SECRET-NAME has chest pain"  # the log shows source lines, not values

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError(text)

    diagnoser.diagnose = broken
    with caplog.at_level(logging.DEBUG):
        r = client.post(
            "/v1/diagnose", json={"case": CASE}, headers=bearer(world.keys["cleveland"])
        )
    assert r.status_code == 500
    assert r.json() == {"detail": "internal error", "request_id": r.headers["x-request-id"]}
    assert "SECRET" not in caplog.text and "ValueError" in caplog.text
    line = (world.root / "audit" / "audit.jsonl").read_text().splitlines()[-1]
    assert json.loads(line)["outcome"] == "error: ValueError" and "SECRET" not in line
