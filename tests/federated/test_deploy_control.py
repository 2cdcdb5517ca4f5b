"""Specification of the deployment plumbing that needs no running federation: config strings
Flower must parse back exactly, process environments, and stopping process trees."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

from feddx.errors import ConfigError
from feddx.federated.deploy.control import (
    FLOWER_ENV,
    _last_json_object,
    node_config_arg,
    process_env,
    write_connection,
    write_toml_table,
)
from feddx.federated.deploy.local import NodeSpec, free_loopback_ports
from feddx.federated.deploy.processes import ProcessSet, pid_running


@pytest.mark.parametrize(
    "path",
    [
        "/data/hospital-a/cases.jsonl",
        "/data/with space/cases.jsonl",
        "/data/o'neil/cases.jsonl",
        r"C:\data\hospital\cases.jsonl",
        "/data/ünïcode/cases.jsonl",
    ],
)
def test_node_config_survives_flowers_own_parser(path: str) -> None:
    config = {"data-source": "jsonl", "data-path": path, "max-cases": 50, "dp": True}
    assert parse_config_args([node_config_arg(config)]) == config


def test_node_config_refuses_what_flower_cannot_parse() -> None:
    with pytest.raises(ConfigError, match="both quote kinds"):
        node_config_arg({"data-path": "/a'b\"c"})
    with pytest.raises(ConfigError, match="line break"):
        node_config_arg({"data-path": "/a\nb"})
    with pytest.raises(ConfigError, match="key"):
        node_config_arg({"data path": "/a"})


def test_run_config_file_round_trips_through_flower(tmp_path: Path) -> None:
    values = {"num-server-rounds": 1, "lr": 0.0002, "model": '/m/tiny "llama"', "dp": False}
    path = write_toml_table(tmp_path / "run-config.toml", values)
    assert parse_config_args([str(path)]) == values


def test_connection_config_names_the_superlink_and_our_ca(tmp_path: Path) -> None:
    import tomli
    from flwr.cli.flower_config import parse_superlink_connection

    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    path = write_connection(tmp_path / "home", "127.0.0.1:9093", ca)
    raw = tomli.loads(path.read_text())
    assert raw["superlink"]["default"] == "feddx"
    conn = parse_superlink_connection(raw["superlink"]["feddx"], "feddx")
    assert conn.address == "127.0.0.1:9093"
    assert conn.root_certificates == str(ca.resolve())
    assert not conn.insecure


def test_process_env_is_offline_and_private(tmp_path: Path) -> None:
    env = process_env({"PATH": "/usr/bin", "HOME": "/root"}, tmp_path / "home", OMP_NUM_THREADS="1")
    for key, value in FLOWER_ENV.items():
        assert env[key] == value
    assert env["FLWR_HOME"] == str(tmp_path / "home")
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    assert env["OMP_NUM_THREADS"] == "1"


def test_cli_json_is_found_after_other_output() -> None:
    assert _last_json_object('Loading...\n{"success": true, "run-id": "7"}\n') == {
        "success": True,
        "run-id": "7",
    }
    assert _last_json_object("no json here") is None


def test_node_spec_parses_name_source_and_absolute_path(tmp_path: Path) -> None:
    spec = NodeSpec.parse("hospital-a=jsonl:data/a.jsonl")
    assert spec.name == "hospital-a"
    assert spec.node_config["data-source"] == "jsonl"
    assert Path(str(spec.node_config["data-path"])).is_absolute()
    assert NodeSpec.parse("hospital-b=uci-heart").node_config == {"data-source": "uci-heart"}
    with pytest.raises(ConfigError, match="NAME=SOURCE:PATH"):
        NodeSpec.parse("hospital-a")


def test_free_ports_are_distinct_loopback_ports() -> None:
    ports = free_loopback_ports(5)
    assert len(set(ports)) == 5
    assert all(1024 <= p <= 65535 for p in ports)


# A daemon that, like flower-superlink, spawns a helper in a *new session* (outside its process
# group) and a helper of its own; stopping must reach all three.
_DAEMON = """
import subprocess, sys, time
detached = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                            start_new_session=True)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
print(detached.pid, child.pid, flush=True)
time.sleep(300)
"""


def test_process_set_stops_the_daemon_and_everything_it_spawned(tmp_path: Path) -> None:
    with ProcessSet(tmp_path / "pids", grace_seconds=5) as procs:
        daemon = procs.start(
            "daemon",
            [sys.executable, "-c", _DAEMON],
            log_path=tmp_path / "daemon.log",
            env={"PATH": "/usr/bin"},
            cwd=tmp_path,
        )
        deadline = time.monotonic() + 20
        while not daemon.log_path.read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.05)
        helper_pids = [int(p) for p in daemon.log_path.read_text().split()]
        procs.refresh_descendants()
        assert set(helper_pids) <= procs.all_pids()
        assert all(pid_running(p) for p in [daemon.pid, *helper_pids])
    assert procs.stop() == []
    for pid in [daemon.pid, *helper_pids]:
        assert not pid_running(pid), f"pid {pid} survived"
    assert (tmp_path / "pids").read_text().split() == [str(daemon.pid), "daemon"]


def test_a_missing_executable_is_a_deployment_error(tmp_path: Path) -> None:
    from feddx.federated.deploy.processes import DeploymentError

    with (
        ProcessSet(tmp_path / "pids") as procs,
        pytest.raises(DeploymentError, match="cannot start"),
    ):
        procs.start(
            "ghost",
            ["/nonexistent/flower-ghost"],
            log_path=tmp_path / "g.log",
            env={},
            cwd=tmp_path,
        )


def test_relative_credentials_are_made_absolute_for_the_daemons(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each daemon runs in its own working directory: a relative --certs must not reach them."""
    from feddx.federated.certs import generate_credentials
    from feddx.federated.deploy.local import LocalFederation, LocalFederationConfig

    monkeypatch.chdir(tmp_path)
    generate_credentials(Path("certs"), ["hospital-a"])
    app = tmp_path / "app"
    app.mkdir()
    (app / "pyproject.toml").write_text("[tool.flwr.app]\npublisher = 'x'\n")
    fed = LocalFederation(
        LocalFederationConfig(
            run_dir=Path("run"),
            credentials=Path("certs"),
            nodes=[NodeSpec.for_data("hospital-a", "jsonl", Path("a.jsonl"))],
            app_dir=Path("app"),
        )
    )
    assert fed.creds.ca_cert.is_absolute() and fed.creds.server_key.is_absolute()
    assert fed.creds.node("hospital-a").private_key.is_absolute()
    assert fed.run_dir.is_absolute()
    assert fed.procs.processes == [], "constructing a federation starts nothing"


