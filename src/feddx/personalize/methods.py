"""Personalization methods: from a parent LoRA state to an adapter per region or institution.

Every method is a short function over the one training recipe's training step
(:func:`feddx.train.recipe.fit`), run on a LoRA-attached model whose weights it
overwrites (:class:`LocalTrainer` loads the starting state first and hands back a copy of the
result):

``finetune`` (:func:`local_finetune`)
    Continue training the parent (the federated global adapter, or a regional one) on the
    group's own cases. The baseline an empirical study of personalized FL found hard to beat,
    so it is in every table.
``ditto`` (:func:`ditto`)
    The same local training with FedProx's ``mu / 2 * ||w - w_parent||^2`` pulling the weights
    toward the parent (Ditto's personal objective; ``TrainConfig.proximal_mu`` with the parent
    as ``proximal_reference``). Large ``mu`` keeps the parent, ``mu = 0`` is ``finetune``.
``fedsa`` (:func:`federate` with ``aggregate="lora-a"``)
    FedSA-LoRA (Guo et al., ICLR 2025): federated rounds in which the server averages only the
    LoRA ``A`` matrices (which the paper finds learn general knowledge) while each client keeps
    its own ``B`` (client-specific), so every institution ends the federation with its own
    adapter at no extra cost. ``aggregate="all"`` is plain FedAvg, which also builds the
    global adapter and the regional sub-federations.

The federation here is **in-process**: clients are trained one after another on one model,
the server step is :func:`average_states`. It runs the same ``fit`` call with the
same per-round learning-rate schedule as the Flower ClientApp
(:meth:`feddx.federated.config.FederatedConfig.round_learning_rate`, cosine over rounds), but
lets one experiment give every method exactly the same clients, splits and budget without a
Flower run per method; the Flower app's strategies are untouched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from feddx.data.schema import Case
from feddx.errors import ConfigError, DataError
from feddx.model.adapter import AdapterState, adapter_state, load_adapter_state
from feddx.train.config import TrainConfig
from feddx.train.recipe import fit
from feddx.train.trainer import TrainResult

Aggregate = Literal["all", "lora-a"]
AGGREGATES: tuple[Aggregate, ...] = ("all", "lora-a")


def is_lora_a(key: str) -> bool:
    """Whether peft key ``key`` names a LoRA ``A`` matrix (``...lora_A.weight``)."""
    return ".lora_A." in key or key.endswith(".lora_A")


def average_states(
    states: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float],
    *,
    keys: Callable[[str], bool] | None = None,
) -> AdapterState:
    """The weighted mean of LoRA states (FedAvg's server step), over the keys ``keys``
    selects (default: all); the result holds only those keys.

    Raises :class:`ValueError` for no states, a weight count that differs, non-positive
    total weight, or states whose keys or shapes differ.
    """
    if not states:
        raise ValueError("average_states needs at least one state")
    if len(weights) != len(states):
        raise ValueError(f"{len(states)} states but {len(weights)} weights")
    total = float(sum(weights))
    if not total > 0 or any(w < 0 for w in weights):
        raise ValueError("weights must be non-negative with a positive sum")
    names = sorted(k for k in states[0] if keys is None or keys(k))
    for i, s in enumerate(states[1:], start=1):
        if set(s) != set(states[0]):
            raise ValueError(f"state {i} has other LoRA keys than state 0")
    out: AdapterState = {}
    for k in names:
        acc = torch.zeros_like(states[0][k], dtype=torch.float32)
        for s, w in zip(states, weights, strict=True):
            if s[k].shape != acc.shape:
                raise ValueError(f"LoRA tensor {k} has shape {tuple(s[k].shape)} in one state")
            acc += s[k].to(torch.float32) * (w / total)
        out[k] = acc
    return out


def state_distance(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """Euclidean distance between two LoRA states of one layout (over all their tensors)."""
    return math.sqrt(sum(float((a[k] - b[k]).pow(2).sum()) for k in a))


@dataclass
class LocalTrainer:
    """Runs the recipe's ``fit`` from a given LoRA state on one shared, LoRA-attached model.

    Parameters
    ----------
    model, tokenizer
        The peft model (e.g. :attr:`feddx.model.predict.Diagnoser.model` after ``attach``) and
        its tokenizer. Its LoRA weights are overwritten by every call.
    feature_cache_dir
        The frozen-layer activation cache shared by every run (with adapters on the top
        layers, the layers below run once per case for the whole experiment).
    candidates
        The candidate list, for ``answer_loss = "candidates"``.
    """

    model: Any
    tokenizer: Any
    feature_cache_dir: Path | None = None
    candidates: Sequence[str] | None = None
    results: list[TrainResult] = field(default_factory=list)

    def train(
        self,
        start: Mapping[str, torch.Tensor],
        cases: Sequence[Case],
        config: TrainConfig,
        *,
        reference: Mapping[str, torch.Tensor] | None = None,
    ) -> AdapterState:
        """Load ``start``, train on ``cases`` under ``config`` (with ``reference`` as the
        proximal anchor when ``config.proximal_mu > 0``), and return the trained state."""
        if not cases:
            raise DataError("no training cases for this group")
        load_adapter_state(self.model, dict(start))
        result = fit(
            self.model,
            self.tokenizer,
            cases,
            config,
            proximal_reference=None if reference is None else dict(reference),
            feature_cache_dir=self.feature_cache_dir,
            candidates=self.candidates,
        )
        self.model.eval()
        self.results.append(result)
        return adapter_state(self.model)


def local_finetune(
    trainer: LocalTrainer,
    parent: Mapping[str, torch.Tensor],
    cases: Sequence[Case],
    config: TrainConfig,
) -> AdapterState:
    """Fine-tune ``parent`` on ``cases`` (no pull toward it): the personalization baseline."""
    return trainer.train(parent, cases, config.replace(proximal_mu=0.0))


def ditto(
    trainer: LocalTrainer,
    parent: Mapping[str, torch.Tensor],
    cases: Sequence[Case],
    config: TrainConfig,
    mu: float,
) -> AdapterState:
    """Ditto-style local training: fine-tune ``parent`` on ``cases`` with the proximal term
    ``mu / 2 * ||w - parent||^2`` (``mu > 0``), so the personal adapter stays near the
    federation's knowledge where the local data is thin."""
    if not mu > 0:
        raise ConfigError(f"ditto needs mu > 0, got {mu}")
    return trainer.train(parent, cases, config.replace(proximal_mu=float(mu)), reference=parent)


@dataclass(frozen=True)
class FederationResult:
    """The end of an in-process federation.

    ``global_state`` is the server's aggregate after the last round (all keys: with
    ``"lora-a"`` its ``B`` matrices are the clients' mean, reported but not personalized);
    ``client_states[i]`` is what client ``i`` scores with: the global state under ``"all"``,
    the shared ``A`` with the client's own ``B`` under ``"lora-a"``. ``losses[r][i]`` is
    client ``i``'s mean training loss in round ``r``.
    """

    global_state: AdapterState
    client_states: list[AdapterState]
    losses: list[list[float]]


def round_config(base: TrainConfig, server_round: int, rounds: int, seed: int) -> TrainConfig:
    """A client's config for ``server_round`` (1-based): the learning rate follows a cosine
    over the rounds at a constant rate within a round, with warm-up in the first round only
    (the Flower app's ``lr-schedule = "rounds"``)."""
    r = min(max(server_round, 1), rounds)
    lr = base.learning_rate * 0.5 * (1.0 + math.cos(math.pi * (r - 1) / rounds))
    return base.replace(
        learning_rate=lr,
        lr_schedule="constant",
        warmup_ratio=base.warmup_ratio if server_round == 1 else 0.0,
        seed=seed,
    )


def federate(
    trainer: LocalTrainer,
    start: Mapping[str, torch.Tensor],
    clients: Sequence[Sequence[Case]],
    config: TrainConfig,
    *,
    rounds: int,
    aggregate: Aggregate = "all",
    on_round: Callable[[int, list[float]], None] | None = None,
) -> FederationResult:
    """``rounds`` federated rounds over ``clients`` (each a list of its training cases) from
    ``start``, every client training ``config.epochs`` local epochs per round, the server
    averaging weighted by client size: every tensor (``"all"``, FedAvg) or only the LoRA
    ``A`` matrices (``"lora-a"``, FedSA-LoRA; each client keeps its own ``B``).

    Client ``i`` in round ``r`` trains with seed ``config.seed + 1000 * r + i``, so runs are
    reproducible and clients do not share a data order. ``on_round(r, losses)`` after each
    round. Raises :class:`ConfigError` for ``rounds < 1`` or an unknown ``aggregate`` and
    :class:`DataError` for no clients or an empty one.
    """
    if rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {rounds}")
    if aggregate not in AGGREGATES:
        raise ConfigError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
    if not clients:
        raise DataError("a federation needs at least one client")
    empty = [i for i, c in enumerate(clients) if not c]
    if empty:
        raise DataError(f"federation client {empty[0]} has no training cases")
    sizes = [float(len(c)) for c in clients]
    shared: AdapterState = {k: v.clone() for k, v in start.items()}
    local: list[AdapterState] = [dict(shared) for _ in clients]
    losses: list[list[float]] = []
    for r in range(1, rounds + 1):
        trained: list[AdapterState] = []
        round_losses = []
        for i, cases in enumerate(clients):
            begin = shared if aggregate == "all" else {**local[i], **shared}
            cfg = round_config(config, r, rounds, config.seed + 1000 * r + i)
            trained.append(trainer.train(begin, cases, cfg))
            round_losses.append(trainer.results[-1].mean_loss)
        if aggregate == "all":
            shared = average_states(trained, sizes)
        else:
            shared = average_states(trained, sizes, keys=is_lora_a)
            local = [{k: v for k, v in t.items() if not is_lora_a(k)} for t in trained]
        losses.append(round_losses)
        if on_round:
            on_round(r, round_losses)
    if aggregate == "all":
        return FederationResult(shared, [dict(shared) for _ in clients], losses)
    personal = [{**b, **shared} for b in local]
    mean_b = average_states(local, sizes)
    return FederationResult({**mean_b, **shared}, personal, losses)


__all__ = [
    "AGGREGATES",
    "Aggregate",
    "FederationResult",
    "LocalTrainer",
    "average_states",
    "ditto",
    "federate",
    "is_lora_a",
    "local_finetune",
    "round_config",
    "state_distance",
]
