"""The **choose** stage: everything decided on validation cases, never on the test split.

- each institution's Ditto ``mu`` (the best of those tried);
- the default regional construction (the better pooled validation top-1 when both were made);
- each adapter's temperature and validation metrics, on its own group's validation cases;
- per institution, the adapter of its chain with the best validation figures (the
  ``selected on validation`` column);
- the default institutional method (the best pooled validation figures over every
  institution: a few hundred cases, where one institution's 15-40 are too few to choose by);
- the gate (:mod:`feddx.personalize.gate`): what answers each institution is the most
  specific of those adapters that beat its parent on its own group's validation cases.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from feddx.model.predict import Prediction
from feddx.personalize.config import PersonalizeConfig
from feddx.personalize.gate import GateDecision, gate
from feddx.personalize.groups import Groups, Institution
from feddx.personalize.levels import Hierarchy, TrainedAdapter
from feddx.personalize.scoring import Preds, group_metrics

_T = TypeVar("_T")


def _better(a: dict[str, float], b: dict[str, float]) -> bool:
    """Whether validation metrics ``a`` beat ``b`` (top-1, then macro-F1; ties keep ``b``)."""
    return (a["top1"], a["macro_f1"]) > (b["top1"], b["macro_f1"])


def first_best(scored: Sequence[tuple[_T, dict[str, float]]]) -> _T:
    """The option whose validation metrics are best by :func:`_better`, from ``(option,
    metrics)`` pairs; ties keep the earlier one (options are listed least specific or first
    configured first)."""
    best, best_m = scored[0]
    for option, m in scored[1:]:
        if _better(m, best_m):
            best, best_m = option, m
    return best


@dataclass
class Choice:
    """What the validation cases decided (see the module docstring)."""

    default_regional: str
    regional_validation: dict[str, dict[str, float]]
    selected: dict[str, str]
    method_validation: dict[str, dict[str, float]]
    default_method: str
    gates: dict[str, GateDecision]
    deployed: dict[str, str]


def choose(
    config: PersonalizeConfig, groups: Groups, hierarchy: Hierarchy, validation: Preds
) -> Choice:
    """Make every choice of the run on ``validation`` (predictions per institution and
    adapter key). Sets each institution's ``"ditto"`` adapter and every kept adapter's
    temperature and validation metrics in ``hierarchy``."""
    insts = groups.institutions
    keep_best_ditto(config, hierarchy, validation)
    default_regional, regional_validation = default_regional_mode(
        config, insts, hierarchy, validation
    )
    fit_temperatures(hierarchy, insts, validation)
    selected = {
        inst.name: select_for(config, hierarchy, inst, default_regional, validation)
        for inst in insts
    }
    method_validation = {m: pooled_metrics(validation, hierarchy, insts, m) for m in config.methods}
    default_method = first_best([(m, method_validation[m]) for m in config.methods])
    proposed = {i.name: hierarchy.institutional[i.name][default_method].key for i in insts}
    gates, deployed = gate_deployment(
        insts, hierarchy.regional[default_regional], proposed, validation
    )
    return Choice(
        default_regional,
        regional_validation,
        selected,
        method_validation,
        default_method,
        gates,
        deployed,
    )


def keep_best_ditto(config: PersonalizeConfig, hierarchy: Hierarchy, validation: Preds) -> None:
    """Each institution keeps the Ditto adapter (``mu``) with the best validation figures."""
    for name, tried in hierarchy.ditto_tried.items():
        if not tried:
            continue
        best = first_best([(a, group_metrics(validation[name][a.key])) for a in tried])
        best.extra["mu_tried"] = list(config.ditto_mu)
        hierarchy.institutional[name]["ditto"] = best


def default_regional_mode(
    config: PersonalizeConfig,
    insts: Sequence[Institution],
    hierarchy: Hierarchy,
    validation: Preds,
) -> tuple[str, dict[str, dict[str, float]]]:
    """The default regional construction (the better pooled validation top-1, then macro-F1,
    then the first listed, when both were made) and each construction's pooled metrics."""
    metrics: dict[str, dict[str, float]] = {}
    for mode in config.regional:
        pooled = [
            p
            for inst in insts
            for p in validation[inst.name][hierarchy.regional[mode][inst.region].key]
        ]
        metrics[mode] = group_metrics(pooled)
    default = config.regional[0]
    if len(config.regional) > 1:
        default = max(
            config.regional,
            key=lambda m: (metrics[m]["top1"], metrics[m]["macro_f1"], -config.regional.index(m)),
        )
    return default, metrics


