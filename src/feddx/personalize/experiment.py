"""``feddx personalize``: the per-group evaluation of the adapter hierarchy, from one config.

One run, on one dataset and one budget for every method:

1. **groups**: the dataset's cases get a region and an institution (UCI Heart and eICU: their
   own hospitals and regions, eICU's small hospitals merged per region; DDXPlus: a two-level
   Dirichlet split, regions first, then institutions inside each region); each institution's
   cases are split train/test (stratified), and a validation split is carved from its
   training cases (temperatures and the Ditto ``mu`` are chosen on it, never on the test
   split);
2. **global**: in-process FedAvg over all institutions from a seeded fresh adapter
   (:func:`feddx.personalize.methods.federate`);
3. **regional**: per region, fine-tuning of the global adapter on the region's pooled
   training cases (``"finetune"``) and/or a FedAvg sub-federation of the region's
   institutions started from the global adapter (``"federated"``);
4. **institutional**, per method: ``finetune`` and ``ditto`` start from the global adapter
   (``institutional_from``), ``fedsa`` is its own federation from the fresh adapter (A shared,
   B kept), with the global federation's rounds;
5. **scoring**: every adapter of an institution is scored on its validation and test cases in
   one pass of the frozen layers per case (:class:`~feddx.model.ensemble.EnsembleScorer`'s
   ``member_scores``: with adapters on the top layers, the layers below are shared);
6. **outputs**: ``table.md``/``table.json`` (per region and institution: cases, top-1, top-3,
   macro-F1 for every column, and ``+individual context``: the selected adapter with the
   institution's own kNN prior) and ``per_group.png``; every adapter saved with its budget and
   fitted temperature under ``adapters/``; what the hierarchy deploys (global, the default
   regional construction, each institution's adapter of the default method: the
   institutional method with the best pooled validation figures) is
   registered in the registry (``registry/`` in the output folder unless the config names
   one) with level, scope, parent, data fingerprint and its validation metrics.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import Field, field_validator, model_validator

from feddx.data.candidates import CandidateList
from feddx.data.schema import Case
from feddx.errors import ConfigError, DataError
from feddx.model.adapter import AdapterState, LoraSpec
from feddx.model.predict import Prediction
from feddx.personalize.gate import GATE_RULE, GateDecision, gate
from feddx.settings import Names, SettingPath, Settings

log = logging.getLogger(__name__)

Method = Literal["finetune", "ditto", "fedsa"]
METHODS: tuple[str, ...] = ("finetune", "ditto", "fedsa")
RegionalMode = Literal["finetune", "federated"]
Partition = Literal["natural", "dirichlet"]
TABLE_MD, TABLE_JSON, PLOT_FILE = "table.md", "table.json", "per_group.png"
SELECTED = "selected on validation"
INDIVIDUAL = "+individual context"
_COLOUR_CYCLE = 10


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
        Add the ``+individual context`` column: each institution's adapter of the default
        method (the institutional method with the best pooled validation figures) plus its own
        kNN prior (:class:`~feddx.personalize.retrieval.IndividualContext`: the
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


# ----------------------------------------------------------------------------- groups
@dataclass(frozen=True)
class Institution:
    """One institution's cases, already split (train / validation / test)."""

    name: str
    region: str
    train: list[Case]
    validation: list[Case]
    test: list[Case]


@dataclass
class Groups:
    """The experiment's institutions and what building them dropped or merged."""

    institutions: list[Institution]
    notes: list[str] = field(default_factory=list)

    def regions(self) -> dict[str, list[Institution]]:
        out: dict[str, list[Institution]] = {}
        for inst in self.institutions:
            out.setdefault(inst.region, []).append(inst)
        return dict(sorted(out.items()))


def _retag(cases: Sequence[Case], region: str, institution: str) -> list[Case]:
    return [c.model_copy(update={"region": region, "institution": institution}) for c in cases]


