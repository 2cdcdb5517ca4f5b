"""One factory from a strategy name to Flower's implementation, wrapped as the run asks.

Every strategy is Flower's own (``flwr.serverapp.strategy``); feddx only chooses the parameters:

===============  ==========================================================================
``fedavg``       FedAvg, weighted by ``num-examples``
``fedprox``      FedProx: FedAvg on the server; ``proximal-mu`` goes to clients in the train
                 config and the trainer adds ``mu/2 ||w - w_global||^2`` to the local loss
``fedadam``      FedAdam (``fedopt-eta``, ``fedopt-beta1``, ``fedopt-beta2``, ``fedopt-tau``)
``fedyogi``      FedYogi (same parameters)
``fedadagrad``   FedAdagrad (``fedopt-eta``, ``fedopt-tau``)
``fedavgm``      FedAvgM (``server-lr``, ``server-momentum``)
``fedmedian``    FedMedian (coordinate-wise median)
``fedtrimmedavg`` FedTrimmedAvg (``trim-beta`` cut from each tail)
``krum``         Krum (``num-malicious``)
===============  ==========================================================================

With ``dp = "central"`` the strategy is wrapped in
:class:`~feddx.federated.central_dp.ClippedMeanDP`: the noise goes on the clipped mean, which
the strategy (its server optimizer, if any) then post-processes; clients report uniform
weights. Only the FedAvg family (:data:`~feddx.federated.config.MEAN_STRATEGIES`) is allowed. The outermost layer is always the
:class:`~feddx.federated.guard.GuardedStrategy` validation filter. Under central DP the filter
keeps only its structural checks (keys, shapes, finite values, a positive weight): the norm
rules choose which clients are aggregated from their updates, a data-dependent selection the
epsilon ledger (:mod:`feddx.federated.privacy`) does not account for. The relative rule is the
worse one, since one client's update decides whether *another* client is aggregated, so the
sum could move by more than the clipping norm when one client is added or removed. Clipping
each update to ``dp-clipping-norm`` bounds an outsized update instead. Under local DP the
rules stay: they act on releases that are already private (post-processing), so each client's
epsilon is unchanged. :func:`client_selection` states the rule in force; the server writes it
into the run's summary. Federated evaluation on
clients is off (``fraction_evaluate = 0``): the server evaluates the global adapter itself.
"""

from __future__ import annotations

from typing import Any

from flwr.serverapp.strategy import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    Strategy,
)

from feddx.federated.central_dp import ClippedMeanDP
from feddx.federated.config import MEAN_STRATEGIES, FederatedConfig
from feddx.federated.guard import GuardedStrategy

NUM_EXAMPLES = "num-examples"
UNIT_WEIGHT = "unit-weight"  # every client reports 1.0: uniform weights for central DP


def build_base_strategy(cfg: FederatedConfig) -> Strategy:
    """Flower's strategy for ``cfg.strategy`` with the run's sampling settings."""
    common: dict[str, Any] = {
        "fraction_train": cfg.fraction_train,
        "fraction_evaluate": 0.0,
        "min_train_nodes": cfg.min_train_clients,
        "min_evaluate_nodes": 0,
        "min_available_nodes": cfg.min_available_clients,
        "weighted_by_key": UNIT_WEIGHT if cfg.dp == "central" else NUM_EXAMPLES,
    }
    fedopt = {"eta": cfg.fedopt_eta, "eta_l": cfg.learning_rate, "tau": cfg.fedopt_tau}
    name = cfg.strategy
    if name == "fedavg":
        return FedAvg(**common)
    if name == "fedprox":
        return FedProx(**common, proximal_mu=cfg.proximal_mu)
    if name == "fedadam":
        return FedAdam(**common, **fedopt, beta_1=cfg.fedopt_beta1, beta_2=cfg.fedopt_beta2)
    if name == "fedyogi":
        return FedYogi(**common, **fedopt, beta_1=cfg.fedopt_beta1, beta_2=cfg.fedopt_beta2)
    if name == "fedadagrad":
        return FedAdagrad(**common, **fedopt)
    if name == "fedavgm":
        return FedAvgM(
            **common, server_learning_rate=cfg.server_lr, server_momentum=cfg.server_momentum
        )
    if name == "fedmedian":
        return FedMedian(**common)
    if name == "fedtrimmedavg":
        return FedTrimmedAvg(**common, beta=cfg.trim_beta)
    if name == "krum":
        return Krum(**common, num_malicious_nodes=cfg.num_malicious)
    raise AssertionError(f"unhandled strategy {name!r}")  # the config type forbids this


def expected_clients_per_round(cfg: FederatedConfig, num_nodes: int) -> int:
    """How many clients Flower's sampling picks per round out of ``num_nodes``."""
    return max(int(num_nodes * cfg.fraction_train), cfg.min_train_clients)


def guard_limits(cfg: FederatedConfig) -> tuple[float, float]:
    """``(max_update_norm, outlier_factor)`` the validation filter applies for ``cfg``: the
    configured values, or both off (``0``) under central DP (see the module docstring)."""
    if cfg.dp == "central":
        return 0.0, 0.0
    return cfg.max_update_norm, cfg.outlier_factor


def client_selection(cfg: FederatedConfig) -> str:
    """One sentence for the run's summary: which valid replies are aggregated, and why."""
    if cfg.dp == "central":
        return (
            "all valid replies aggregated (outlier filter and max-update-norm off under "
            f"central DP; every update clipped to dp-clipping-norm {cfg.dp_clipping_norm:g})"
        )
    max_norm, factor = guard_limits(cfg)
    rules = []
    if max_norm > 0:
        rules.append(f"update norm above max-update-norm {max_norm:g}")
    if factor > 0:
        rules.append(f"update norm above {factor:g} x the round's median (with 3+ replies)")
    text = (
        "valid replies aggregated except those with an " + " or an ".join(rules)
        if rules
        else "all valid replies aggregated (no norm limit)"
    )
    if cfg.dp == "local" and rules:
        text += " (applied to DP-SGD releases: post-processing, epsilon unchanged)"
    return text


def build_strategy(cfg: FederatedConfig, num_nodes: int) -> GuardedStrategy:
    """The full server-side stack: validation filter -> (central DP) -> Flower strategy.

    ``num_nodes`` is the federation size (simulation: ``num-clients``), needed to calibrate
    central DP noise for the number of clients sampled each round.
    """
    strategy = build_base_strategy(cfg)
    if cfg.dp == "central":
        if cfg.strategy not in MEAN_STRATEGIES:  # the config refuses it first
            raise AssertionError(f"central DP over a non-mean strategy {cfg.strategy!r}")
        strategy = ClippedMeanDP(
            strategy,
            noise_multiplier=cfg.dp_noise_multiplier,
            clipping_norm=cfg.dp_clipping_norm,
            num_sampled=expected_clients_per_round(cfg, num_nodes),
        )
    max_norm, factor = guard_limits(cfg)
    return GuardedStrategy(
        strategy,
        min_replies=cfg.min_train_clients,
        max_update_norm=max_norm,
        outlier_factor=factor,
        weight_key=UNIT_WEIGHT if cfg.dp == "central" else NUM_EXAMPLES,
    )
