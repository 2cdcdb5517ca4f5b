"""Faults on Flower's real runtime: a TLS SuperLink with SuperNode authentication and one
SuperNode process per institution over loopback (:class:`LocalFederation`), running the feddx
app on the tiny random Llama and small UCI Heart shards.

* a SuperNode process SIGKILLed in the middle of a round: the round completes with the other
  nodes, who are above the minimum;
* the ServerApp process SIGKILLed after round 1 and the run submitted again: it resumes from
  its checkpoint, and its final global adapter equals, tensor for tensor, the one an
  uninterrupted federation of the same nodes reaches;
* a node slower than ``round-timeout`` (node config ``reply-delay``): the round aggregates the
  node that answered in time.

Each test starts its own federation and stops every process it started, by PID, also when it
fails (:func:`federation`); every wait is bounded. Each ClientApp message starts a fresh process
that imports torch (10-12 s on an idle core), so the runs are as small as a fault allows.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from feddx.federated.certs import generate_credentials
from feddx.federated.deploy.control import Scalar
from feddx.federated.deploy.local import (
    LocalData,
    LocalFederation,
    LocalFederationConfig,
    NodeSpec,
    prepare_local_data,
)
from feddx.federated.deploy.processes import DeploymentError, pid_running

pytestmark = [pytest.mark.deployment, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 420.0  # seconds for one submitted run, from `flwr run` to its final state


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> LocalData:
    """60 UCI Heart cases: the server's validation cases and one shard per hospital."""
    return prepare_local_data("uci-heart", tmp_path_factory.mktemp("data"), max_cases=60)


def run_config(
    tiny_llama_dir: Path, data: LocalData, tmp: Path, nodes: int, **overrides: Scalar
) -> dict[str, Scalar]:
    """One local step per round, 4 validation cases, evaluated only after the last round."""
    return {
        "model": str(tiny_llama_dir),
        "data": "uci-heart",
        "eval-data": f"jsonl:{data.eval_path}",
        "max-eval-cases": 4,
        "eval-initial": False,
        "num-clients": nodes,
        "num-rounds": 1,
        "min-train-clients": nodes,
        "min-available-clients": nodes,
        "local-steps": 1,
        "batch-size": 4,
        "max-prompt-tokens": 64,
        "lora-rank": 4,
        "lora-alpha": 8.0,
        "lora-top-layers": 1,
        "out-dir": str(tmp / "out"),
        "activation-cache-dir": str(tmp / "activations"),
        **overrides,
    }


@contextlib.contextmanager
def federation(
    tmp: Path, nodes: list[NodeSpec], config: Mapping[str, Scalar]
) -> Iterator[LocalFederation]:
    """A started loopback federation; on leaving, every process it started or saw is stopped
    and checked gone (also when the test failed)."""
    generate_credentials(tmp / "certs", [n.name for n in nodes])
    fed = LocalFederation(
        LocalFederationConfig(
            run_dir=tmp / "run",
            credentials=tmp / "certs",
            nodes=nodes,
            app_dir=REPO,
            run_config=dict(config),
            threads_per_node=1,  # bitwise-reproducible client training, and no oversubscription
            startup_timeout=120,
        )
    )
    try:
        fed.start()
        yield fed
    finally:
        seen = fed.procs.all_pids()
        left = fed.stop()
        alive = [p for p in seen | fed.procs.all_pids() if pid_running(p)]
        assert left == [] and alive == [], f"processes left running: {left or alive}"


def history(out: Path) -> dict[str, Any]:
    return json.loads((out / "history.json").read_text())


def test_a_supernode_killed_mid_round_leaves_the_round_to_the_others(
    tmp_path: Path, tiny_llama_dir: Path, shards: LocalData
) -> None:
    nodes = shards.nodes[:3]
    config = run_config(
        tiny_llama_dir, shards, tmp_path, 3, **{"min-train-clients": 2, "round-timeout": 240.0}
    )
    with federation(tmp_path, nodes, config) as fed:
        victim = fed.supernodes[nodes[2].name]
        killed: list[float] = []

        def kill_when_training() -> None:
            # Mid-round: the node has received its train message and started its ClientApp.
            if not killed and fed.app_processes(victim, "flwr-clientapp"):
                fed.kill(victim.pid)
                killed.append(time.monotonic())

        status = fed.run(timeout=RUN_TIMEOUT, on_tick=kill_when_training)
        assert killed, "the node never started its ClientApp"
        assert victim.popen.returncode == -9  # SIGKILL, not a shutdown
        assert status.completed, f"{status.status} {status.details}"
    r1 = history(tmp_path / "out")["rounds"][1]
    assert r1["sampled"] == 3
    assert (r1["accepted"], r1["aggregated"]) == (2, True)
    # The dead node's message ends as Flower's "node unavailable" error, or the round timed out.
    assert all(f["code"] == 5 for f in r1["failures"]), r1["failures"]
    assert (tmp_path / "out" / "global_adapter" / "adapter_model.safetensors").is_file()


