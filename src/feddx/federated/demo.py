"""The federated stage of ``feddx demo``: the 4 UCI Heart hospitals train one adapter together.

:func:`run_federated_demo` runs the feddx Flower app on Flower's simulation runtime with one
simulated SuperNode per hospital (the natural partition), evaluates the global adapter on the
demo's held-out split (the same stratified split as the rest of the demo for a given seed and
test fraction) and returns the figures to print. Sizes are chosen to take a few minutes on 2
cores: adapters on the top 2 layers, 2 rounds of 1 local epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from feddx.federated.config import FederatedConfig


@dataclass(frozen=True)
class FederatedDemoResult:
    """What the demo prints: per-hospital training sizes, the final metrics, bytes moved."""

    rounds: list[dict[str, Any]]
    final: dict[str, float]
    clients: int
    bytes_per_update: float
    out_dir: Path
    seconds: float


def demo_config(
    *,
    model: str,
    seed: int,
    test_fraction: float,
    out_dir: Path,
    rounds: int = 2,
    max_eval_cases: int = 0,
) -> FederatedConfig:
    """The demo federation's settings (all paths absolute, as Flower's processes need)."""
    return FederatedConfig(
        model=str(Path(model).resolve()) if Path(model).exists() else model,
        data="uci-heart",
        validation_fraction=test_fraction,
        max_eval_cases=max_eval_cases,
        num_clients=4,
        partition="attribute",
        partition_attribute="institution",
        seed=seed,
        num_rounds=rounds,
        eval_every=rounds,
        eval_initial=False,
        local_epochs=1,
        batch_size=8,
        learning_rate=1e-3,
        lora_rank=8,
        lora_alpha=16.0,
        lora_top_layers=2,
        out_dir=str(out_dir.resolve()),
        resume=False,
    )


def run_federated_demo(
    *,
    model: str,
    seed: int = 0,
    test_fraction: float = 0.2,
    rounds: int = 2,
    limit: int = 0,
    out_dir: Path = Path("runs/demo-federated"),
    engine: Literal["flower", "inprocess"] = "flower",
) -> FederatedDemoResult:
    """Run the demo federation; raises :class:`~feddx.errors.FeddxError` subclasses on failure
    (every process started is stopped either way)."""
    import shutil

    from feddx.federated.experiments import run_federated

    shutil.rmtree(out_dir, ignore_errors=True)  # a demo always starts fresh
    cfg = demo_config(
        model=model,
        seed=seed,
        test_fraction=test_fraction,
        out_dir=out_dir,
        rounds=rounds,
        max_eval_cases=limit,
    )
    summary = run_federated(cfg, engine)
    return FederatedDemoResult(
        rounds=summary["rounds"],
        final=summary["final"],
        clients=cfg.num_clients,
        bytes_per_update=summary["mean_bytes_per_reply"],
        out_dir=cfg.out_path(),
        seconds=summary["wall_seconds"],
    )
