"""The validation filter in front of aggregate_train: bad replies are rejected and logged
without data, the round goes on with the rest, and the aggregate does not depend on the order
replies arrive in."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from fed_helpers import KEYS, global_adapter, reply, update
from flwr.app import (
    Array,
    ArrayRecord,
    Error,
    Message,
    MessageType,
    RecordDict,
)
from flwr.serverapp.strategy import FedAvg

from feddx.federated.codec import encode_update, from_array_record, to_array_record
from feddx.federated.guard import GuardedStrategy
from feddx.federated.inprocess import _set_task_identity


def guarded(**kw: float) -> GuardedStrategy:
    g = GuardedStrategy(FedAvg(fraction_evaluate=0.0), **kw)  # type: ignore[arg-type]
    g.reference = global_adapter()
    return g


def test_valid_replies_are_averaged_by_num_examples() -> None:
    g = guarded(min_replies=2)
    a, b = update(1), update(2)
    arrays, _ = g.aggregate_train(
        1, [reply(1, to_array_record(a), n=30), reply(2, to_array_record(b), n=10)]
    )
    assert arrays is not None
    out = from_array_record(arrays)
    for k in KEYS:
        np.testing.assert_allclose(out[k], 0.75 * a[k] + 0.25 * b[k], rtol=1e-5, atol=1e-6)
    assert g.last_outcome is not None and g.last_outcome.accepted == 2


def test_nan_wrong_shape_missing_key_and_outsized_updates_are_rejected(
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = [reply(i, to_array_record(update(i))) for i in (1, 2, 3)]
    nan = update(4)
    nan[KEYS[0]][0, 0] = np.nan
    shape = update(5)
    shape[KEYS[1]] = np.zeros((3, 3), np.float32)
    missing = {KEYS[0]: update(6)[KEYS[0]]}
    huge = update(7, scale=50.0)
    bad = [
        reply(4, to_array_record(nan)),
        reply(5, to_array_record(shape)),
        reply(6, to_array_record(missing)),
        reply(7, to_array_record(huge)),
    ]
    g = guarded(min_replies=2, max_update_norm=5.0)
    with caplog.at_level(logging.WARNING, logger="feddx"):
        arrays, _ = g.aggregate_train(3, [*good[:2], *bad, good[2]])
    assert arrays is not None
    outcome = g.last_outcome
    assert outcome is not None and outcome.accepted == 3
    reasons = {r.node_id: r.reason for r in outcome.rejected}
    assert set(reasons) == {4, 5, 6, 7}
    assert "non-finite" in reasons[4] and "shape" in reasons[5]
    assert "missing" in reasons[6] and "norm" in reasons[7]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for node in (4, 5, 6, 7):
        assert f"node {node}" in logged
    # the aggregate is the average of the three good updates only
    expected = {k: np.mean([update(i)[k] for i in (1, 2, 3)], axis=0) for k in KEYS}
    out = from_array_record(arrays)
    for k in KEYS:
        np.testing.assert_allclose(out[k], expected[k], rtol=1e-5, atol=1e-6)


def test_outlier_norms_are_rejected_relative_to_the_round() -> None:
    replies = [reply(i, to_array_record(update(i))) for i in (1, 2, 3)]
    replies.append(reply(9, to_array_record(update(9, scale=1.0))))  # 100x the others
    g = guarded(min_replies=2, outlier_factor=10.0)
    g.aggregate_train(1, replies)
    assert g.last_outcome is not None
    assert [r.node_id for r in g.last_outcome.rejected] == [9]


def test_failed_and_missing_clients_leave_the_round_to_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _set_task_identity()
    instruction = Message(RecordDict(), dst_node_id=5, message_type=MessageType.TRAIN)
    failed = Message(Error(code=2, reason="<'secret patient text'>"), reply_to=instruction)
    g = guarded(min_replies=2)
    with caplog.at_level(logging.WARNING, logger="feddx"):
        arrays, _ = g.aggregate_train(
            1, [reply(1, to_array_record(update(1))), failed, reply(2, to_array_record(update(2)))]
        )
    assert arrays is not None and g.last_outcome is not None
    assert g.last_outcome.failed == 1 and g.last_outcome.accepted == 2
    assert "secret" not in caplog.text  # an error's reason may carry client text: never logged


def test_too_few_valid_replies_keep_the_global_adapter() -> None:
    g = guarded(min_replies=3)
    arrays, metrics = g.aggregate_train(1, [reply(i, to_array_record(update(i))) for i in (1, 2)])
    assert arrays is None and metrics is None
    assert g.last_outcome is not None and not g.last_outcome.aggregated


def test_bad_metrics_are_rejected() -> None:
    g = guarded(min_replies=1)
    replies = [
        reply(1, to_array_record(update(1)), metrics={"num-examples": 0}),
        reply(
            2, to_array_record(update(2)), metrics={"num-examples": 5, "train-loss": float("nan")}
        ),
        reply(3, to_array_record(update(3)), metrics={"num-examples": 5}),
    ]
    g.aggregate_train(1, replies)
    assert g.last_outcome is not None
    assert sorted(r.node_id for r in g.last_outcome.rejected) == [1, 2]


def test_compressed_replies_are_decoded_before_aggregation() -> None:
    g = guarded(min_replies=2)
    glob = global_adapter()
    replies = []
    for i in (1, 2):
        arrays, codec, _ = encode_update(update(i), glob, "int8")
        replies.append(reply(i, arrays, codec=codec))
    arrays, _ = g.aggregate_train(1, replies)
    assert arrays is not None
    out = from_array_record(arrays)
    expected = {k: (update(1)[k] + update(2)[k]) / 2 for k in KEYS}
    for k in KEYS:
        np.testing.assert_allclose(out[k], expected[k], atol=2e-4)


def test_aggregate_is_independent_of_reply_order() -> None:
    def run(order: list[int]) -> dict[str, np.ndarray]:
        g = guarded(min_replies=1)
        arrays, _ = g.aggregate_train(
            1, [reply(i, to_array_record(update(i)), n=7 + i) for i in order]
        )
        assert arrays is not None
        return from_array_record(arrays)

    a, b = run([1, 2, 3, 4]), run([4, 2, 1, 3])
    for k in KEYS:
        assert np.array_equal(a[k], b[k])  # bitwise, not just close


def test_array_record_that_is_not_numpy_is_malformed() -> None:
    g = guarded(min_replies=1)
    weird = ArrayRecord(
        {k: Array(dtype="float32", shape=(1,), stype="torch.raw", data=b"1234") for k in KEYS}
    )
    good = reply(2, to_array_record(update(2)))
    g.aggregate_train(1, [reply(1, weird), good])
    assert g.last_outcome is not None
    assert [r.node_id for r in g.last_outcome.rejected] == [1]