def test_a_killed_server_resumes_from_its_checkpoint_to_the_uninterrupted_result(
    tmp_path: Path, tiny_llama_dir: Path, shards: LocalData
) -> None:
    from feddx.federated.checkpoint import load_latest

    nodes = shards.nodes[:2]
    out = tmp_path / "out"
    # FedAdam keeps server state (moments) that a resumed run must restore exactly.
    config = run_config(
        tiny_llama_dir,
        shards,
        tmp_path,
        2,
        **{"num-rounds": 2, "strategy": "fedadam", "fedopt-eta": 0.05},
    )
    with federation(tmp_path, nodes, config) as fed:
        assert fed.superlink is not None
        superlink = fed.superlink
        killed: list[int] = []

        def kill_after_round_1() -> None:
            if killed or not (out / "checkpoints" / "round-00001" / "state.json").is_file():
                return
            for app in fed.app_processes(superlink, "flwr-serverapp"):
                fed.kill(app.pid)
                killed.append(app.pid)
            if killed and fed.run_id is not None:
                with contextlib.suppress(DeploymentError):  # it may have ended already
                    fed.control.stop_run(fed.run_id)

        first = fed.run(timeout=RUN_TIMEOUT, on_tick=kill_after_round_1)
        assert killed, "no ServerApp process was found after round 1"
        assert not first.completed and not pid_running(killed[0])
        assert load_latest(out).server_round == 1  # type: ignore[union-attr]
        second = fed.run(timeout=RUN_TIMEOUT)  # the operator submits the run again
        assert second.completed, f"{second.status} {second.details}"
        assert second.run_id != first.run_id
    assert "resuming after round 1" in (fed.logs / "run.log").read_text()
    resumed = load_latest(out)
    assert resumed is not None and resumed.server_round == 2
    assert [h["round"] for h in resumed.history] == [0, 1, 2]

    straight = _uninterrupted(config, nodes, tmp_path / "straight")
    assert set(straight) == set(resumed.global_arrays)
    for k, v in straight.items():
        assert np.array_equal(v, resumed.global_arrays[k]), k


def _uninterrupted(
    config: Mapping[str, Scalar], nodes: list[NodeSpec], out: Path
) -> dict[str, np.ndarray]:
    """The same federation without a crash: the ServerApp loop and the same nodes' ClientApp
    (same node configs, one thread) in this process."""
    import torch

    from feddx.federated.client_app import app as client_app
    from feddx.federated.config import FederatedConfig
    from feddx.federated.inprocess import InProcessGrid
    from feddx.federated.server_app import run_server

    cfg = FederatedConfig.from_run_config({**config, "out-dir": str(out)})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        grid = InProcessGrid(client_app, cfg.to_run_config(), [dict(n.node_config) for n in nodes])
        return run_server(grid, cfg).global_arrays
    finally:
        torch.set_num_threads(threads)


def test_a_node_slower_than_the_round_timeout_is_left_out_of_the_round(
    tmp_path: Path, tiny_llama_dir: Path, shards: LocalData
) -> None:
    fast, slow = shards.nodes[:2]
    straggler = NodeSpec(name=slow.name, node_config={**slow.node_config, "reply-delay": 900.0})
    timeout = 60.0  # the fast node answers in 10-40 s on one busy core
    config = run_config(
        tiny_llama_dir,
        shards,
        tmp_path,
        2,
        **{"min-train-clients": 1, "round-timeout": timeout},
    )
    with federation(tmp_path, [fast, straggler], config) as fed:
        status = fed.run(timeout=RUN_TIMEOUT)
        assert status.completed, f"{status.status} {status.details}"
        # The straggler is still holding its reply when the run is over.
        assert fed.app_processes(fed.supernodes[slow.name], "flwr-clientapp")
    r1 = history(tmp_path / "out")["rounds"][1]
    assert (r1["sampled"], r1["replies"], r1["failed"]) == (2, 1, 0)
    assert (r1["accepted"], r1["aggregated"]) == (1, True)
    assert r1["seconds"] >= timeout
