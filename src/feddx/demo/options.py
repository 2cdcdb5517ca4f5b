"""What ``feddx demo`` runs: the stages, their order and every knob, in one typed settings."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from feddx.model.loading import DEFAULT_MODEL
from feddx.settings import Names, SettingPath, Settings

# The story, in order. The last three are derived from the others' files: they rerun whenever
# a stage before them ran in the same invocation, so they never describe a stale run.
STAGES = (
    "data",
    "zero-shot",
    "baseline",
    "centralized",
    "federated",
    "personalized",
    "evaluation",
    "report",
    "serve",
)
DERIVED_STAGES = frozenset({"evaluation", "report", "serve"})
# A stage reruns when a stage it depends on ran in the same invocation: personalization
# fine-tunes the federated adapter (or the centralized one); a derived stage reads every
# stage before it but data.
DEPENDS_ON: dict[str, frozenset[str]] = {
    "personalized": frozenset({"centralized", "federated"}),
    **{s: frozenset(STAGES[1 : STAGES.index(s)]) for s in DERIVED_STAGES},
}
DEFAULT_OUT = Path("runs/demo")


class DemoOptions(Settings):
    """What ``feddx demo`` runs.

    ``model`` and ``dataset`` (``SOURCE[:PATH]``; institutions become the federation's
    clients, or ``clients`` seeded IID shares where the data has none); the stratified
    ``test_fraction`` held out with split ``seed``; at most ``limit`` test cases (``0``: all);
    everything under ``out_dir``; the ``stages`` among :data:`STAGES` (``force``: rerun them even
    if finished). Training: ``epochs`` centralized epochs at ``learning_rate``; the federation
    gets the same optimizer progress by :func:`feddx.federated.demo.federated_budget` with
    ``local_epochs`` per round; personalization fine-tunes ``personal_epochs`` on each region
    and institution. ``round_eval_cases`` test cases score the global adapter after every round
    (the curve of the report; the final adapter is scored on the whole test split).
    ``engine``: Flower's simulation runtime, or ``inprocess`` (the same ServerApp and ClientApp
    without Ray, for tests).
    """

    settings_name: ClassVar[str] = "demo"

    model: str = DEFAULT_MODEL
    dataset: str = "uci-heart"
    test_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    seed: int = 0
    limit: int = Field(default=0, ge=0)
    out_dir: SettingPath = DEFAULT_OUT
    stages: Names = STAGES
    force: bool = False
    epochs: int = Field(default=2, ge=1)
    local_epochs: int = Field(default=2, ge=1)
    learning_rate: float = Field(default=1e-3, gt=0.0)
    personal_epochs: int = Field(default=1, ge=1)
    clients: int = Field(default=4, ge=2)
    round_eval_cases: int = Field(default=92, ge=0)
    engine: str = Field(default="flower", pattern="^(flower|inprocess)$")

    def fingerprint(self) -> dict[str, object]:
        """The settings a finished stage's figures depend on: a run folder made with others is
        not resumed (the figures would mix two runs)."""
        keep = (
            "model",
            "dataset",
            "test_fraction",
            "seed",
            "limit",
            "epochs",
            "local_epochs",
            "learning_rate",
            "personal_epochs",
            "clients",
        )  # not round_eval_cases: it sizes the per-round curve, which the federated entry records
        return {k: getattr(self, k) for k in keep}
