"""A real Flower simulation (SuperLink, SuperExec, Ray, two ClientApp workers) of the feddx
app on the tiny model: it completes, writes its outputs, and leaves no process behind."""

from __future__ import annotations

import os
from pathlib import Path

import psutil  # type: ignore[import-untyped]
import pytest

from feddx.federated.config import FederatedConfig
from feddx.federated.simulation import federation_config, run_simulation, write_app_project


def _processes_of(run_dir: Path) -> list[int]:
    """PIDs of live processes started for this run (they inherit its marker variable)."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            env = proc.environ()
        except (psutil.Error, OSError):
            continue
        if env.get("FEDDX_SIMULATION_RUN") == str(run_dir) and proc.pid != os.getpid():
            found.append(proc.pid)
    return found


def test_each_client_gets_its_cpus_and_a_gpu_share_only_when_asked() -> None:
    from flwr.common.config import parse_config_args

    assert federation_config(4, 1) == "num-supernodes=4 client-resources-num-cpus=1"
    parsed = parse_config_args([federation_config(2, 2, 0.5)])
    assert parsed == {
        "num-supernodes": 2,
        "client-resources-num-cpus": 2,
        "client-resources-num-gpus": 0.5,
    }


def test_generated_app_project_declares_the_app_and_the_run_config(tmp_path: Path) -> None:
    import tomllib

    cfg = FederatedConfig(strategy="fedprox", num_rounds=5)
    data = tomllib.loads(write_app_project(tmp_path, cfg).read_text())
    assert data["tool"]["flwr"]["app"]["components"]["serverapp"] == (
        "feddx.federated.server_app:app"
    )
    assert data["tool"]["flwr"]["app"]["config"] == cfg.to_run_config()


@pytest.mark.slow
def test_flower_simulation_runs_two_clients_and_cleans_up(fed_config: FederatedConfig) -> None:
    cfg = fed_config.replace(compression="int8")
    outcome = run_simulation(cfg, timeout=600)
    assert outcome.status == "finished:completed"
    rounds = outcome.history["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert all(r["accepted"] == 2 and r["aggregated"] for r in rounds[1:])
    assert outcome.history["summary"]["final"]["n"] == 4
    assert outcome.leftover_pids == []
    assert _processes_of(cfg.out_path()) == []
    assert "round 2: 2/2 replies accepted" in outcome.log_path.read_text()