def test_a_fault_drill_signals_only_processes_of_its_own_federation(tmp_path: Path) -> None:
    """``kill`` is SIGKILL by PID, so it refuses any PID the federation did not start or see
    spawned (here: the test process itself), and it finds app processes by executable name
    among its own daemons' descendants only."""
    from feddx.federated.certs import generate_credentials
    from feddx.federated.deploy.local import LocalFederation, LocalFederationConfig
    from feddx.federated.deploy.processes import DeploymentError

    generate_credentials(tmp_path / "certs", ["hospital-a"])
    app = tmp_path / "app"
    app.mkdir()
    (app / "pyproject.toml").write_text("[tool.flwr.app]\npublisher = 'x'\n")
    fed = LocalFederation(
        LocalFederationConfig(
            run_dir=tmp_path / "run",
            credentials=tmp_path / "certs",
            nodes=[NodeSpec.for_data("hospital-a", "jsonl", tmp_path / "a.jsonl")],
            app_dir=app,
        )
    )
    with pytest.raises(DeploymentError, match=f"PID {os.getpid()} is not a process of this"):
        fed.kill(os.getpid())
    script = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    )
    daemon = fed.procs.start(
        "daemon", [sys.executable, "-c", script], log_path=tmp_path / "d.log", env={}, cwd=tmp_path
    )
    try:
        deadline = time.monotonic() + 20
        while not (kids := fed.app_processes(daemon, Path(sys.executable).name)):
            assert time.monotonic() < deadline, "the daemon's child never appeared"
            time.sleep(0.1)
        assert [k.pid for k in kids] != [daemon.pid]
        fed.kill(kids[0].pid)
        deadline = time.monotonic() + 10
        while pid_running(kids[0].pid):  # gone (a zombie until its parent reaps it)
            assert time.monotonic() < deadline, "the killed process is still running"
            time.sleep(0.05)
        assert daemon.alive()  # only the one process was killed
    finally:
        assert fed.stop() == []
