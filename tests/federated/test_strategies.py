"""The strategy factory: every name is Flower's own implementation, each aggregates LoRA
replies through the guard, FedProx tells clients its mu, central DP noises the clipped mean, and a
strategy's internal state survives a checkpoint round trip."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fed_helpers import KEYS, global_adapter, reply, update
from flwr.app import ConfigRecord, MetricRecord
from flwr.clientapp import ClientApp
from flwr.serverapp import strategy as flwr_strategy

from feddx.federated.central_dp import ClippedMeanDP
from feddx.federated.checkpoint import (
    CheckpointError,
    ServerCheckpoint,
    capture_strategy_state,
    load_latest,
    restore_strategy_state,
    save_checkpoint,
)
from feddx.federated.codec import from_array_record, to_array_record
from feddx.federated.config import STRATEGIES, FederatedConfig
from feddx.federated.inprocess import InProcessGrid
from feddx.federated.strategies import build_strategy, client_selection

FLOWER_CLASS = {
    "fedavg": flwr_strategy.FedAvg,
    "fedprox": flwr_strategy.FedProx,
    "fedadam": flwr_strategy.FedAdam,
    "fedyogi": flwr_strategy.FedYogi,
    "fedadagrad": flwr_strategy.FedAdagrad,
    "fedavgm": flwr_strategy.FedAvgM,
    "fedmedian": flwr_strategy.FedMedian,
    "fedtrimmedavg": flwr_strategy.FedTrimmedAvg,
    "krum": flwr_strategy.Krum,
}


def grid(n: int = 4) -> InProcessGrid:
    return InProcessGrid(ClientApp(), {}, [{"partition-id": i} for i in range(n)])


def one_round(cfg: FederatedConfig, n: int = 4) -> tuple[dict[str, np.ndarray], list]:
    s = build_strategy(cfg, n)
    g = grid(n)
    messages = list(s.configure_train(1, to_array_record(global_adapter()), ConfigRecord(), g))
    arrays, _ = s.aggregate_train(
        1,
        [reply(m.metadata.dst_node_id, to_array_record(update(i))) for i, m in enumerate(messages)],
    )
    assert arrays is not None
    return from_array_record(arrays), messages


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_is_flowers_and_aggregates(name: str) -> None:
    cfg = FederatedConfig(strategy=name, num_clients=4)  # type: ignore[arg-type]
    s = build_strategy(cfg, 4)
    assert type(s.inner) is FLOWER_CLASS[name]
    out, messages = one_round(cfg)
    assert len(messages) == 4
    assert set(out) == set(KEYS)
    assert all(np.all(np.isfinite(v)) for v in out.values())
    # every strategy moves the adapter towards the clients' updates
    assert not np.array_equal(out[KEYS[1]], global_adapter()[KEYS[1]])


def test_fedprox_sends_its_mu_to_clients() -> None:
    _, messages = one_round(FederatedConfig(strategy="fedprox", proximal_mu=0.05))
    assert all(m.content["config"]["proximal-mu"] == 0.05 for m in messages)
    _, messages = one_round(FederatedConfig(strategy="fedavg"))
    assert all("proximal-mu" not in m.content["config"] for m in messages)


def test_fraction_train_samples_a_subset() -> None:
    cfg = FederatedConfig(fraction_train=0.5, min_train_clients=2, num_clients=6)
    _, messages = one_round(cfg, n=6)
    assert len(messages) == 3


def test_central_dp_wraps_clips_and_noises() -> None:
    cfg = FederatedConfig(dp="central", dp_clipping_norm=0.01, dp_noise_multiplier=0.5)
    s = build_strategy(cfg, 4)
    assert isinstance(s.inner, ClippedMeanDP)
    assert isinstance(s.inner.inner, flwr_strategy.FedAvg)
    assert s.weight_key == "unit-weight"
    g = grid(4)
    np.random.seed(0)
    messages = list(s.configure_train(1, to_array_record(global_adapter()), ConfigRecord(), g))
    replies = []
    for i, m in enumerate(messages):
        r = reply(m.metadata.dst_node_id, to_array_record(update(i, scale=1.0)))
        r.content["metrics"] = MetricRecord({"num-examples": 10, "unit-weight": 1.0})
        replies.append(r)
    arrays, _ = s.aggregate_train(1, replies)
    assert arrays is not None
    out = from_array_record(arrays)
    delta = np.sqrt(sum(np.sum((out[k] - global_adapter()[k]) ** 2) for k in KEYS))
    # clipped to 0.01 per client; noise std 0.5 * 0.01 / 4 per coordinate (128 coordinates)
    assert delta < 0.01 + 6 * 0.5 * 0.01 / 4 * np.sqrt(128)


def _with_norm(seed: int, norm: float) -> dict[str, np.ndarray]:
    """The global adapter plus an update of exactly ``norm`` (L2 over every tensor)."""
    rng = np.random.default_rng(seed)
    g = global_adapter()
    d = {k: rng.standard_normal(v.shape) for k, v in g.items()}
    scale = norm / np.sqrt(sum(np.sum(v**2) for v in d.values()))
    return {k: (g[k] + scale * d[k]).astype(np.float32) for k in g}


def _round(cfg: FederatedConfig, updates: list[dict[str, np.ndarray]]) -> Any:
    s = build_strategy(cfg, len(updates))
    g = grid(len(updates))
    messages = list(s.configure_train(1, to_array_record(global_adapter()), ConfigRecord(), g))
    replies = []
    for m, u in zip(messages, updates, strict=True):
        r = reply(m.metadata.dst_node_id, to_array_record(u))
        r.content["metrics"] = MetricRecord({"num-examples": 10, "unit-weight": 1.0})
        replies.append(r)
    arrays, _ = s.aggregate_train(1, replies)
    return s, arrays


def test_a_two_client_round_rejects_an_outsized_update_by_default() -> None:
    """The relative rule needs 3 replies; the absolute bound is on by default, so two
    clients are protected too. An honest update (its norm as measured on real runs, well
    under the bound) is kept."""
    cfg = FederatedConfig(num_clients=2, min_train_clients=1, min_available_clients=2)
    limit = cfg.max_update_norm
    assert limit > 0
    s, arrays = _round(cfg, [_with_norm(1, limit / 20), _with_norm(2, 10 * limit)])
    outcome = s.last_outcome
    assert arrays is not None and outcome is not None
    assert outcome.accepted == 1 and len(outcome.rejected) == 1
    assert f"> limit {limit:g}" in outcome.rejected[0].reason
    assert outcome.update_norms == [pytest.approx(limit / 20, rel=1e-4)]


def test_central_dp_aggregates_every_valid_reply_and_clips_instead_of_selecting() -> None:
    cfg = FederatedConfig(
        dp="central",
        dp_clipping_norm=1.0,
        dp_noise_multiplier=1e-9,  # (almost) no noise: the clipping is what is measured
        num_clients=2,
        max_update_norm=5.0,
        outlier_factor=2.0,
    )
    small, huge = _with_norm(1, 0.1), _with_norm(2, 1000.0)
    s, arrays = _round(cfg, [small, huge])
    assert (s.max_update_norm, s.outlier_factor) == (0.0, 0.0)
    assert s.last_outcome is not None and s.last_outcome.accepted == 2
    assert s.last_outcome.rejected == []
    out = from_array_record(arrays)
    delta = np.sqrt(sum(np.sum((out[k] - global_adapter()[k]) ** 2) for k in KEYS))
    assert delta <= (0.1 + 1.0) / 2 + 1e-4  # the outsized update counts for at most the clip
    assert client_selection(cfg) == (
        "all valid replies aggregated (outlier filter and max-update-norm off under central DP; "
        "every update clipped to dp-clipping-norm 1)"
    )


def test_local_dp_keeps_the_norm_rules_as_post_processing() -> None:
    cfg = FederatedConfig(dp="local", max_update_norm=5.0, outlier_factor=10.0)
    s = build_strategy(cfg, 4)
    assert (s.max_update_norm, s.outlier_factor) == (5.0, 10.0)
    assert client_selection(cfg) == (
        "valid replies aggregated except those with an update norm above max-update-norm 5 "
        "or an update norm above 10 x the round's median (with 3+ replies) (applied to DP-SGD "
        "releases: post-processing, epsilon unchanged)"
    )
    assert client_selection(cfg.replace(dp="none", max_update_norm=0.0, outlier_factor=0.0)) == (
        "all valid replies aggregated (no norm limit)"
    )


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad", "fedavgm"])
def test_strategy_state_round_trips_through_a_checkpoint(name: str, tmp_path: Path) -> None:
    cfg = FederatedConfig(strategy=name)  # type: ignore[arg-type]
    first, _ = one_round(cfg)
    s = build_strategy(cfg, 4)
    g = grid(4)
    messages = list(s.configure_train(1, to_array_record(global_adapter()), ConfigRecord(), g))
    s.aggregate_train(
        1,
        [reply(m.metadata.dst_node_id, to_array_record(update(i))) for i, m in enumerate(messages)],
    )
    meta, arrays = capture_strategy_state(s)
    save_checkpoint(tmp_path, ServerCheckpoint(1, "fp", first, [], [], meta, arrays))
    ckpt = load_latest(tmp_path)
    assert ckpt is not None and ckpt.server_round == 1

    fresh = build_strategy(cfg, 4)
    restore_strategy_state(fresh, ckpt.strategy_meta, ckpt.strategy_arrays)

    def second_round(strategy: object) -> dict[str, np.ndarray]:
        msgs = list(strategy.configure_train(2, to_array_record(first), ConfigRecord(), g))  # type: ignore[attr-defined]
        out, _ = strategy.aggregate_train(  # type: ignore[attr-defined]
            2,
            [
                reply(m.metadata.dst_node_id, to_array_record(update(10 + i)))
                for i, m in enumerate(msgs)
            ],
        )
        return from_array_record(out)

    a, b = second_round(s), second_round(fresh)
    for k in KEYS:
        assert np.array_equal(a[k], b[k])


def test_checkpoints_are_atomic_and_corruption_is_reported(tmp_path: Path) -> None:
    for rnd in (1, 2, 3):
        save_checkpoint(tmp_path, ServerCheckpoint(rnd, "fp", global_adapter()))
    ckpt = load_latest(tmp_path)
    assert ckpt is not None and ckpt.server_round == 3
    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("round-*"))
    assert kept == ["round-00002", "round-00003"]
    (tmp_path / "checkpoints" / "round-00003" / "global.npz").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_latest(tmp_path)
