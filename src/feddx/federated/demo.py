"""The federated stage of ``feddx demo``: one Flower SuperNode per hospital trains one adapter.

:func:`run_federated_demo` runs the feddx Flower app on Flower's simulation runtime with one
simulated SuperNode per client (the data's institutions, or a seeded split where it has none),
evaluates the global adapter after every round on the demo's held-out split (the same
stratified split as the rest of the demo for a given seed and test fraction) and returns what
the demo records: the per-round curve, bytes moved and the privacy spent.

The budget rule (:func:`federated_budget`)
------------------------------------------
FedAvg's global step per round is the size-weighted *average* of the clients' updates. With
``K`` clients holding disjoint shares of the data, one local epoch on each moves the global
adapter about as far as one epoch over a single client's share, i.e. ``1/K`` of a centralized
epoch's optimizer steps. The old demo ran 2 rounds x 1 local epoch against 2 centralized epochs:
a quarter of the centralized optimizer progress with 4 hospitals, and it ended with one class
for every test case. The rule gives the federation the centralized stage's optimizer progress:
``rounds x local_epochs = centralized_epochs x K``, with one cosine learning-rate decay laid over
all the rounds (``lr-schedule = "rounds"``), as the centralized run lays one over its epochs.
It is a function of the centralized budget and the number of clients only, not of any split.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from feddx.errors import ConfigError
from feddx.federated.config import FederatedConfig


@dataclass(frozen=True)
class FederatedBudget:
    """Rounds and local epochs that match ``centralized_epochs`` of pooled training."""

    rounds: int
    local_epochs: int
    centralized_epochs: int
    clients: int

    def describe(self) -> str:
        """One line for the console and the report."""
        return (
            f"{self.rounds} rounds x {self.local_epochs} local epochs = "
            f"{self.centralized_epochs} centralized epochs x {self.clients} clients "
            "(FedAvg averages the clients' steps)"
        )


def federated_budget(
    centralized_epochs: int, clients: int, local_epochs: int = 2
) -> FederatedBudget:
    """The federation's rounds for ``local_epochs`` per round so that ``rounds x local_epochs
    >= centralized_epochs x clients`` (see the module docstring). Raises :class:`ConfigError`
    for a non-positive argument."""
    for name, value in (
        ("centralized epochs", centralized_epochs),
        ("clients", clients),
        ("local epochs", local_epochs),
    ):
        if value < 1:
            raise ConfigError(f"federated budget: {name} must be >= 1, got {value}")
    rounds = math.ceil(centralized_epochs * clients / local_epochs)
    return FederatedBudget(rounds, local_epochs, centralized_epochs, clients)


@dataclass(frozen=True)
class FederatedDemoResult:
    """What the demo records: the per-round history, bytes moved, privacy, where it is saved."""

    rounds: list[dict[str, Any]]
    final: dict[str, float]
    clients: int
    bytes_per_update: float
    bytes_sent: int
    bytes_received: int
    epsilon: float | None
    out_dir: Path
    seconds: float


def demo_config(
    *,
    model: str,
    seed: int,
    test_fraction: float,
    out_dir: Path,
    budget: FederatedBudget | None = None,
    rounds: int | None = None,
    data: str = "uci-heart",
    by_institution: bool = True,
    learning_rate: float = 1e-3,
    max_eval_cases: int = 0,
    max_prompt_tokens: int | None = None,
) -> FederatedConfig:
    """The demo federation's settings (all paths absolute, as Flower's processes need):
    one client per institution (``by_institution``) or a seeded IID split into
    ``budget.clients``, evaluated after every round on ``max_eval_cases`` held-out cases.
    Without ``budget``: the demo's default (2 centralized epochs over 4 hospitals), or
    ``rounds`` of 1 local epoch when ``rounds`` is given (the pre-budget call)."""
    if budget is None:
        budget = (
            federated_budget(2, 4)
            if rounds is None
            else FederatedBudget(rounds, 1, centralized_epochs=rounds, clients=4)
        )
    extra: dict[str, Any] = {}
    if max_prompt_tokens is not None:
        extra["max_prompt_tokens"] = max_prompt_tokens
    return FederatedConfig(
        model=str(Path(model).resolve()) if Path(model).exists() else model,
        data=data,
        validation_fraction=test_fraction,
        max_eval_cases=max_eval_cases,
        num_clients=budget.clients,
        partition="attribute" if by_institution else "iid",
        partition_attribute="institution",
        seed=seed,
        num_rounds=budget.rounds,
        eval_every=1,
        eval_initial=False,
        local_epochs=budget.local_epochs,
        lr_schedule="rounds",
        batch_size=8,
        learning_rate=learning_rate,
        lora_rank=8,
        lora_alpha=16.0,
        lora_top_layers=2,
        min_train_clients=min(2, budget.clients),
        min_available_clients=min(2, budget.clients),
        out_dir=str(out_dir.resolve()),
        resume=False,
        **extra,
    )


def run_federated_demo(
    cfg: FederatedConfig, engine: Literal["flower", "inprocess"] = "flower"
) -> FederatedDemoResult:
    """Run the demo federation from scratch in ``cfg.out_dir``; raises
    :class:`~feddx.errors.FeddxError` subclasses on failure (every process started is stopped
    either way)."""
    import shutil

    from feddx.federated.experiments import run_federated
    from feddx.federated.history import HISTORY_FILE

    shutil.rmtree(cfg.out_path(), ignore_errors=True)  # a demo stage always starts fresh
    summary = run_federated(cfg, engine)
    history = json.loads((cfg.out_path() / HISTORY_FILE).read_text())
    rounds = [
        {
            "round": r.get("round"),
            "top1": (r.get("eval") or {}).get("top1"),
            "top3": (r.get("eval") or {}).get("top3"),
            "train_loss": r.get("train_loss"),
            "bytes_sent": r.get("bytes_sent", 0),
            "bytes_received": r.get("bytes_received", 0),
            "accepted": r.get("accepted"),
            "epsilon_total": r.get("epsilon_total"),
        }
        for r in history["rounds"]
    ]
    eps = [r["epsilon_total"] for r in rounds if r["epsilon_total"] is not None]
    return FederatedDemoResult(
        rounds=rounds,
        final=summary["final"],
        clients=cfg.num_clients,
        bytes_per_update=summary["mean_bytes_per_reply"],
        bytes_sent=int(summary.get("bytes_sent", 0)),
        bytes_received=int(summary.get("bytes_received", 0)),
        epsilon=eps[-1] if eps else None,
        out_dir=cfg.out_path(),
        seconds=summary["wall_seconds"],
    )
