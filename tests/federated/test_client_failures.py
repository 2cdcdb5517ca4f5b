"""A failed client round tells the server a failure class and that class's fixed text, never
the exception's own words: a DataError quoting a case id and a patient's name reaches neither
the reply, the server's history, nor any log; the server recognises only the table's texts."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from fed_helpers import global_adapter, node_configs, reply, update
from flwr.app import Context, Error, Message, MessageType, RecordDict
from flwr.serverapp.strategy import FedAvg

from feddx.errors import ConfigError, DataError, ModelError
from feddx.federated import client_app as client_module
from feddx.federated.codec import MalformedUpdate, to_array_record
from feddx.federated.config import FederatedConfig
from feddx.federated.failures import (
    DATA,
    FAILURE_CLASSES,
    INTERNAL,
    UNRECOGNISED,
    failure_class,
    failure_class_of,
    local_description,
)
from feddx.federated.guard import GuardedStrategy
from feddx.federated.inprocess import InProcessGrid, _set_task_identity
from feddx.federated.server_app import run_server

CASE_ID = "MRN-0048213"
NAME = "Maria Aparecida Souza"


class _Lines(logging.Handler):
    """Every record of a logger, formatted (the apps' quiet_runtime() stops feddx records
    from propagating to pytest's handler once a ClientApp ran in this process)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def _raised(exc: Exception) -> Exception:
    try:
        raise exc
    except Exception as e:
        return e


def test_every_exception_maps_to_a_fixed_class_and_back() -> None:
    assert failure_class(DataError("x")).name == "data"
    assert failure_class(ConfigError("x")).name == "config"
    assert failure_class(ModelError("x")).name == "model"
    assert failure_class(MalformedUpdate("x")).name == "message"
    assert failure_class(MemoryError()).name == "memory"
    assert failure_class(KeyError("x")) is INTERNAL
    for _, cls in FAILURE_CLASSES:
        assert failure_class_of(cls.reason) == cls.name
    assert DATA.reason == "feddx data: the node's training data cannot be used"
    # Anything but the exact texts is unrecognised, and nothing of it is returned.
    assert failure_class_of(DATA.reason + f" {NAME}") == UNRECOGNISED
    assert failure_class_of(f"<class 'ValueError'>:<'{NAME}'>") == UNRECOGNISED
    assert failure_class_of(None) == UNRECOGNISED


def test_the_local_log_line_has_class_type_location_and_digest_but_no_message() -> None:
    e = _raised(DataError(f"case {CASE_ID!r} of {NAME}: no label"))
    line = local_description(e)
    assert line.startswith(DATA.reason + " (DataError at test_client_failures.py:")
    assert "message digest " in line
    assert CASE_ID not in line and NAME not in line
    # the digest tells two different failures apart
    assert local_description(_raised(DataError("other"))).split()[-1] != line.split()[-1]


def test_a_client_whose_data_error_quotes_an_id_and_a_name_leaks_neither(
    fed_config: FederatedConfig,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    cfg = fed_config.replace(num_rounds=1, min_train_clients=1, min_available_clients=1)
    real = client_module.node_training_cases

    def cases_or_fail(c: FederatedConfig, node: Any) -> list[Any]:
        if node.partition_id == 1:
            # What a loader says about a row it cannot use: the id and the name, verbatim.
            raise DataError(f"{CASE_ID}: patient {NAME!r} has no diagnosis")
        return real(c, node)

    monkeypatch.setattr(client_module, "node_training_cases", cases_or_fail)
    grid = InProcessGrid(client_module.app, cfg.to_run_config(), node_configs(2))
    lines = _Lines()
    loggers = [logging.getLogger(name) for name in ("feddx", "flwr")]
    for logger in loggers:
        logger.addHandler(lines)
    try:
        with caplog.at_level(logging.DEBUG):
            result = run_server(grid, cfg)
    finally:
        for logger in loggers:
            logger.removeHandler(lines)

    failed = [m for m in grid.replies if m.has_error()]
    assert len(failed) == 1
    assert failed[0].error.reason == DATA.reason  # the fixed text, and nothing else
    r1 = result.history[1]
    assert r1["failed"] == 1 and r1["failures"] == [{"node": 1002, "code": 2, "class": "data"}]
    assert r1["accepted"] == 1 and r1["aggregated"]  # the round goes on with the other client
    history = (cfg.out_path() / "history.json").read_text()
    assert json.loads(history)["summary"]["failed"] == 1
    logged = "\n".join([caplog.text, *capfd.readouterr(), *lines.lines])
    assert "local training failed: feddx data:" in logged  # the node's own log line
    assert "node 1002 failed (error code 2, class data)" in logged  # the server's
    for secret in (CASE_ID, NAME, "Maria"):
        assert secret not in logged
        assert secret not in history
        assert secret not in failed[0].error.reason
        for path in cfg.out_path().rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path


def test_a_hostile_reason_is_neither_logged_nor_stored(caplog: pytest.LogCaptureFixture) -> None:
    _set_task_identity()
    instruction = Message(RecordDict(), dst_node_id=7, message_type=MessageType.TRAIN)
    forged = Message(Error(code=2, reason=f"feddx data: {NAME}"), reply_to=instruction)
    g = GuardedStrategy(FedAvg(fraction_evaluate=0.0))
    g.reference = global_adapter()
    with caplog.at_level(logging.WARNING, logger="feddx"):
        g.aggregate_train(1, [reply(1, to_array_record(update(1))), forged])
    assert g.last_outcome is not None
    assert g.last_outcome.to_dict()["failures"] == [{"node": 7, "code": 2, "class": UNRECOGNISED}]
    assert NAME not in caplog.text and "class unrecognised" in caplog.text


def test_a_message_without_arrays_is_a_message_failure(tmp_path: Path) -> None:
    _set_task_identity()
    cfg = FederatedConfig(out_dir=str(tmp_path))
    msg = Message(RecordDict(), dst_node_id=1, message_type=MessageType.TRAIN)
    ctx = Context(
        run_id=1,
        node_id=1,
        node_config={"partition-id": 0, "num-partitions": 2},
        state=RecordDict(),
        run_config=cfg.to_run_config(),
    )
    out = client_module.app(msg, ctx)
    assert out.has_error() and failure_class_of(out.error.reason) == "message"
