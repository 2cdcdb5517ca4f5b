"""``feddx deploy superlink start|status|stop``: the local SuperLink ``flwr run . local`` uses,
started without runtime dependency installation, and stopped with everything it spawned
(issue 26 item 4)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from feddx.cli import main
from feddx.federated.deploy.flwr_local import (
    NO_INSTALL_FLAG,
    find_local_superlink,
    stop_local_superlink,
)
from feddx.federated.deploy.local import free_loopback_ports


@pytest.fixture()
def flwr_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private FLWR_HOME and free ports: nothing here touches a user's own SuperLink."""
    http, control = free_loopback_ports(2)
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr"))
    monkeypatch.setenv("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", str(http))
    monkeypatch.setenv("FLWR_LOCAL_CONTROL_API_PORT", str(control))
    monkeypatch.setenv("FLWR_DISABLE_UPDATE_CHECK", "1")
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    yield tmp_path / "flwr"
    stop_local_superlink(grace=5.0)  # whatever a failed assertion left behind


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_start_installs_nothing_and_stop_leaves_no_process(
    flwr_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["deploy", "superlink", "status"]) == 0
    assert "no local SuperLink running" in capsys.readouterr().out

    assert main(["deploy", "superlink", "start"]) == 0
    assert "installs nothing at run time" in capsys.readouterr().out
    link = find_local_superlink()
    assert link is not None and not link.installs_dependencies
    assert NO_INSTALL_FLAG in psutil.Process(link.pid).cmdline()
    # Where Flower's own 'flwr run . local' looks for its managed SuperLink.
    assert link.log_file == flwr_home / "local-superlink" / "superlink.log"

    assert main(["deploy", "superlink", "start"]) == 0  # already running: reused
    assert f"pid {link.pid}" in capsys.readouterr().out

    assert main(["deploy", "superlink", "status", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["running"] and body["pid"] == link.pid and body["installs_dependencies"] is False

    assert main(["deploy", "superlink", "stop"]) == 0
    assert "stopped the local SuperLink" in capsys.readouterr().out
    assert all(_gone(pid) for pid in (link.pid, *link.helper_pids))
    assert find_local_superlink() is None
