"""Whole federations of the real ServerApp loop and ClientApp handlers, in one process
(tiny Llama, 36 cases): outputs, dropouts and timeouts, hostile clients, crash and resume,
privacy accounting, and that no raw text ever leaves a node."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fed_helpers import CANARY, node_configs
from flwr.app import ArrayRecord, Message

from feddx.federated.client_app import app as client_app
from feddx.federated.codec import ARRAYS_KEY, PAYLOAD, content_bytes
from feddx.federated.config import FederatedConfig
from feddx.federated.inprocess import InProcessGrid, ReplyHook
from feddx.federated.server_app import GLOBAL_ADAPTER_DIR, FederationResult, run_server


def federate(
    cfg: FederatedConfig, hook: ReplyHook | None = None, **kw: Any
) -> tuple[FederationResult, InProcessGrid]:
    grid = InProcessGrid(
        client_app, cfg.to_run_config(), node_configs(cfg.num_clients), reply_hook=hook
    )
    return run_server(grid, cfg, **kw), grid


def test_a_federation_trains_evaluates_and_writes_its_outputs(fed_config: FederatedConfig) -> None:
    result, grid = federate(fed_config)
    out = fed_config.out_path()
    assert result.rounds_completed == 2 and result.resumed_from == 0
    history = json.loads((out / "history.json").read_text())
    rounds = history["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    for r in rounds[1:]:
        assert r["accepted"] == 2 and r["aggregated"]
        assert r["bytes_sent"] > 0 and r["bytes_received"] > 0
        assert r["train_loss"] > 0
    assert "eval" not in rounds[1]  # eval-every = 2
    for r in (rounds[0], rounds[2]):
        assert r["eval"]["n"] == 4 and r["eval"]["val_loss"] > 0
    assert history["summary"]["rounds_completed"] == 2
    assert (out / "plots" / "metrics.png").stat().st_size > 0
    assert (out / "plots" / "bytes.png").stat().st_size > 0
    # the global adapter changed, and is saved where `feddx evaluate --adapter` can load it
    init = result.history[0]
    assert init["round"] == 0
    from feddx.federated.task import adapter_model
    from feddx.model.adapter import adapter_state, load_adapter

    am = adapter_model(fed_config)
    info = load_adapter(am.model, out / GLOBAL_ADAPTER_DIR, base_fingerprint=am.fingerprint)
    assert info.metadata["federated_round"] == 2
    # the held-out split, so `feddx evaluate --adapter` scores the server's validation cases
    split = (info.metadata["split"], info.metadata["test_fraction"], info.metadata["seed"])
    assert split == ("train", fed_config.validation_fraction, fed_config.seed)
    # the server records the budget it trained with and the temperature it fitted on its
    # validation cases for the saved round
    assert info.max_prompt_tokens == fed_config.max_prompt_tokens
    final = result.history[-1]["eval"]
    assert info.temperature == final["temperature"] and info.temperature != 1.0
    assert info.temperature_source == f"server validation split ({int(final['n'])} cases), round 2"
    saved = {k: v.numpy() for k, v in adapter_state(am.model).items()}
    assert all(np.array_equal(saved[k], result.global_arrays[k]) for k in saved)
    # the logged evaluations are the scorer's: re-scoring the initial and the final adapter
    # on the server's validation cases gives the recorded figures exactly
    from feddx.federated.task import evaluate_adapter, task_data

    data = task_data(fed_config)
    for r, state in ((rounds[0], am.initial), (rounds[2], result.global_arrays)):
        again = evaluate_adapter(
            am,
            state,
            data.validation[: fed_config.max_eval_cases or None],
            data.candidates,
            data.icd10,
            max_prompt_tokens=fed_config.max_prompt_tokens,
        )
        timing = {"latency_ms_p50", "latency_ms_p95"}
        assert {k: v for k, v in again.items() if k not in timing} == {
            k: v for k, v in r["eval"].items() if k not in timing
        }
    assert any(not np.array_equal(am.initial[k], result.global_arrays[k]) for k in saved)
    # the reply is the adapter only: its tensors are exactly the LoRA parameters
    reply = grid.replies[0]
    assert set(reply.content[ARRAYS_KEY].keys()) == set(am.initial)


def test_dropouts_and_timeouts_leave_the_round_to_those_who_answered(
    fed_config: FederatedConfig,
) -> None:
    cfg = fed_config.replace(num_clients=3, min_train_clients=2, num_rounds=3, eval_every=3)

    def hook(rnd: int, node: int, reply: Message) -> Message | None:
        if rnd == 1 and node == 1003:  # one client drops out
            return None
        if rnd == 2 and node in (1001, 1002):  # two miss the deadline: below the minimum
            return None
        return reply

    result, _ = federate(cfg, hook)
    r1, r2, r3 = result.history[1:]
    assert (r1["sampled"], r1["replies"], r1["accepted"], r1["aggregated"]) == (3, 2, 2, True)
    assert (r2["replies"], r2["accepted"], r2["aggregated"]) == (1, 1, False)
    assert (r3["accepted"], r3["aggregated"]) == (3, True)
    assert result.rounds_completed == 3


def test_hostile_and_broken_updates_are_rejected_and_the_round_goes_on(
    fed_config: FederatedConfig, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = fed_config.replace(
        num_clients=4, min_train_clients=2, num_rounds=1, max_update_norm=100.0, max_cases=16
    )

    def hook(rnd: int, node: int, reply: Message) -> Message | None:
        arrays = reply.content[ARRAYS_KEY]
        first = sorted(arrays.keys())[0]
        if node == 1001:  # NaNs
            bad = arrays[first].numpy().copy()
            bad[...] = np.nan
            arrays[first] = type(arrays[first])(bad)
        elif node == 1002:  # wrong shape
            arrays[first] = type(arrays[first])(np.zeros((2, 2), np.float32))
        elif node == 1003:  # an outsized (poisoned) update
            arrays[first] = type(arrays[first])(arrays[first].numpy() * 1e6)
        return reply

    with caplog.at_level(logging.WARNING, logger="feddx"):
        result, _ = federate(cfg, hook)
    r1 = result.history[1]
    reasons = {x["node"]: x["reason"] for x in r1["rejected"]}
    assert set(reasons) == {1001, 1002, 1003}
    assert "non-finite" in reasons[1001] and "shape" in reasons[1002] and "norm" in reasons[1003]
    # only one valid reply < min-train-clients 2: the round completes without aggregating
    assert r1["accepted"] == 1 and not r1["aggregated"] and result.rounds_completed == 1
    assert "rejected update from node 1003" in caplog.text


def test_a_crashed_server_resumes_to_the_same_result(
    fed_config: FederatedConfig, tmp_path: Path
) -> None:
    """FedAdam (server state), top-k with error feedback (client state on disk): a server
    killed in the middle of round 3 and restarted ends bitwise where an uninterrupted run
    ends."""
    base = fed_config.replace(
        num_rounds=3,
        strategy="fedadam",
        compression="topk",
        topk_fraction=0.3,
        eval_every=3,
        fedopt_eta=0.05,
        max_cases=16,
    )
    straight, _ = federate(
        base.replace(
            out_dir=str(tmp_path / "straight"), client_state_dir=str(tmp_path / "straight-clients")
        )
    )

    crashing = base.replace(
        out_dir=str(tmp_path / "crash"), client_state_dir=str(tmp_path / "crash-clients")
    )

    class Killed(Exception):
        pass

    def kill_in_round_3(rnd: int, node: int, reply: Message) -> Message | None:
        if rnd == 3:
            raise Killed  # the server process dies while collecting round 3
        return reply

    with pytest.raises(Killed):
        federate(crashing, kill_in_round_3)
    resumed, _ = federate(crashing)
    assert resumed.resumed_from == 2 and resumed.rounds_completed == 3
    for k in straight.global_arrays:
        assert np.array_equal(straight.global_arrays[k], resumed.global_arrays[k]), k

    def quality(h: dict[str, Any]) -> dict[str, float]:
        return {k: v for k, v in h["eval"].items() if "latency" not in k}

    assert quality(resumed.history[-1]) == quality(straight.history[-1])
    # a finished run is not trained again, and other settings are refused
    again, _ = federate(crashing)
    assert again.resumed_from == 3
    from feddx.errors import ConfigError

    with pytest.raises(ConfigError, match="other settings"):
        federate(crashing.replace(learning_rate=0.1))


@pytest.mark.parametrize("mode", ["central", "local"])
def test_differential_privacy_reports_epsilon_per_round_and_total(
    fed_config: FederatedConfig, mode: str
) -> None:
    cfg = fed_config.replace(dp=mode, dp_noise_multiplier=1.0, dp_clipping_norm=0.5)
    result, _ = federate(cfg)
    r1, r2 = result.history[1:]
    assert r1["epsilon_round"] > 0 and r1["epsilon_total"] < r2["epsilon_total"]
    assert result.history[-1]["delta"] == cfg.dp_delta
    # The run's summary says which replies were aggregated: under central DP every valid one
    # (the norm rules would be a selection the ledger does not account for).
    summary = json.loads((cfg.out_path() / "history.json").read_text())["summary"]
    if mode == "central":
        assert summary["client_selection"].startswith(
            "all valid replies aggregated (outlier filter and max-update-norm off under central DP"
        )
    else:
        assert "max-update-norm 100" in summary["client_selection"]
        assert "post-processing, epsilon unchanged" in summary["client_selection"]


def _strings_in(obj: Any) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for k, v in obj.items() for s in [*_strings_in(k), *_strings_in(v)]]
    if isinstance(obj, list | tuple):
        return [s for v in obj for s in _strings_in(v)]
    return []


def test_no_raw_text_leaves_a_node(
    fed_config: FederatedConfig, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """Every message both ways holds only tensors, numbers and a few fixed names: no case
    text, prompt, label or id, in any record, key or byte, nor in logs or the server's files."""
    from feddx.federated.task import task_data

    cfg = fed_config.replace(compression="int8", num_rounds=1)
    with caplog.at_level(logging.DEBUG):
        result, grid = federate(cfg)
    data = task_data(cfg)
    secrets = {CANARY}
    for case in [*data.train, *data.validation]:
        secrets |= {case.case_id, case.patient_id or CANARY, case.text or CANARY}
        secrets |= {f.name for f in case.findings}
    labels = set(data.candidates)
    allowed_strings = {"none", "float16", "int8", "topk"}
    assert grid.delivered and grid.replies
    for msg in [*grid.delivered, *grid.replies]:
        content = msg.content
        for name, record in content.items():
            assert name in {"arrays", "config", "metrics", "codec"}
            if isinstance(record, ArrayRecord):
                for key in record:
                    assert key == PAYLOAD or "lora_" in key
                    assert record[key].stype == "numpy.ndarray"
                    assert record[key].dtype in {"float32", "uint8"}
            else:
                for key, value in record.items():
                    assert key.replace("-", "").isalnum(), key
                    for s in _strings_in(value):
                        assert s in allowed_strings, (name, key)
        # and no secret anywhere in the serialized bytes
        from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

        blob = b"".join(o.deflate() for o in get_all_nested_objects(content).values())
        for secret in secrets | labels:
            assert secret.encode() not in blob
        assert content_bytes(content) == len(blob)
    logged = caplog.text + capfd.readouterr().err
    for secret in secrets:
        assert secret not in logged
    for path in cfg.out_path().rglob("*"):
        if path.is_file() and path.suffix in {".json", ".txt", ".npz", ""}:
            raw = path.read_bytes()
            assert CANARY.encode() not in raw, path
    assert result.rounds_completed == 1
