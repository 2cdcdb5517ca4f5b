"""Central DP is DP-FedAvg: the noise is on the clipped mean, a server optimizer only
post-processes it, and the accountant's per-round noise multiplier is the released quantity's
noise over its sensitivity, computed here from the definition on neighbouring client sets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from fed_helpers import KEYS, global_adapter, reply
from flwr.app import ConfigRecord, Message, MetricRecord
from flwr.clientapp import ClientApp

from feddx.errors import ConfigError
from feddx.federated import central_dp
from feddx.federated.codec import from_array_record, to_array_record
from feddx.federated.config import MEAN_STRATEGIES, STRATEGIES, FederatedConfig
from feddx.federated.inprocess import InProcessGrid
from feddx.federated.privacy import central_round_release
from feddx.federated.strategies import build_base_strategy, build_strategy

CLIP, Z, N = 0.5, 1.3, 4


def _update(seed: int, norm: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    d = {k: rng.standard_normal(v.shape) for k, v in global_adapter().items()}
    scale = norm / np.sqrt(sum(np.sum(v**2) for v in d.values()))
    return {k: scale * v for k, v in d.items()}


def _norm(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(np.sum((a[k].astype(np.float64) - b[k]) ** 2) for k in KEYS)))


def _cfg(strategy: str) -> FederatedConfig:
    return FederatedConfig(
        strategy=strategy,  # type: ignore[arg-type]
        dp="central",
        dp_clipping_norm=CLIP,
        dp_noise_multiplier=Z,
        num_clients=N,
        min_train_clients=1,
    )


class Round:
    """One server round of ``strategy`` under central DP with the noise switched off, so the
    released quantity (what the inner strategy receives) can be compared across client sets."""

    def __init__(self, strategy: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.stds: list[float] = []

        def no_noise(std: float, shape: tuple[int, ...]) -> np.ndarray:
            self.stds.append(std)
            return np.zeros(shape)

        monkeypatch.setattr(central_dp, "gaussian_noise", no_noise)
        self.cfg = _cfg(strategy)

    def run(
        self, updates: list[dict[str, np.ndarray]]
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[Message]]:
        """(released mean, the strategy's output, what the inner strategy received)."""
        s = build_strategy(self.cfg, N)
        inner = s.inner.inner
        received: list[Message] = []
        original: Callable[..., Any] = inner.aggregate_train

        def spy(rnd: int, replies: list[Message]) -> Any:
            received.extend(replies)
            return original(rnd, replies)

        inner.aggregate_train = spy
        g = InProcessGrid(ClientApp(), {}, [{"partition-id": i} for i in range(N)])
        base = global_adapter()
        messages = list(s.configure_train(1, to_array_record(base), ConfigRecord(), g))
        replies = []
        for m, u in zip(messages, updates, strict=False):
            arrays = {k: (base[k] + u[k]).astype(np.float32) for k in KEYS}
            r = reply(m.metadata.dst_node_id, to_array_record(arrays))
            r.content["metrics"] = MetricRecord({"num-examples": 10, "unit-weight": 1.0})
            replies.append(r)
        out, _ = s.aggregate_train(1, replies)
        assert out is not None and len(received) == 1
        released = from_array_record(received[0].content["arrays"])
        return released, from_array_record(out), received


@pytest.mark.parametrize("strategy", MEAN_STRATEGIES)
def test_accountant_charges_the_released_means_noise_over_its_sensitivity(
    strategy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = Round(strategy, monkeypatch)
    clients = [_update(i, norm) for i, norm in enumerate((0.2, 3.0, 0.4, 5.0))]
    full, _, _ = r.run(clients)
    # Neighbouring client sets: one client's update removed (add/remove-one), including the
    # worst case (an update longer than the clip, which counts for exactly C).
    gaps = []
    for i in range(N):
        fewer, _, _ = r.run(clients[:i] + clients[i + 1 :])
        gaps.append(_norm(full, fewer))
    sensitivity = max(gaps)
    assert sensitivity == pytest.approx(CLIP / N, rel=1e-5)
    # the noise really added to that quantity, every round the same
    assert r.stds == pytest.approx([Z * CLIP / N] * len(r.stds))
    release = central_round_release(Z)
    assert release.q == 1.0
    assert release.z == pytest.approx(r.stds[0] / sensitivity, rel=1e-5)


@pytest.mark.parametrize("strategy", MEAN_STRATEGIES)
def test_the_server_optimizer_only_post_processes_the_noised_mean(
    strategy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = Round(strategy, monkeypatch)
    released, out, received = r.run([_update(i, 2.0) for i in range(N)])
    # the optimizer's output is a function of the release alone: the same strategy, fresh,
    # given only the released mean as its one reply, returns the same adapter
    fresh = build_base_strategy(r.cfg)
    g = InProcessGrid(ClientApp(), {}, [{"partition-id": i} for i in range(N)])
    list(fresh.configure_train(1, to_array_record(global_adapter()), ConfigRecord(), g))
    again, _ = fresh.aggregate_train(1, received)
    assert _norm(out, from_array_record(again)) < 1e-6
    if strategy in ("fedavg", "fedprox"):
        assert _norm(out, released) < 1e-6


@pytest.mark.parametrize("strategy", sorted(set(STRATEGIES) - set(MEAN_STRATEGIES)))
def test_central_dp_is_refused_for_strategies_that_are_not_a_mean(strategy: str) -> None:
    assert strategy in {"fedmedian", "fedtrimmedavg", "krum"}
    with pytest.raises(ConfigError) as e:
        FederatedConfig(strategy=strategy, dp="central")  # type: ignore[arg-type]
    message = str(e.value)
    assert "\n" not in message and f"{strategy} is not a mean" in message
    FederatedConfig(strategy=strategy, dp="local")  # type: ignore[arg-type]  # local DP stays
