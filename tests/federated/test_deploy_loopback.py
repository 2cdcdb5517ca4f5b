"""The feddx app on a real deployment on loopback: a TLS SuperLink with SuperNode authentication
and one SuperNode process per institution, over 127.0.0.1. A tiny random Llama on tiny UCI Heart
shards, 2 institutions, 1 round: the round completes, the global adapter is saved, an
unregistered node is refused, each node only ever sees its own data path, no case id reaches a
log, and no process outlives the federation.

Every ClientApp message starts a fresh process (10-12 s of imports on 2 cores): about a minute.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psutil
import pytest

from feddx.federated.certs import generate_credentials
from feddx.federated.deploy.local import (
    LocalFederation,
    LocalFederationConfig,
    prepare_local_data,
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


def _cmdline(pid: int) -> str:
    return " ".join(psutil.Process(pid).cmdline())


@pytest.fixture()
def model_dir(tmp_path: Path, tiny_model: Any, tokenizer: Any) -> Path:
    """The tiny random Llama with SmolLM2's tokenizer, saved where the app can load it by path."""
    d = tmp_path / "tiny-llama"
    tiny_model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


def test_feddx_app_trains_one_round_on_a_tls_federation(tmp_path: Path, model_dir: Path) -> None:
    data = prepare_local_data("uci-heart", tmp_path / "data", max_cases=60)
    nodes = data.nodes[:2]
    generate_credentials(tmp_path / "certs", [n.name for n in nodes] + ["intruder"])
    out = tmp_path / "out"
    config = LocalFederationConfig(
        run_dir=tmp_path / "run",
        credentials=tmp_path / "certs",
        nodes=nodes,
        app_dir=REPO,
        run_config={
            "model": str(model_dir),
            "data": "uci-heart",
            "eval-data": f"jsonl:{data.eval_path}",
            "max-eval-cases": 8,
            "num-clients": 2,
            "num-rounds": 1,
            "min-train-clients": 2,
            "min-available-clients": 2,
            "local-steps": 2,
            "batch-size": 4,
            "max-prompt-tokens": 64,
            "lora-rank": 4,
            "lora-alpha": 8.0,
            "lora-top-layers": 1,
            "out-dir": str(out),
            "activation-cache-dir": str(tmp_path / "activations"),
        },
        startup_timeout=90,
    )
    seen: set[int] = set()
    with LocalFederation(config) as fed:
        fed.start()
        # TLS: the SuperLink serves our certificate (start() completed a verified handshake)
        # and every SuperNode was told to verify it against our CA.
        for name, proc in fed.supernodes.items():
            cmd = _cmdline(proc.pid)
            assert f"--root-certificates {fed.creds.ca_cert}" in cmd
            assert "--insecure" not in cmd
            # Each node knows its own data path and no other institution's.
            own = str(
                fed.config.nodes[[n.name for n in nodes].index(name)].node_config["data-path"]
            )
            assert own in cmd
            assert not any(str(n.node_config["data-path"]) in cmd for n in nodes if n.name != name)
        # Node authentication: a SuperNode whose key was never registered is refused.
        refusal = fed.probe_refused("intruder", fed.creds.node("intruder").private_key)
        assert refusal.exit_code != 0 and refusal.flower_exit_code == REFUSED
        status = fed.run(timeout=300)
        seen = fed.procs.all_pids()
    assert status.completed, f"{status.status} {status.details}: {fed.logs / 'run.log'}"
    _assert_all_stopped(fed, seen)

    adapter = out / "global_adapter"
    assert (adapter / "adapter_model.safetensors").stat().st_size > 0
    history = json.loads((out / "history.json").read_text())
    assert history["summary"]["rounds_completed"] == 1
    assert history["summary"]["rejected"] == 0

    # Privacy: no case id of any shard or of the validation set appears in any log.
    ids = {
        json.loads(line)["case_id"]
        for f in [*data.partition_dir.glob("client_*.jsonl"), data.eval_path]
        for line in f.read_text().splitlines()
    }
    logs = "\n".join(p.read_text(errors="replace") for p in fed.logs.glob("*.log"))
    leaked = [i for i in ids if i in logs]
    assert not leaked, f"case ids in logs: {leaked[:3]}"