def assign_groups(cases: Sequence[Case], config: PersonalizeConfig) -> tuple[list[Case], list[str]]:
    """Give every case the region and institution it is evaluated under (see
    :class:`PersonalizeConfig`); returns the cases and notes on merges and drops (counts and
    group names only). Raises :class:`DataError` when fewer than 2 institutions remain."""
    from feddx.data.partition import PartitionSpec, partition_cases

    notes: list[str] = []
    if config.partition == "dirichlet":
        out: list[Case] = []
        spec = PartitionSpec(
            "dirichlet",
            num_clients=config.regions,
            alpha=config.alpha,
            seed=config.seed,
            min_size=config.min_institution_cases * config.institutions_per_region,
        )
        for r, region_cases in enumerate(partition_cases(cases, spec)):
            inner = PartitionSpec(
                "dirichlet",
                num_clients=config.institutions_per_region,
                alpha=config.alpha,
                seed=config.seed + 1 + r,
                min_size=config.min_institution_cases,
            )
            for i, inst_cases in enumerate(partition_cases(region_cases, inner)):
                out.extend(_retag(inst_cases, f"region-{r + 1}", f"inst-{r + 1}.{i + 1}"))
        notes.append(
            f"Dirichlet alpha={config.alpha}: {config.regions} regions x "
            f"{config.institutions_per_region} institutions (regions drawn first)"
        )
        return out, notes
    missing = sum(c.institution is None for c in cases)
    if missing:
        notes.append(f"{missing} cases without an institution left out")
    by_inst: dict[str, list[Case]] = {}
    for c in cases:
        if c.institution is not None:
            by_inst.setdefault(c.institution, []).append(c)
    kept: list[Case] = []
    small: dict[str, list[Case]] = {}
    for name in sorted(by_inst):
        group = by_inst[name]
        region = Counter(c.region or "unknown region" for c in group).most_common(1)[0][0]
        if len(group) >= config.min_institution_cases:
            kept.extend(_retag(group, region, name))
        else:
            small.setdefault(region, []).extend(group)
    for region in sorted(small):
        for name, group in _deal_hospitals(small[region], region, config.small_groups_per_region):
            n_hosp = len({c.institution for c in group})
            if len(group) >= config.min_institution_cases:
                kept.extend(_retag(group, region, name))
                notes.append(
                    f"{region}: {n_hosp} hospitals with < {config.min_institution_cases} cases "
                    f"merged into '{name}' ({len(group)} cases)"
                )
            else:
                notes.append(
                    f"{region}: {n_hosp} small hospitals ({len(group)} cases) dropped: even "
                    f"merged they have < {config.min_institution_cases} cases"
                )
    return kept, notes


