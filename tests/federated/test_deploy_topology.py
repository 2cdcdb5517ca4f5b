"""The topology of ``deploy/k8s`` on loopback: a TLS SuperLink with SuperNode authentication,
its ServerApp executor as a separate process authenticated by the SuperExec shared secret, and
per institution a SuperNode plus its ClientApp executor, all on 127.0.0.1, running a toy app (no
model: seconds per message instead of a model load), and the registration Job's script run
against the live SuperLink. The feddx app itself is deployed in ``test_deploy_loopback.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from feddx.federated.certs import generate_credentials
from feddx.federated.deploy.local import (
    LocalFederation,
    LocalFederationConfig,
    NodeSpec,
)
from feddx.federated.deploy.processes import pid_running

pytestmark = [pytest.mark.slow, pytest.mark.deployment]

REPO = Path(__file__).resolve().parents[2]
TOY_APP = REPO / "tests" / "fixtures" / "deploy" / "toyapp"
REFUSED = 305  # Flower: "Failed to activate SuperNode" (unregistered key)


def _assert_all_stopped(fed: LocalFederation, seen: set[int]) -> None:
    pids = fed.procs.all_pids() | seen
    assert fed.leftover_pids == []
    alive = [p for p in pids if pid_running(p)]
    assert alive == [], f"processes left running: {alive}"


def _registration_script() -> str:
    job = yaml.safe_load(
        (REPO / "deploy" / "k8s" / "superlink" / "register-nodes.yaml").read_text()
    )
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["/bin/sh", "-c"]
    script: str = container["args"][0]
    return script


def test_kubernetes_topology_on_loopback(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "a.jsonl").write_text("{}\n" * 3)
    (shards / "b.jsonl").write_text("{}\n" * 5)
    names = ["hospital-a", "hospital-b", "hospital-c", "intruder"]
    creds, _ = generate_credentials(tmp_path / "certs", names)
    nodes = [
        NodeSpec.for_data("hospital-a", "jsonl", shards / "a.jsonl"),
        NodeSpec.for_data("hospital-b", "jsonl", shards / "b.jsonl"),
    ]
    config = LocalFederationConfig(
        run_dir=tmp_path / "run",
        credentials=tmp_path / "certs",
        nodes=nodes,
        app_dir=TOY_APP,
        run_config={"out-dir": str(tmp_path / "out")},
        isolation="process",
        startup_timeout=90,
    )
    with LocalFederation(config) as fed:
        fed.start()
        names_started = [p.name for p in fed.procs.processes]
        assert "serverapp-executor" in names_started
        assert {"clientapp-executor:hospital-a", "clientapp-executor:hospital-b"} <= set(
            names_started
        )
        # The registration Job's script, as Kubernetes would run it: hospital-a/b are
        # registered already (skipped), hospital-c is new.
        keys = tmp_path / "public-keys"
        keys.mkdir()
        for name in names[:3]:
            (keys / f"{name}.pub").write_bytes(creds.node(name).public_key.read_bytes())
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "SUPERLINK_ADDRESS": fed.address,
            "CA_CERT": str(creds.ca_cert),
            "PUBLIC_KEYS_DIR": str(keys),
            "FLWR_HOME": str(tmp_path / "job-home"),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
        }
        job = subprocess.run(
            ["/bin/sh", "-c", _registration_script()],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert job.returncode == 0, job.stderr
        assert "hospital-a already registered" in job.stdout
        assert "hospital-b already registered" in job.stdout
        assert "registered hospital-c" in job.stdout
        assert len(fed.control.list_nodes()) == 3
        # The key nobody registered is still refused.
        refusal = fed.probe_refused("intruder", creds.node("intruder").private_key)
        assert refusal.exit_code != 0 and refusal.flower_exit_code == REFUSED
        status = fed.run(timeout=180)
        seen = fed.procs.all_pids()
    assert status.completed, f"{status.status} {status.details}: {fed.logs / 'run.log'}"
    _assert_all_stopped(fed, seen)
    # Weighted FedAvg of a+3 (3 cases) and b+5 (5 cases) from zeros: (9 + 25) / 8.
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["final"] == pytest.approx([34 / 8] * 3)


def test_sigterm_stops_the_whole_federation(tmp_path: Path) -> None:
    """`feddx deploy local` killed politely (as the script's trap or CI does) mid-run leaves no
    process behind: not the daemons, not the executors they spawned."""
    import signal
    import time

    import psutil

    shard = tmp_path / "a.jsonl"
    shard.write_text("{}\n")
    certs = tmp_path / "certs"
    generate_credentials(certs, ["hospital-a", "hospital-b"])
    run_dir = tmp_path / "run"
    cli = "import sys\nfrom feddx.cli import main\nsys.exit(main(sys.argv[1:]))"
    argv = [
        sys.executable, "-c", cli, "deploy", "local", "--certs", str(certs),
        "--node", f"hospital-a=jsonl:{shard}", "--node", f"hospital-b=jsonl:{shard}",
        "--app", str(TOY_APP), "--run-dir", str(run_dir),
        # A third node is required but never comes: the run waits until we stop it.
        "--set", f"min-nodes=3 out-dir='{tmp_path / 'out'}'",
    ]  # fmt: skip
    runner = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        run_log = run_dir / "logs" / "run.log"
        while time.monotonic() < deadline and runner.poll() is None:
            if run_log.is_file() and "Starting" in run_log.read_text(errors="replace"):
                break
            time.sleep(0.5)
        assert runner.poll() is None, runner.communicate()
        time.sleep(3)  # let the ServerApp process start too
        tree = psutil.Process(runner.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in tree)
        assert "flower-superlink" in names and names.count("flower-supernode") == 2
        runner.send_signal(signal.SIGTERM)
        _, err = runner.communicate(timeout=90)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert runner.returncode != 0
    assert "Traceback" not in err
    alive = [p.pid for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == [], f"left running: {alive}"
    recorded = [int(line.split()[0]) for line in (run_dir / "pids").read_text().splitlines()]
    assert len(recorded) == 3 and not any(pid_running(p) for p in recorded)
