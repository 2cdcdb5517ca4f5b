"""The personalization experiment's settings (:class:`PersonalizeConfig`): one file, every key
checked on load, so that a run refuses a misspelt method or an impossible ``ditto_mu`` before
it trains anything."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from feddx.model.adapter import LoraSpec
from feddx.settings import Names, SettingPath, Settings

Method = Literal["finetune", "ditto", "fedsa"]
METHODS: tuple[str, ...] = ("finetune", "ditto", "fedsa")
RegionalMode = Literal["finetune", "federated"]
Partition = Literal["natural", "dirichlet"]


class PersonalizeConfig(Settings):
    """One personalization experiment (a YAML/JSON/TOML file; unknown keys are refused).

    Parameters
    ----------
    data
        ``uci-heart``, ``ddxplus:PATH`` or ``eicu:PATH`` (any ``SOURCE[:PATH]`` whose cases
        carry institutions works with ``partition: natural``).
    partition
        ``natural``: the cases' own institutions and regions; ``dirichlet``: ``regions``
        regions drawn with Dirichlet(``alpha``) label shares, then ``institutions_per_region``
        institutions inside each region with the same alpha.
    min_institution_cases
        Natural partition: institutions with fewer cases are merged into one
        ``"<region> small hospitals"`` institution per region (eICU's demo has many tiny
        hospitals); a merged group still smaller than this is dropped, and the report says so.
    small_groups_per_region
        Deal a region's small hospitals into this many groups instead of one (whole hospitals,
        largest first, each to the group with the fewest cases so far), so a region of many
        tiny hospitals still has several institutions to personalize for.
    max_cases, top_labels
        Keep only the cases of the ``top_labels`` most frequent diagnoses (0: all), then a
        stratified sample of ``max_cases`` (0: all); see :func:`feddx.data.sources.load_cases`.
    answer_loss
        The trainer's loss (:class:`~feddx.train.config.TrainConfig`): ``candidates`` trains
        the softmax over the candidate list that the scorer ranks by.
    history_dropout
        The share of training cases with a history trained without it (every level's
        training: :attr:`~feddx.train.config.TrainConfig.history_dropout`; 0: none).
    test_fraction, validation_fraction
        Per institution: the test share, then the validation share of what remains.
    rounds, local_epochs, learning_rate
        Federations (global FedAvg, regional sub-federations, FedSA): rounds, local epochs per
        round, peak learning rate (cosine over rounds).
    personal_epochs, personal_learning_rate
        Regional and institutional fine-tuning (``finetune``, ``ditto``, regional
        ``finetune``): epochs and learning rate (cosine within the run).
    ditto_mu
        Proximal weights tried for ``ditto``; each institution keeps the one with the best
        validation top-1 (ties: macro-F1, then the first listed).
    regional
        How regional adapters are made (both are measured when both are listed); the first
        listed is the default of the hierarchy unless both are listed, in which case the one
        with the better pooled validation top-1 is.
    institutional_from
        Parent of ``finetune``/``ditto``: the ``global`` adapter (the baseline "FedAvg + local
        fine-tune") or the default ``regional`` one.
    individual
        Add the ``+individual context`` column: the adapter the gate leaves answering each
        institution (its adapter of the default method, the institutional method with the best
        pooled validation figures, where that passed the gate) plus its own institutional
        retrieval prior (:class:`~feddx.personalize.retrieval.IndividualContext`: the
        institution's training cases embedded with all-MiniLM-L6-v2 in a faiss index that stays
        with it, the prior's weight chosen on its validation cases). The patient's history is
        in every column's prompt already (the renderer's default, within the budget).
    """

    settings_name: ClassVar[str] = "personalize config"

    data: str = "uci-heart"
    model: str = "smollm2-135m-instruct"
    partition: Partition = "natural"
    alpha: float = Field(default=0.3, gt=0)
    regions: int = Field(default=3, ge=1)
    institutions_per_region: int = Field(default=2, ge=1)
    min_institution_cases: int = Field(default=20, ge=1)
    small_groups_per_region: int = Field(default=1, ge=1)
    max_cases: int = Field(default=0, ge=0)
    top_labels: int = Field(default=0, ge=0)
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    validation_fraction: float = Field(default=0.15, gt=0, lt=1)
    methods: Names = METHODS
    regional: Names = ("finetune",)
    institutional_from: Literal["global", "regional"] = "global"
    rounds: int = Field(default=6, ge=1)
    local_epochs: int = Field(default=2, ge=1)
    learning_rate: float = Field(default=5e-3, gt=0)
    personal_epochs: int = Field(default=2, ge=1)
    personal_learning_rate: float = Field(default=1e-3, gt=0)
    ditto_mu: tuple[float, ...] = (1.0,)
    batch_size: int = Field(default=8, ge=1)
    answer_loss: Literal["vocabulary", "candidates"] = "vocabulary"
    history_dropout: float = Field(default=0.0, ge=0.0, le=1.0)
    max_prompt_tokens: int = Field(default=256, ge=16)
    lora: LoraSpec = Field(default_factory=lambda: LoraSpec(rank=8, alpha=16.0, top_layers=2))
    seed: int = 0
    individual: bool = True
    register_adapters: bool = True
    registry: SettingPath | None = None
    activation_cache: SettingPath | None = None

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, methods: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [m for m in methods if m not in METHODS]
        if unknown or not methods:
            raise ValueError(f"must list methods among {', '.join(METHODS)}")
        return methods

    @field_validator("regional")
    @classmethod
    def _known_regional(cls, modes: tuple[str, ...]) -> tuple[str, ...]:
        if not modes or any(m not in ("finetune", "federated") for m in modes):
            raise ValueError("must list finetune and/or federated")
        return modes

    @field_validator("ditto_mu", mode="before")
    @classmethod
    def _mu_list(cls, value: Any) -> Any:
        if isinstance(value, int | float):
            value = [value]
        if isinstance(value, list):
            value = tuple(float(v) if isinstance(v, int) else v for v in value)
        return value

    @field_validator("ditto_mu")
    @classmethod
    def _positive_mu(cls, mus: tuple[float, ...]) -> tuple[float, ...]:
        if not mus or any(not m > 0 for m in mus):
            raise ValueError("must be one or more numbers > 0")
        return mus

    @model_validator(mode="after")
    def _data_spec(self) -> PersonalizeConfig:
        if not self.data.strip():
            raise ValueError("data must name a dataset (uci-heart, ddxplus:PATH, eicu:PATH)")
        return self


__all__ = ["METHODS", "Method", "Partition", "PersonalizeConfig", "RegionalMode"]
