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
    ``validation_fraction`` of the training side held out again (stratified, same seed) as the
    validation split every choice is made on (budgets, the personalization gate): the trained
    stages fit the rest. Everything under ``out_dir``; the ``stages`` among :data:`STAGES`
    (``force``: rerun them even if finished). Training: the federation gets ``epochs``
    centralized epochs' optimizer progress by :func:`feddx.federated.demo.federated_budget`
    with ``local_epochs`` per round; the centralized stage trains up to ``max_epochs`` epochs
    at ``learning_rate`` (one schedule), each chooses its own budget (epochs, rounds) on
    validation, and the two are also compared at equal examples processed
    (:func:`feddx.demo.compare.equal_work`); personalization fine-tunes ``personal_epochs`` on
    each region and institution, gated on validation (:mod:`feddx.personalize.gate`).
    ``round_eval_cases`` caps the validation cases that score the global adapter after every
    round (``0``: all; the rounds' curve, on which the federation's budget is chosen).
    ``engine``: Flower's simulation runtime, or ``inprocess`` (the same ServerApp and ClientApp
    without Ray, for tests).
    """

    settings_name: ClassVar[str] = "demo"

    model: str = DEFAULT_MODEL
    dataset: str = "uci-heart"
    test_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    seed: int = 0
    limit: int = Field(default=0, ge=0)
    validation_fraction: float = Field(default=0.15, gt=0.0, lt=1.0)
    out_dir: SettingPath = DEFAULT_OUT
    stages: Names = STAGES
    force: bool = False
    epochs: int = Field(default=2, ge=1)
    max_epochs: int = Field(default=4, ge=1)
    local_epochs: int = Field(default=2, ge=1)
    learning_rate: float = Field(default=1e-3, gt=0.0)
    personal_epochs: int = Field(default=1, ge=1)
    clients: int = Field(default=4, ge=2)
    round_eval_cases: int = Field(default=0, ge=0)
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
            "validation_fraction",
            "epochs",
            "max_epochs",
            "local_epochs",
            "learning_rate",
            "personal_epochs",
            "clients",
        )  # not round_eval_cases: it sizes the per-round curve, which the federated entry records
        return {k: getattr(self, k) for k in keep}
