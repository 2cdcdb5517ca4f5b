"""What ``feddx demo`` runs: the stages, their order and every knob, in one typed settings."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from feddx.errors import ConfigError
from feddx.model.loading import DEFAULT_MODEL
from feddx.model.prompt import DEFAULT_MAX_PROMPT_TOKENS
from feddx.settings import Names, SettingPath, Settings

if TYPE_CHECKING:
    from feddx.model.adapter import LoraSpec

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
# Each shipped source's demo settings (a DemoOptions file, chosen on validation: its header
# says which run chose it), used when the command names no --config. UCI Heart, the default
# story, runs on the built-in settings below.
SOURCE_CONFIGS: dict[str, str] = {
    "csv": "configs/demo-csv.yaml",
    "ddxplus": "configs/demo-ddxplus.yaml",
    "fhir": "configs/demo-fhir.yaml",
    "eicu": "configs/demo-eicu.yaml",
}


class DemoTraining(Settings):
    """How the demo's trained stages train, beside the budgets and learning rate of
    :class:`DemoOptions` (which every stage shares): the LoRA layout (keys as in the
    federation's run config, so one layout reads the same in both), the batch, the answer
    loss and the prompt budget. The default is the built-in recipe: rank 8 on the top 2
    layers, enough for UCI Heart's 13 findings. The federated stage takes the layout, batch
    and prompt budget; its clients train with the vocabulary loss (the federation's config
    has no candidate loss)."""

    settings_name: ClassVar[str] = "demo training"

    lora_rank: int = Field(default=8, ge=1)
    lora_alpha: float = Field(default=16.0, gt=0.0)
    lora_dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    lora_targets: Names = ("auto",)
    lora_top_layers: int = Field(default=2, ge=0)
    batch_size: int = Field(default=8, ge=1)
    answer_loss: Literal["vocabulary", "candidates"] = "vocabulary"
    max_prompt_tokens: int = Field(default=DEFAULT_MAX_PROMPT_TOKENS, ge=16)

    def lora(self) -> LoraSpec:
        """The adapters' layout (``lora-top-layers = 0``: every layer)."""
        from feddx.model.adapter import LoraSpec

        return LoraSpec(
            rank=self.lora_rank,
            alpha=self.lora_alpha,
            dropout=self.lora_dropout,
            target_modules=self.lora_targets,
            top_layers=self.lora_top_layers or None,
        )

    def run_config(self) -> dict[str, int | float | str]:
        """The same settings as federation run-config keys (``lora-rank``, ...)."""
        return {
            "lora-rank": self.lora_rank,
            "lora-alpha": self.lora_alpha,
            "lora-dropout": self.lora_dropout,
            "lora-targets": ",".join(self.lora_targets),
            "lora-top-layers": self.lora_top_layers,
            "batch-size": self.batch_size,
            "max-prompt-tokens": self.max_prompt_tokens,
        }


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
    without Ray, for tests). ``train``: the trained stages' LoRA layout, batch and loss
    (:class:`DemoTraining`). ``top_labels``: only the cases of the most frequent diagnoses
    (``0``: all; a long tail seen once or twice cannot be learned, and each candidate costs
    scoring time); ``max_cases``: then a stratified sample of at most that many cases (``0``:
    all; a slice of a large source). The institutions become the federation's clients only
    when every one has at least ``min_client_cases`` training cases; otherwise the seeded IID
    split stands in and the personalized stage is skipped, saying why.
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
    train: DemoTraining = Field(default_factory=DemoTraining)
    top_labels: int = Field(default=0, ge=0)
    max_cases: int = Field(default=0, ge=0)
    min_client_cases: int = Field(default=20, ge=1)

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
        found: dict[str, object] = {k: getattr(self, k) for k in keep}
        # recorded only where they differ from the built-in demo, so a run folder made before
        # they existed still resumes
        for key, default in (
            ("train", DemoTraining()),
            ("top_labels", 0),
            ("max_cases", 0),
            ("min_client_cases", 20),
        ):
            value = getattr(self, key)
            if value != default:
                found[key] = value.to_dict() if isinstance(value, Settings) else value
        return found


def source_config(dataset: str, root: Path | None = None) -> Path | None:
    """The shipped demo config for ``dataset``'s source (:data:`SOURCE_CONFIGS`), if any and
    present under ``root`` (default: the current folder, else the project's own)."""
    name = SOURCE_CONFIGS.get(dataset.partition(":")[0])
    if name is None:
        return None
    for base in (root or Path.cwd(), Path(__file__).resolve().parents[3]):
        if (base / name).is_file():
            return base / name
    return None


def demo_options(
    dataset: str,
    config: Path | None,
    given: dict[str, object],
    **run: object,
) -> DemoOptions:
    """The demo's settings, each layer over the one before: the built-in defaults, then the
    ``config`` file (default: the source's shipped one, :func:`source_config`), then the
    options ``given`` on the command line, then ``run`` (where the run goes and which stages:
    never from a file). A config file that names another dataset is overridden by
    ``dataset``, the one the command names. Raises :class:`~feddx.errors.ConfigError` naming
    the file and key for a bad file."""
    from feddx.settings import read_config_file

    path = config if config is not None else source_config(dataset)
    data: dict[str, object] = {}
    if path is not None:
        data = DemoOptions._key_style(read_config_file(path))
        for key in ("out_dir", "stages", "force"):
            if key in data:
                raise ConfigError(f"{path}: '{key}' belongs on the command line, not in a config")
    data.update(dataset=dataset, **given, **run)
    return DemoOptions.from_mapping(data, origin=str(path) if path else "demo options")
