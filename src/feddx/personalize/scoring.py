"""The **score** stage: every adapter of an institution's chain scored on its validation and
test cases, in one pass of the frozen layers per case (the adapters sit on the top layers, so
the layers below are shared: :class:`~feddx.model.ensemble.EnsembleScorer`'s
``member_scores``), and the metrics every later choice and table is made of."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from feddx.data.candidates import CandidateList
from feddx.data.schema import Case
from feddx.model.predict import Prediction
from feddx.personalize.config import PersonalizeConfig
from feddx.personalize.groups import Groups
from feddx.personalize.levels import Hierarchy, Progress


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


Preds = dict[str, dict[str, list[Prediction]]]  # institution -> adapter key -> predictions


@dataclass
class Scores:
    """Raw predictions (temperature 1) per institution and adapter key, on its validation
    cases (every choice is made on these) and its test cases (the table)."""

    validation: Preds
    test: Preds


def chain_keys(
    config: PersonalizeConfig, hierarchy: Hierarchy, inst_name: str, region: str
) -> list[str]:
    """The adapter keys scored for one institution: global, its region's adapter per
    construction, its institutional adapters, then every Ditto adapter tried."""
    return [
        "global",
        *(hierarchy.regional[m][region].key for m in config.regional),
        *(a.key for a in hierarchy.institutional[inst_name].values()),
        *(a.key for a in hierarchy.ditto_tried.get(inst_name, [])),
    ]


def score_hierarchy(
    config: PersonalizeConfig,
    groups: Groups,
    hierarchy: Hierarchy,
    diagnoser: Any,
    candidates: CandidateList,
    say: Progress,
) -> Scores:
    """Hand every adapter to the diagnoser, then score each institution's chain
    (:func:`chain_keys`) on its validation and test cases."""
    budget = config.max_prompt_tokens
    for a in hierarchy.held():
        diagnoser.add_state(a.key, a.state, max_prompt_tokens=budget)
    scores = Scores({}, {})
    for inst in groups.institutions:
        names = chain_keys(config, hierarchy, inst.name, inst.region)
        say(f"scoring {inst.name}: {len(inst.validation)} validation + {len(inst.test)} test cases")
        scores.validation[inst.name] = score_members(
            diagnoser, inst.validation, candidates, names, max_prompt_tokens=budget
        )
        scores.test[inst.name] = score_members(
            diagnoser, inst.test, candidates, names, max_prompt_tokens=budget
        )
    return scores


__all__ = ["Preds", "Scores", "chain_keys", "group_metrics", "score_hierarchy", "score_members"]
