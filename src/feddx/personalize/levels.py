"""The levels of the hierarchy, trained in order: **federate** (the global adapter, FedAvg over
every institution from a seeded fresh adapter), then **personalize** (regional adapters from
the global one, institutional ones per method), and, once an institution's deployed adapter is
chosen, the **individual** level (its own institutional retrieval prior over its past cases).

Every function here produces adapters or predictions and nothing else: which adapter wins
is :mod:`feddx.personalize.choose`'s job, saving and registering
:mod:`feddx.personalize.register`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from feddx.data.candidates import CandidateList
from feddx.data.schema import Case
from feddx.errors import ConfigError
from feddx.model.adapter import AdapterState
from feddx.model.predict import Prediction
from feddx.personalize.config import PersonalizeConfig
from feddx.personalize.groups import Groups, Institution

if TYPE_CHECKING:
    from feddx.personalize.embedding import Embedder
    from feddx.personalize.retrieval import IndividualContext
    from feddx.train.config import TrainConfig

Progress = Callable[[str], None]


@dataclass
class TrainedAdapter:
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


@dataclass
class Hierarchy:
    """Every adapter of the run: the global one, the regional ones (construction -> region ->
    adapter), each institution's per method, and the Ditto adapters tried per institution
    (one per ``ditto_mu``; :func:`feddx.personalize.choose.choose` keeps the best as its
    ``"ditto"`` adapter)."""

    glob: TrainedAdapter
    regional: dict[str, dict[str, TrainedAdapter]] = field(default_factory=dict)
    institutional: dict[str, dict[str, TrainedAdapter]] = field(default_factory=dict)
    ditto_tried: dict[str, list[TrainedAdapter]] = field(default_factory=dict)

    def upper(self) -> list[TrainedAdapter]:
        """The global adapter, then the regional ones region by region (parents first)."""
        regions = sorted({r for by_region in self.regional.values() for r in by_region})
        return [
            self.glob,
            *(self.regional[m][r] for r in regions for m in self.regional if r in self.regional[m]),
        ]

    def final_institutional(self) -> list[TrainedAdapter]:
        """Each institution's adapter per method (after the Ditto choice)."""
        return [a for by_method in self.institutional.values() for a in by_method.values()]

    def held(self) -> Iterator[TrainedAdapter]:
        """Every adapter trained, in the order they are handed to the diagnoser."""
        yield from self.upper()
        yield from self.final_institutional()
        yield from (a for tried in self.ditto_tried.values() for a in tried)


@dataclass
class Training:
    """What every level trains with: the trainer over the diagnoser's model, the fresh adapter
    each federation starts from, the two recipes (federated rounds, local fine-tuning)."""

    trainer: Any  # feddx.personalize.methods.LocalTrainer
    fresh: AdapterState
    federated: TrainConfig
    personal: TrainConfig
    rounds: int
    say: Progress

    def on_round(self, r: int, losses: list[float]) -> None:
        """One progress line per federated round."""
        self.say(f"  round {r}: clients' mean training loss {sum(losses) / len(losses):.3f}")


def prepare_training(
    config: PersonalizeConfig, diagnoser: Any, candidates: CandidateList, say: Progress
) -> Training:
    """Attach ``config.lora`` to the diagnoser (seeded: the fresh adapter every federation
    starts from) and build the trainer and recipes. Raises :class:`ConfigError` when the
    diagnoser already holds another LoRA layout."""
    import torch

    from feddx.model.adapter import adapter_state
    from feddx.paths import activation_cache_root
    from feddx.personalize.methods import LocalTrainer
    from feddx.train.config import TrainConfig

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
    federated = TrainConfig(
        lora=config.lora,
        learning_rate=config.learning_rate,
        epochs=config.local_epochs,
        batch_size=config.batch_size,
        answer_loss=config.answer_loss,
        seed=config.seed,
        max_prompt_tokens=config.max_prompt_tokens,
        history_dropout=config.history_dropout,
    )
    personal = federated.replace(
        learning_rate=config.personal_learning_rate, epochs=config.personal_epochs
    )
    return Training(trainer, fresh, federated, personal, config.rounds, say)


def federate_global(groups: Groups, training: Training) -> Hierarchy:
    """The global level: FedAvg over every institution's training cases from the fresh
    adapter."""
    from feddx.personalize.methods import federate

    insts = groups.institutions
    training.say(f"global: FedAvg, {len(insts)} clients x {training.rounds} rounds")
    result = federate(
        training.trainer,
        training.fresh,
        [i.train for i in insts],
        training.federated,
        rounds=training.rounds,
        on_round=training.on_round,
    )
    glob = TrainedAdapter(
        "global",
        "global",
        "global",
        result.global_state,
        train_cases=[c for i in insts for c in i.train],
    )
    return Hierarchy(glob)


def personalize_regions(
    config: PersonalizeConfig, groups: Groups, training: Training, hierarchy: Hierarchy
) -> None:
    """The regional level, per region and construction (``config.regional``): fine-tuning of
    the global adapter on the region's pooled training cases, or a FedAvg sub-federation of its
    institutions from the global adapter. Fills ``hierarchy.regional``."""
    from feddx.personalize.methods import federate, local_finetune

    hierarchy.regional = {m: {} for m in config.regional}
    for region, members in groups.regions().items():
        pooled = [c for i in members for c in i.train]
        for mode in config.regional:
            training.say(f"regional ({mode}): {region}")
            if mode == "finetune":
                state = local_finetune(
                    training.trainer, hierarchy.glob.state, pooled, training.personal
                )
            else:
                state = federate(
                    training.trainer,
                    hierarchy.glob.state,
                    [i.train for i in members],
                    training.federated,
                    rounds=training.rounds,
                    on_round=training.on_round,
                ).global_state
            hierarchy.regional[mode][region] = TrainedAdapter(
                f"regional-{mode}:{region}",
                "regional",
                f"+regional ({mode})",
                state,
                region=region,
                parent="global",
                train_cases=pooled,
            )