def own_validation(
    a: TrainedAdapter, insts: Sequence[Institution], validation: Preds
) -> list[Prediction]:
    """``a``'s predictions on its own group's validation cases: every institution's for the
    global adapter, its region's for a regional one, its institution's otherwise."""
    return [
        p
        for inst in insts
        if (
            a.level == "global"
            or (a.level == "regional" and inst.region == a.region)
            or inst.name == a.institution
        )
        for p in validation[inst.name][a.key]
    ]


def fit_temperatures(hierarchy: Hierarchy, insts: Sequence[Institution], validation: Preds) -> None:
    """Each kept adapter's validation metrics and temperature, on :func:`own_validation`."""
    from feddx.evaluate.calibration import fit_prediction_temperature

    for a in [*hierarchy.upper(), *hierarchy.final_institutional()]:
        preds = own_validation(a, insts, validation)
        a.validation = group_metrics(preds)
        a.temperature = fit_prediction_temperature(preds)


def select_for(
    config: PersonalizeConfig,
    hierarchy: Hierarchy,
    inst: Institution,
    default_regional: str,
    validation: Preds,
) -> str:
    """The adapter of ``inst``'s chain with the best validation figures (ties keep the less
    specific one): what a hospital would deploy without looking at its test cases."""
    own = hierarchy.institutional[inst.name]
    options = [
        "global",
        hierarchy.regional[default_regional][inst.region].key,
        *(own[m].key for m in config.methods if m in own),
    ]
    return first_best([(key, group_metrics(validation[inst.name][key])) for key in options])


def pooled_metrics(
    validation: Preds, hierarchy: Hierarchy, insts: Sequence[Institution], method: str
) -> dict[str, float]:
    """``method``'s metrics on every institution's validation cases pooled, each scored by
    its own adapter of that method."""
    pooled = [
        p
        for inst in insts
        if method in hierarchy.institutional[inst.name]
        for p in validation[inst.name][hierarchy.institutional[inst.name][method].key]
    ]
    return group_metrics(pooled)


def _right(
    val_preds: Mapping[str, Mapping[str, Sequence[Prediction]]], names: Sequence[str], key: str
) -> list[bool]:
    """Whether ``key`` got each validation case of the institutions ``names`` right."""
    return [p.top == p.gold for n in names for p in val_preds[n][key]]


def gate_deployment(
    insts: Sequence[Institution],
    regional: Mapping[str, TrainedAdapter],
    proposed: Mapping[str, str],
    val_preds: Mapping[str, Mapping[str, Sequence[Prediction]]],
) -> tuple[dict[str, GateDecision], dict[str, str]]:
    """The gate (:mod:`feddx.personalize.gate`) on what the hierarchy would deploy: each
    region's ``regional`` adapter against the global one on the region's validation cases,
    then each institution's ``proposed`` adapter against whichever of those answers it.
    Returns every decision by adapter key, and the key answering each institution."""
    decisions: dict[str, GateDecision] = {}
    answering: dict[str, str] = {}
    for region, a in sorted(regional.items()):
        members = [i.name for i in insts if i.region == region]
        d = gate(
            region,
            a.key,
            "global",
            _right(val_preds, members, a.key),
            _right(val_preds, members, "global"),
        )
        decisions[a.key] = d
        answering |= dict.fromkeys(members, a.key if d.accepted else "global")
    for inst in insts:
        key, parent = proposed[inst.name], answering[inst.name]
        d = gate(
            inst.name,
            key,
            parent,
            _right(val_preds, [inst.name], key),
            _right(val_preds, [inst.name], parent),
        )
        decisions[key] = d
        if d.accepted:
            answering[inst.name] = key
    return decisions, answering


__all__ = ["Choice", "choose", "first_best", "gate_deployment", "own_validation"]