def _deal_hospitals(cases: list[Case], region: str, k: int) -> list[tuple[str, list[Case]]]:
    """A region's small hospitals dealt into ``k`` named groups of whole hospitals (largest
    hospital first, each to the group with the fewest cases so far; ties by name)."""
    by_hosp: dict[str, list[Case]] = {}
    for c in cases:
        by_hosp.setdefault(c.institution or "", []).append(c)
    if k == 1:
        return [(f"{region} small hospitals", cases)]
    groups: list[list[Case]] = [[] for _ in range(k)]
    for _, hosp in sorted(by_hosp.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        min(groups, key=len).extend(hosp)
    return [(f"{region} small hospitals {i + 1}", g) for i, g in enumerate(groups) if g]


def build_groups(cases: Sequence[Case], config: PersonalizeConfig) -> Groups:
    """Assign groups (:func:`assign_groups`) and split each institution train/validation/test
    (stratified by diagnosis, seeded). Raises :class:`DataError` for fewer than 2
    institutions or an institution left without test or validation cases."""
    from feddx.data.split import stratified_split

    tagged, notes = assign_groups(cases, config)
    by_inst: dict[tuple[str, str], list[Case]] = {}
    for c in tagged:
        assert c.region is not None and c.institution is not None
        by_inst.setdefault((c.region, c.institution), []).append(c)
    if len(by_inst) < 2:
        raise DataError(
            f"{config.data}: personalization needs at least 2 institutions, found {len(by_inst)}"
        )
    insts = []
    for (region, name), group in sorted(by_inst.items()):
        group.sort(key=lambda c: c.case_id)
        train, test = stratified_split(group, config.test_fraction, seed=config.seed)
        train, val = stratified_split(train, config.validation_fraction, seed=config.seed + 1)
        if not test or not val:
            raise DataError(
                f"{config.data}: institution {name!r} has too few cases ({len(group)}) for a "
                "test and a validation split"
            )
        insts.append(Institution(name, region, train, val, test))
    return Groups(insts, notes)


# ----------------------------------------------------------------------------- scoring
def score_members(
    diagnoser: Any,
    cases: Sequence[Case],
    candidates: Any,
    names: Sequence[str],
    *,
    max_prompt_tokens: int,
) -> dict[str, list[Prediction]]:
    """Every held adapter in ``names`` scored on ``cases`` with one pass of the frozen layers
    per case (the adapters sit on the top layers); raw scores at temperature 1, by name."""
    from feddx.model.ensemble import EnsembleScorer
    from feddx.model.prompt import render_prompt
    from feddx.model.scoring import DEFAULT_METHOD, rank_scores

    cset = diagnoser.candidate_set(candidates.names, candidates.icd10)
    scorer = EnsembleScorer(
        diagnoser.model, [diagnoser.held(n).state for n in names], validated=True
    )
    out: dict[str, list[Prediction]] = {n: [] for n in names}
    for case in cases:
        start = time.perf_counter()
        prompt = render_prompt(case, diagnoser.tokenizer, max_prompt_tokens)
        scores = scorer.member_scores(prompt.input_ids, cset, DEFAULT_METHOD)
        ms = (time.perf_counter() - start) * 1000 / len(names)
        for name, s in zip(names, scores, strict=True):
            out[name].append(Prediction(case, rank_scores(cset, s, 1.0), ms))
    # The scorer swapped states under the diagnoser: re-holding one name resets its notion of
    # which adapter's weights are loaded, so a later diagnose() copies its tensors in again.
    first = diagnoser.held(names[0])
    diagnoser.add_state(
        first.name,
        first.state,
        max_prompt_tokens=first.max_prompt_tokens,
        temperature=first.temperature,
    )
    return out


def group_metrics(preds: Sequence[Prediction]) -> dict[str, float]:
    """n, top-1, top-3 and macro-F1 of one group's predictions."""
    from feddx.evaluate.metrics import macro_f1, top_k_accuracy

    return {
        "n": float(len(preds)),
        "top1": top_k_accuracy(preds, 1),
        "top3": top_k_accuracy(preds, 3),
        "macro_f1": macro_f1(preds),
    }


def _better(a: dict[str, float], b: dict[str, float]) -> bool:
    """Whether validation metrics ``a`` beat ``b`` (top-1, then macro-F1; ties keep ``b``)."""
    return (a["top1"], a["macro_f1"]) > (b["top1"], b["macro_f1"])


_T = TypeVar("_T")


def _first_best(scored: Sequence[tuple[_T, dict[str, float]]]) -> _T:
    """The option whose validation metrics are best by :func:`_better`, from ``(option,
    metrics)`` pairs; ties keep the earlier one (options are listed least specific or first
    configured first)."""
    best, best_m = scored[0]
    for option, m in scored[1:]:
        if _better(m, best_m):
            best, best_m = option, m
    return best


# ----------------------------------------------------------------------------- the run
@dataclass
class _Adapter:
    """One produced adapter: where it sits, its state, and what it is evaluated on."""

    key: str  # the column-and-scope name held by the diagnoser
    level: Literal["global", "regional", "institutional"]
    column: str
    state: AdapterState
    region: str | None = None
    institution: str | None = None
    parent: str | None = None
    train_cases: list[Case] = field(default_factory=list)
    temperature: float = 1.0
    validation: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


Progress = Callable[[str], None]


def run_experiment(
    config: PersonalizeConfig,
    out_dir: Path,
    *,
    diagnoser: Any = None,
    embedder: Any = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the experiment of ``config`` and write its outputs to ``out_dir``; returns the
    ``table.json`` content. ``diagnoser``: a :class:`~feddx.model.predict.Diagnoser` without
    adapters to use instead of loading ``config.model`` (tests pass a tiny model);
    ``embedder``: the :class:`~feddx.personalize.retrieval.Embedder` of the individual column
    (default all-MiniLM-L6-v2).

    Raises :class:`DataError` for unusable data and :class:`ConfigError` for a config that
    cannot run (e.g. a diagnoser already holding another LoRA layout).
    """
    import torch

    from feddx.data.candidates import candidate_list
    from feddx.data.sources import load_cases
    from feddx.model.adapter import adapter_state
    from feddx.paths import activation_cache_root
    from feddx.personalize.methods import LocalTrainer, ditto, federate, local_finetune
    from feddx.train.config import TrainConfig
    from feddx.train.recipe import load_diagnoser

    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    loaded = load_cases(
        config.data,
        purpose="personalize",
        max_cases=config.max_cases,
        seed=config.seed,
        top_labels=config.top_labels,
    )
    groups = build_groups(loaded.cases, config)
    all_cases = [
        c for inst in groups.institutions for c in inst.train + inst.validation + inst.test
    ]
    candidates = candidate_list(loaded.source, loaded.path, all_cases)
    say(f"{len(groups.institutions)} institutions in {len(groups.regions())} regions")

    if diagnoser is None:
        diagnoser = load_diagnoser(config.model)
    held = diagnoser.lora  # as attached; config.lora may say "auto"
    if held is not None and held.layout() != config.lora.resolved(diagnoser.model).layout():
        raise ConfigError(f"the diagnoser holds LoRA layout {diagnoser.lora}, not {config.lora}")
    torch.manual_seed(config.seed)  # the fresh adapter every federation starts from
    if diagnoser.lora is None:
        diagnoser.attach(config.lora)
    fresh = adapter_state(diagnoser.model)
    cache = config.activation_cache or activation_cache_root()
    trainer = LocalTrainer(
        diagnoser.model, diagnoser.tokenizer, Path(cache), candidates=candidates.names
    )
    fed_cfg = TrainConfig(
        lora=config.lora,
        learning_rate=config.learning_rate,
        epochs=config.local_epochs,
        batch_size=config.batch_size,
        answer_loss=config.answer_loss,
        seed=config.seed,
        max_prompt_tokens=config.max_prompt_tokens,
    )
    personal_cfg = fed_cfg.replace(
        learning_rate=config.personal_learning_rate, epochs=config.personal_epochs
    )
    insts = groups.institutions
    regions = groups.regions()
    adapters: list[_Adapter] = []

    say(f"global: FedAvg, {len(insts)} clients x {config.rounds} rounds")

    def on_round(r: int, losses: list[float]) -> None:
        say(f"  round {r}: clients' mean training loss {sum(losses) / len(losses):.3f}")

    glob = federate(
        trainer, fresh, [i.train for i in insts], fed_cfg, rounds=config.rounds, on_round=on_round
    )
    g = _Adapter(
        "global",
        "global",
        "global",
        glob.global_state,
        train_cases=[c for i in insts for c in i.train],
    )
    adapters.append(g)

    regional: dict[str, dict[str, _Adapter]] = {m: {} for m in config.regional}
    for region, members in regions.items():
        pooled = [c for i in members for c in i.train]
        for mode in config.regional:
            say(f"regional ({mode}): {region}")
            if mode == "finetune":
                state = local_finetune(trainer, g.state, pooled, personal_cfg)
            else:
                state = federate(
                    trainer,
                    g.state,
                    [i.train for i in members],
                    fed_cfg,
                    rounds=config.rounds,
                    on_round=on_round,
                ).global_state
            a = _Adapter(
                f"regional-{mode}:{region}",
                "regional",
                f"+regional ({mode})",
                state,
                region=region,
                parent="global",
                train_cases=pooled,
            )
            regional[mode][region] = a
            adapters.append(a)

    inst_adapters: dict[str, dict[str, _Adapter]] = {}
    for inst in insts:
        inst_adapters[inst.name] = {}

    def parent_of(inst: Institution) -> _Adapter:
        return (
            regional[config.regional[0]][inst.region]
            if config.institutional_from == "regional"
            else g
        )

    ditto_candidates: dict[str, list[_Adapter]] = {}
    for inst in insts:
        parent = parent_of(inst)
        if "finetune" in config.methods:
            say(f"institutional (finetune): {inst.name}")
            st = local_finetune(trainer, parent.state, inst.train, personal_cfg)
            inst_adapters[inst.name]["finetune"] = _Adapter(
                f"finetune:{inst.name}",
                "institutional",
                "+institutional (finetune)",
                st,
                region=inst.region,
                institution=inst.name,
                parent=parent.key,
                train_cases=inst.train,
            )
        if "ditto" in config.methods:
            ditto_candidates[inst.name] = []
            for mu in config.ditto_mu:
                say(f"institutional (ditto, mu={mu:g}): {inst.name}")
                st = ditto(trainer, parent.state, inst.train, personal_cfg, mu)
                ditto_candidates[inst.name].append(
                    _Adapter(
                        f"ditto-{mu:g}:{inst.name}",
                        "institutional",
                        "+institutional (ditto)",
                        st,
                        region=inst.region,
                        institution=inst.name,
                        parent=parent.key,
                        train_cases=inst.train,
                        extra={"mu": mu},
                    )
                )
    if "fedsa" in config.methods:
        say(f"institutional (fedsa): FedSA-LoRA, {len(insts)} clients x {config.rounds} rounds")
        sa = federate(
            trainer,
            fresh,
            [i.train for i in insts],
            fed_cfg,
            rounds=config.rounds,
            aggregate="lora-a",
            on_round=on_round,
        )
        for inst, st in zip(insts, sa.client_states, strict=True):
            inst_adapters[inst.name]["fedsa"] = _Adapter(
                f"fedsa:{inst.name}",
                "institutional",
                "+institutional (fedsa)",
                st,
                region=inst.region,
                institution=inst.name,
                parent=None,
                train_cases=inst.train,
            )

    # ---- scoring: each institution's adapters on its validation and test cases
    budget = config.max_prompt_tokens
    for a in [
        *adapters,
        *(x for d in inst_adapters.values() for x in d.values()),
        *(x for lst in ditto_candidates.values() for x in lst),
    ]:
        diagnoser.add_state(a.key, a.state, max_prompt_tokens=budget)
    val_preds: dict[str, dict[str, list[Prediction]]] = {}
    test_preds: dict[str, dict[str, list[Prediction]]] = {}
    for inst in insts:
        names = [
            "global",
            *(regional[m][inst.region].key for m in config.regional),
            *(a.key for a in inst_adapters[inst.name].values()),
            *(a.key for a in ditto_candidates.get(inst.name, [])),
        ]
        say(f"scoring {inst.name}: {len(inst.validation)} validation + {len(inst.test)} test cases")
        val_preds[inst.name] = score_members(
            diagnoser, inst.validation, candidates, names, max_prompt_tokens=budget
        )
        test_preds[inst.name] = score_members(
            diagnoser, inst.test, candidates, names, max_prompt_tokens=budget
        )

    # Ditto: each institution keeps the mu with the best validation figures.
    for inst in insts:
        tried = ditto_candidates.get(inst.name)
        if not tried:
            continue
        best = _first_best([(a, group_metrics(val_preds[inst.name][a.key])) for a in tried])
        best.extra["mu_tried"] = list(config.ditto_mu)
        inst_adapters[inst.name]["ditto"] = best

    # Default regional construction: the better pooled validation top-1 when both were made.
    default_regional = config.regional[0]
    regional_choice: dict[str, dict[str, float]] = {}
    for mode in config.regional:
        pooled_preds = [
            p for inst in insts for p in val_preds[inst.name][regional[mode][inst.region].key]
        ]
        regional_choice[mode] = group_metrics(pooled_preds)
    if len(config.regional) > 1:
        default_regional = max(
            config.regional,
            key=lambda m: (
                regional_choice[m]["top1"],
                regional_choice[m]["macro_f1"],
                -config.regional.index(m),
            ),
        )

    # Temperatures and validation metrics, each adapter on its own group's validation cases.
    from feddx.evaluate.calibration import fit_prediction_temperature

    def own_val(a: _Adapter) -> list[Prediction]:
        return [
            p
            for inst in insts
            if (
                a.level == "global"
                or (a.level == "regional" and inst.region == a.region)
                or inst.name == a.institution
            )
            for p in val_preds[inst.name][a.key]
        ]

    final_inst = [a for d in inst_adapters.values() for a in d.values()]
    for a in [*adapters, *final_inst]:
        preds = own_val(a)
        a.validation = group_metrics(preds)
        a.temperature = fit_prediction_temperature(preds)

    columns = [
        "global",
        *(f"+regional ({m})" for m in config.regional),
        *(f"+institutional ({m})" for m in config.methods),
        SELECTED,
        *([INDIVIDUAL] if config.individual else []),
    ]

    # Per institution, the adapter of its chain with the best validation figures (ties keep
    # the less specific one): what a hospital would deploy without looking at its test cases.
    selected: dict[str, str] = {}
    for inst in insts:
        options = [
            "global",
            regional[default_regional][inst.region].key,
            *(
                inst_adapters[inst.name][m].key
                for m in config.methods
                if m in inst_adapters[inst.name]
            ),
        ]
        selected[inst.name] = _first_best(
            [(key, group_metrics(val_preds[inst.name][key])) for key in options]
        )

    # The default institutional method: the best pooled validation figures over every
    # institution (a few hundred cases, where one institution's 15-40 are too few to choose
    # by). It is what the registry deploys and what the individual level builds on.
    method_validation: dict[str, dict[str, float]] = {}
    for method in config.methods:
        pooled_preds = [
            p
            for inst in insts
            if method in inst_adapters[inst.name]
            for p in val_preds[inst.name][inst_adapters[inst.name][method].key]
        ]
        method_validation[method] = group_metrics(pooled_preds)
    default_method = _first_best([(m, method_validation[m]) for m in config.methods])
    candidates_deployed = {
        inst.name: inst_adapters[inst.name][default_method].key for inst in insts
    }
    # The gate: what answers each institution is the most specific of those adapters that beat
    # its parent on its own group's validation cases (feddx.personalize.gate).
    gates, deployed = gate_deployment(
        insts, regional[default_regional], candidates_deployed, val_preds
    )

    # The individual level on top of what each institution deploys: its own kNN prior.
    individual: dict[str, dict[str, Any]] = {}
    if config.individual:
        from feddx.personalize.retrieval import IndividualContext, MiniLMEmbedder

        embedder = embedder or MiniLMEmbedder()
        for inst in insts:
            say(f"individual context: {inst.name} ({len(inst.train)} indexed cases)")
            ctx = IndividualContext.fit(
                diagnoser,
                inst.train,
                inst.validation,
                candidates.names,
                adapter=deployed[inst.name],
                icd10=candidates.icd10,
                embedder=embedder,
            )
            test_preds[inst.name][INDIVIDUAL] = ctx.diagnose(
                diagnoser,
                inst.test,
                candidates.names,
                adapter=deployed[inst.name],
                icd10=candidates.icd10,
            )
            individual[inst.name] = {
                "adapter": deployed[inst.name],
                "prior_weight": ctx.prior_weight,
                "indexed_cases": len(ctx.index),
            }

    def column_key(inst: Institution, column: str) -> str | None:
        if column == "global":
            return "global"
        if column == SELECTED:
            return selected[inst.name]
        if column == INDIVIDUAL:
            return INDIVIDUAL
        for m in config.regional:
            if column == f"+regional ({m})":
                return regional[m][inst.region].key
        for m in config.methods:
            if column == f"+institutional ({m})":
                a = inst_adapters[inst.name].get(m)
                return a.key if a else None
        return None

    rows = []
    scopes: list[tuple[str, str, list[Institution]]] = [("all", "all", insts)]
    for region, members in regions.items():
        scopes.append(("region", region, members))
        scopes.extend(("institution", i.name, [i]) for i in members)
    for kind, name, members in scopes:
        row: dict[str, Any] = {
            "kind": kind,
            "group": name,
            "n": sum(len(i.test) for i in members),
            "region": members[0].region if kind != "all" else None,
        }
        for column in columns:
            preds = []
            for inst in members:
                key = column_key(inst, column)
                if key is not None:
                    preds.extend(test_preds[inst.name][key])
            row[column] = group_metrics(preds) if preds else None
        rows.append(row)

    summary = _summary(rows, columns, regions)
    result: dict[str, Any] = {
        "config": config.to_dict(),
        "data": loaded.spec,
        "source": loaded.source,
        "candidates": len(candidates.names),
        "groups": [
            {
                "region": i.region,
                "institution": i.name,
                "train": len(i.train),
                "validation": len(i.validation),
                "test": len(i.test),
            }
            for i in insts
        ],
        "notes": groups.notes,
        "columns": columns,
        "rows": rows,
        "summary": summary,
        "regional_validation": regional_choice,
        "regional_default": default_regional,
        "selected_on_validation": selected,
        "method_validation": method_validation,
        "default_method": default_method,
        "gate": {
            "rule": GATE_RULE,
            "decisions": {k: d.to_dict() for k, d in gates.items()},
            "answering": deployed,
        },
        "ditto_mu": {
            i: inst_adapters[i]["ditto"].extra.get("mu")
            for i in inst_adapters
            if "ditto" in inst_adapters[i]
        },
        "adapters": [],
        "seconds": time.perf_counter() - started,
        "individual_context": (
            {
                "column": INDIVIDUAL,
                "per_institution": individual,
                "note": f"the default method's ({default_method}) institutional adapter plus the "
                "institution's kNN prior (weight chosen "
                "on its validation cases); patient history is in every column's prompt; history "
                "order and few-shot context: benchmarks/bench_individual.py",
            }
            if config.individual
            else "off (individual: false)"
        ),
    }
    # The table first: a registration that fails (a full disk, a name the registry refuses)
    # must not cost the measurements.
    write_outputs(result, out_dir)
    result["adapters"] = _save_and_register(
        config,
        out_dir,
        diagnoser,
        [*adapters, *final_inst],
        default_regional,
        loaded.source,
        gates=gates,
        candidates=candidates,
    )
    write_outputs(result, out_dir)
    return result


def gate_deployment(
    insts: Sequence[Institution],
    regional: Mapping[str, _Adapter],
    proposed: Mapping[str, str],
    val_preds: Mapping[str, Mapping[str, Sequence[Prediction]]],
) -> tuple[dict[str, GateDecision], dict[str, str]]:
    """The gate (:mod:`feddx.personalize.gate`) on what the hierarchy would deploy: each
    region's ``regional`` adapter against the global one on the region's validation cases,
    then each institution's ``proposed`` adapter against whichever of those answers it.
    Returns every decision by adapter key, and the key answering each institution."""

    def right(names: Sequence[str], key: str) -> list[bool]:
        return [p.top == p.gold for n in names for p in val_preds[n][key]]

    decisions: dict[str, GateDecision] = {}
    answering: dict[str, str] = {}
    for region, a in sorted(regional.items()):
        members = [i.name for i in insts if i.region == region]
        d = gate(region, a.key, "global", right(members, a.key), right(members, "global"))
        decisions[a.key] = d
        answering |= dict.fromkeys(members, a.key if d.accepted else "global")
    for inst in insts:
        key, parent = proposed[inst.name], answering[inst.name]
        d = gate(inst.name, key, parent, right([inst.name], key), right([inst.name], parent))
        decisions[key] = d
        if d.accepted:
            answering[inst.name] = key
    return decisions, answering


def registry_scope(name: str) -> str:
    """A region or institution name as a registry scope: its one slug
    (:func:`feddx.data.slug.slug`: "Univ. Hospitals Zurich/Basel" ->
    ``univ-hospitals-zurich-basel``, as ``feddx deploy`` and the service name it), or
    ``unnamed`` for a name without a letter or digit."""
    from feddx.data.slug import slug

    return slug(name) or "unnamed"


def _summary(
    rows: Sequence[dict[str, Any]], columns: Sequence[str], regions: dict[str, Any]
) -> dict[str, Any]:
    """Mean per-region and per-institution top-1 by column, and each column's gain over global."""
    out: dict[str, Any] = {}
    for kind in ("region", "institution"):
        sel = [r for r in rows if r["kind"] == kind]
        means = {}
        for c in columns:
            vals = [r[c]["top1"] for r in sel if r[c] is not None]
            if vals:
                means[c] = sum(vals) / len(vals)
        out[f"mean_{kind}_top1"] = means
        if "global" in means:
            out[f"mean_{kind}_top1_gain"] = {c: v - means["global"] for c, v in means.items()}
    return out


def _save_and_register(
    config: PersonalizeConfig,
    out_dir: Path,
    diagnoser: Any,
    adapters: Sequence[_Adapter],
    default_regional: str,
    source: str,
    *,
    gates: Mapping[str, GateDecision],
    candidates: CandidateList,
) -> list[dict[str, Any]]:
    """Save each adapter under ``out_dir/adapters`` and register what the hierarchy deploys
    (parents first): the global adapter, and those of the default regional construction and of
    each institution's default institutional method (the best on pooled validation) that
    passed the gate (``gates``), so the resolver answers with them and, where one failed, with
    its parent; the other adapters are saved only. Returns one record per adapter (registry id
    if registered, or the gate's reason it is not; folder, temperature, validation metrics)."""
    from feddx.model.adapter import load_adapter_state
    from feddx.train.recipe import save_trained_adapter

    records = []
    registry = None
    if config.register_adapters:
        from feddx.personalize.registry import AdapterRegistry, data_fingerprint

        registry = AdapterRegistry(
            Path(config.registry) if config.registry else out_dir / "registry"
        )
    ids: dict[str, str] = {}
    for a in adapters:
        folder = out_dir / "adapters" / a.key.replace(":", "__").replace("/", "_").replace(" ", "_")
        load_adapter_state(diagnoser.model, a.state)
        save_trained_adapter(
            diagnoser.model,
            folder,
            base_fingerprint=diagnoser.base_fingerprint,
            max_prompt_tokens=config.max_prompt_tokens,
            candidates=candidates,
            temperature=a.temperature,
            temperature_source="validation split of its group's training cases",
            metadata={
                "data": source,
                "level": a.level,
                "column": a.column,
                "region": a.region,
                "institution": a.institution,
                **{k: v for k, v in a.extra.items() if k == "mu"},
            },
        )
        record: dict[str, Any] = {
            "key": a.key,
            "level": a.level,
            "column": a.column,
            "folder": str(folder),
            "temperature": a.temperature,
            "validation": a.validation,
        }
        decision = gates.get(a.key)
        register = a.level == "global" or (decision is not None and decision.accepted)
        if decision is not None:
            record["gate"] = decision.to_dict()
        record["registered"] = register and registry is not None
        if registry is not None and register:
            entry = registry.register(
                folder,
                level=a.level,
                region=None if a.region is None else registry_scope(a.region),
                institution=None if a.institution is None else registry_scope(a.institution),
                # a parent the gate kept out: the next registered one up (the global adapter)
                parent_id=(ids.get(a.parent) or ids.get(adapters[0].key)) if a.parent else None,
                data_fingerprint=data_fingerprint(a.train_cases),
                metrics={f"validation_{k}": v for k, v in a.validation.items()},
            )
            ids[a.key] = entry.adapter_id
            record["registry_id"] = entry.adapter_id
        records.append(record)
    diagnoser.add_state("global", adapters[0].state, max_prompt_tokens=config.max_prompt_tokens)
    return records


# ----------------------------------------------------------------------------- outputs
def _fmt(m: dict[str, float] | None) -> str:
    return "—" if m is None else f"{m['top1']:.3f} / {m['top3']:.3f} / {m['macro_f1']:.3f}"


def render_table(result: dict[str, Any]) -> str:
    """``table.md``: one row per group (all, each region, its institutions), one column per
    adapter level and method, each cell ``top-1 / top-3 / macro-F1`` on the test split."""
    columns = result["columns"]
    lines = [
        f"# Personalization on {result['source']} ({result['candidates']} candidates)",
        "",
        "Test split; each cell is top-1 / top-3 / macro-F1. Institutional columns score each "
        "institution with its own adapter; region and `all` rows pool those predictions.",
        "",
        "| group | n | " + " | ".join(columns) + " |",
        "|---|---:|" + "---:|" * len(columns),
    ]
    for r in result["rows"]:
        name = {"all": "**all**", "region": f"**{r['group']}**"}.get(
            r["kind"], f"&nbsp;&nbsp;{r['group']}"
        )
        lines.append(f"| {name} | {r['n']} | " + " | ".join(_fmt(r[c]) for c in columns) + " |")
    s = result["summary"]
    lines += ["", "Mean top-1 over groups (gain over global):", ""]
    for kind in ("region", "institution"):
        means, gains = s.get(f"mean_{kind}_top1", {}), s.get(f"mean_{kind}_top1_gain", {})
        cells = ", ".join(f"{c} {means[c]:.3f} ({gains.get(c, 0.0):+.3f})" for c in means)
        lines.append(f"- per {kind}: {cells}")
    lines.append(
        f"- regional default: {result['regional_default']} (validation: "
        + ", ".join(f"{m} top-1 {v['top1']:.3f}" for m, v in result["regional_validation"].items())
        + ")"
    )
    if result.get("selected_on_validation"):
        lines.append(
            f"- {SELECTED}: "
            + ", ".join(f"{k} -> {v}" for k, v in result["selected_on_validation"].items())
        )
    if result.get("method_validation"):
        lines.append(
            f"- default institutional method (registered where it passes the gate): "
            f"{result['default_method']} "
            "(pooled validation top-1: "
            + ", ".join(f"{m} {v['top1']:.3f}" for m, v in result["method_validation"].items())
            + ")"
        )
    if result.get("gate"):
        lines.append(f"- gate: {result['gate']['rule']}")
        lines += [f"  - {d['reason']}" for d in result["gate"]["decisions"].values()]
    if result.get("ditto_mu"):
        lines.append(
            "- Ditto mu chosen on validation: "
            + ", ".join(f"{k} {v:g}" for k, v in result["ditto_mu"].items())
        )
    for note in result["notes"]:
        lines.append(f"- {note}")
    ind = result["individual_context"]
    if isinstance(ind, dict):
        lines.append(
            f"- {INDIVIDUAL}: {ind['note']}; prior weight per institution: "
            + ", ".join(f"{k} {v['prior_weight']:.1f}" for k, v in ind["per_institution"].items())
        )
    else:
        lines.append(f"- individual context: {ind}")
    lines.append("")
    lines.append("| region | institution | train | validation | test |")
    lines.append("|---|---|---:|---:|---:|")
    for g in result["groups"]:
        lines.append(
            f"| {g['region']} | {g['institution']} | {g['train']} | {g['validation']} | {g['test']} |"
        )
    return "\n".join(lines) + "\n"


def plot_groups(result: dict[str, Any], path: Path) -> None:
    """``per_group.png``: top-1 per region and institution, one bar per column (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from feddx.io import atomic_write_with

    rows = [r for r in result["rows"] if r["kind"] != "all"]
    columns = result["columns"]
    width = 0.8 / max(1, len(columns))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows) + 2), 4.5))
    for j, c in enumerate(columns):
        xs = [i + (j - (len(columns) - 1) / 2) * width for i in range(len(rows))]
        ys = [r[c]["top1"] if r[c] else 0.0 for r in rows]
        ax.bar(xs, ys, width, label=c, color=plt.get_cmap("tab10")(j % _COLOUR_CYCLE))
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(
        [("[R] " if r["kind"] == "region" else "") + f"{r['group']}\n(n={r['n']})" for r in rows],
        rotation=30,
        ha="right",
        fontsize=8,
    )
    ax.set_ylabel("top-1 (test)")
    ax.set_ylim(0, 1)
    ax.set_title(f"Personalization per group: {result['source']}")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    atomic_write_with(path, lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)


def write_outputs(result: dict[str, Any], out_dir: Path) -> None:
    """Write ``table.md``, ``table.json`` and ``per_group.png`` into ``out_dir`` (atomic)."""
    from feddx.io import atomic_write_json, atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / TABLE_MD, render_table(result))
    atomic_write_json(out_dir / TABLE_JSON, json.loads(json.dumps(result, default=str)))
    plot_groups(result, out_dir / PLOT_FILE)


__all__ = [
    "METHODS",
    "Groups",
    "Institution",
    "PersonalizeConfig",
    "assign_groups",
    "build_groups",
    "group_metrics",
    "render_table",
    "run_experiment",
    "score_members",
    "write_outputs",
]