def institutional_parent(
    config: PersonalizeConfig, hierarchy: Hierarchy, inst: Institution
) -> TrainedAdapter:
    """Where ``finetune`` and ``ditto`` start for ``inst``: the global adapter or its region's
    adapter of the first listed construction (``config.institutional_from``)."""
    if config.institutional_from == "regional":
        return hierarchy.regional[config.regional[0]][inst.region]
    return hierarchy.glob


def personalize_institutions(
    config: PersonalizeConfig, groups: Groups, training: Training, hierarchy: Hierarchy
) -> None:
    """The institutional level, per method of ``config.methods``: ``finetune`` and one ``ditto``
    per ``ditto_mu`` from :func:`institutional_parent`, then ``fedsa`` as its own federation
    from the fresh adapter. Fills ``hierarchy.institutional`` and ``hierarchy.ditto_tried``."""
    from feddx.personalize.methods import ditto, local_finetune

    for inst in groups.institutions:
        hierarchy.institutional[inst.name] = {}
        parent = institutional_parent(config, hierarchy, inst)

        if "finetune" in config.methods:
            training.say(f"institutional (finetune): {inst.name}")
            st = local_finetune(training.trainer, parent.state, inst.train, training.personal)
            hierarchy.institutional[inst.name]["finetune"] = _institutional(
                f"finetune:{inst.name}", "finetune", st, inst, parent
            )
        if "ditto" in config.methods:
            hierarchy.ditto_tried[inst.name] = []
            for mu in config.ditto_mu:
                training.say(f"institutional (ditto, mu={mu:g}): {inst.name}")
                st = ditto(training.trainer, parent.state, inst.train, training.personal, mu)
                hierarchy.ditto_tried[inst.name].append(
                    _institutional(f"ditto-{mu:g}:{inst.name}", "ditto", st, inst, parent, mu=mu)
                )
    if "fedsa" in config.methods:
        _federate_fedsa(groups, training, hierarchy)


def _institutional(
    key: str,
    method: str,
    state: AdapterState,
    inst: Institution,
    parent: TrainedAdapter,
    **extra: Any,
) -> TrainedAdapter:
    """An institutional adapter of ``method`` for ``inst``, trained from ``parent``."""
    return TrainedAdapter(
        key,
        "institutional",
        f"+institutional ({method})",
        state,
        region=inst.region,
        institution=inst.name,
        parent=parent.key,
        train_cases=inst.train,
        extra=extra,
    )


def _federate_fedsa(groups: Groups, training: Training, hierarchy: Hierarchy) -> None:
    """FedSA-LoRA: a federation from the fresh adapter sharing the A matrices only; each
    institution keeps its own client state as its ``fedsa`` adapter (no parent)."""
    from feddx.personalize.methods import federate

    insts = groups.institutions
    training.say(
        f"institutional (fedsa): FedSA-LoRA, {len(insts)} clients x {training.rounds} rounds"
    )
    sa = federate(
        training.trainer,
        training.fresh,
        [i.train for i in insts],
        training.federated,
        rounds=training.rounds,
        aggregate="lora-a",
        on_round=training.on_round,
    )
    for inst, st in zip(insts, sa.client_states, strict=True):
        hierarchy.institutional[inst.name]["fedsa"] = TrainedAdapter(
            f"fedsa:{inst.name}",
            "institutional",
            "+institutional (fedsa)",
            st,
            region=inst.region,
            institution=inst.name,
            parent=None,
            train_cases=inst.train,
        )


@dataclass
class Individual:
    """The individual level per institution: its fitted context (index and prior weight, what
    a registry entry of kind ``case-index`` would hold), its test predictions, and the summary
    written to ``table.json``."""

    contexts: dict[str, IndividualContext] = field(default_factory=dict)
    test_preds: dict[str, list[Prediction]] = field(default_factory=dict)
    summary: dict[str, dict[str, Any]] = field(default_factory=dict)


def individualize(
    groups: Groups,
    diagnoser: Any,
    candidates: CandidateList,
    deployed: dict[str, str],
    *,
    embedder: Embedder | None,
    say: Progress,
) -> Individual:
    """The individual level on top of what each institution deploys (``deployed``: adapter key
    per institution): its own institutional retrieval prior
    (:class:`~feddx.personalize.retrieval.IndividualContext`, weight chosen on its validation
    cases), applied to its test cases."""
    from feddx.personalize.retrieval import IndividualContext, MiniLMEmbedder

    embedder = embedder or MiniLMEmbedder()
    out = Individual()
    for inst in groups.institutions:
        say(f"individual context: {inst.name} ({len(inst.train)} indexed cases)")
        adapter = deployed[inst.name]
        ctx = IndividualContext.fit(
            diagnoser,
            inst.train,
            inst.validation,
            candidates.names,
            adapter=adapter,
            icd10=candidates.icd10,
            embedder=embedder,
        )
        out.contexts[inst.name] = ctx
        out.test_preds[inst.name] = ctx.diagnose(
            diagnoser, inst.test, candidates.names, adapter=adapter, icd10=candidates.icd10
        )
        out.summary[inst.name] = {
            "adapter": adapter,
            "prior_weight": ctx.prior_weight,
            "indexed_cases": len(ctx.index),
        }
    return out


__all__ = [
    "Hierarchy",
    "Individual",
    "Progress",
    "TrainedAdapter",
    "Training",
    "federate_global",
    "individualize",
    "institutional_parent",
    "personalize_institutions",
    "personalize_regions",
    "prepare_training",
]
