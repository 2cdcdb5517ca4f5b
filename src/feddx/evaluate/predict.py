"""Run the scorer over a set of cases, timing each one."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from feddx.data.schema import Case
from feddx.model.prompt import DEFAULT_MAX_PROMPT_TOKENS, render_prompt
from feddx.model.scoring import (
    DEFAULT_METHOD,
    CandidateSet,
    ScoredCandidate,
    ScoringMethod,
    candidate_scores,
    prepare_candidates,
    probabilities,
    rank_scores,
)


@dataclass(frozen=True)
class Prediction:
    """The ranked differential the model gave for one case, and how long it took.

    ``ranked`` holds every candidate, most probable first, with its raw score, so the
    probabilities can be recomputed at another temperature without running the model again
    (:func:`with_temperature`).
    """

    case: Case
    ranked: list[ScoredCandidate]
    latency_ms: float

    @property
    def top(self) -> str:
        return self.ranked[0].name

    @property
    def gold(self) -> str:
        """The reference diagnosis (:class:`ValueError` naming the case if unlabeled)."""
        return self.case.require_label().diagnosis

    def probability_of(self, name: str) -> float:
        """The predicted probability of ``name`` (0 if it is not a candidate)."""
        return next((r.probability for r in self.ranked if r.name == name), 0.0)


def check_labels(cases: Sequence[Case], candidates: Sequence[str], what: str = "cases") -> None:
    """Raise :class:`ValueError` unless every case is labeled with one of ``candidates``.

    The message names each offending label (a diagnosis name, never patient text) with its
    count and one example case id, so the user can fix the candidate list or the data.
    """
    if not cases:
        raise ValueError(f"no {what} to evaluate")
    unlabeled = [c.case_id for c in cases if c.label is None]
    if unlabeled:
        raise ValueError(
            f"{len(unlabeled)} of the {what} have no label (first: case {unlabeled[0]!r})"
        )
    known = set(candidates)
    outside = Counter(
        c.require_label().diagnosis for c in cases if c.label and c.label.diagnosis not in known
    )
    if outside:
        first = {
            name: next(c.case_id for c in cases if c.label and c.label.diagnosis == name)
            for name in outside
        }
        listed = "; ".join(
            f"{name!r} ({n} case{'s' if n > 1 else ''}, e.g. {first[name]!r})"
            for name, n in outside.most_common(5)
        )
        more = f" and {len(outside) - 5} more" if len(outside) > 5 else ""
        raise ValueError(
            f"label outside the candidate list ({len(known)} candidates) in {what}: {listed}{more}"
        )


def predict_cases(
    model: Any,
    tokenizer: Any,
    cases: Sequence[Case],
    candidates: Sequence[str] | CandidateSet,
    *,
    temperature: float = 1.0,
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS,
    icd10: Mapping[str, str] | None = None,
    on_case: Callable[[int], None] | None = None,
    method: ScoringMethod = DEFAULT_METHOD,
    require_labels: bool = False,
    members: Sequence[Mapping[str, Any]] = (),
) -> list[Prediction]:
    """Score every case against ``candidates``; ``on_case(i)`` reports progress.

    The candidate list is tokenised and laid out as a trie once for all cases. With
    ``require_labels`` every case must carry a label from the candidate list
    (:func:`check_labels`); otherwise unlabeled cases are scored too (e.g. for serving).

    ``members``: LoRA states (:func:`~feddx.train.adapter.adapter_state`) of an adapter
    ensemble, all of ``model``'s LoRA layout: the members' probabilities are averaged
    (:class:`~feddx.evaluate.ensemble.EnsembleScorer`, which runs the frozen layers below the
    adapters once per case); a case's latency covers every member. ``model`` is left holding
    the first member. Empty: ``model`` as it is.
    """
    cset = (
        candidates
        if isinstance(candidates, CandidateSet)
        else prepare_candidates(tokenizer, candidates, icd10)
    )
    if isinstance(candidates, CandidateSet) and icd10:
        cset = replace(cset, icd10={**cset.icd10, **icd10})
    if require_labels:
        check_labels(cases, cset.names)
    probabilities([0.0], temperature)  # fail on a bad temperature before any model work
    ensemble = None
    if members:
        from feddx.evaluate.ensemble import EnsembleScorer

        ensemble = EnsembleScorer(model, members)
    out: list[Prediction] = []
    for i, case in enumerate(cases):
        start = time.perf_counter()
        prompt = render_prompt(case, tokenizer, max_prompt_tokens)
        if ensemble is None:
            scores = candidate_scores(model, prompt.input_ids, cset, method=method)
        else:
            scores = ensemble.scores(prompt.input_ids, cset, method)
        ranked = rank_scores(cset, scores, temperature)
        out.append(Prediction(case, ranked, (time.perf_counter() - start) * 1000))
        if on_case:
            on_case(i)
    return out


def with_temperature(pred: Prediction, temperature: float) -> Prediction:
    """The same prediction with probabilities recomputed as ``softmax(score / temperature)``.

    The ranking does not change (a positive temperature preserves the order of the scores).
    """
    probs = probabilities([r.score for r in pred.ranked], temperature)
    ranked = [replace(r, probability=p) for r, p in zip(pred.ranked, probs, strict=True)]
    return replace(pred, ranked=ranked)
