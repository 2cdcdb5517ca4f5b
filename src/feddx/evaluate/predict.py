"""Run the scorer over a set of cases, timing each one."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from feddx.data.schema import Case
from feddx.model.prompt import DEFAULT_MAX_PROMPT_TOKENS, render_prompt
from feddx.model.scoring import ScoredCandidate, score_candidates


@dataclass(frozen=True)
class Prediction:
    """The ranked differential the model gave for one case, and how long it took."""

    case: Case
    ranked: list[ScoredCandidate]
    latency_ms: float

    @property
    def top(self) -> str:
        return self.ranked[0].name


def predict_cases(
    model: Any,
    tokenizer: Any,
    cases: Sequence[Case],
    candidates: Sequence[str],
    *,
    temperature: float = 1.0,
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS,
    icd10: dict[str, str] | None = None,
    on_case: Callable[[int], None] | None = None,
) -> list[Prediction]:
    """Score every case against ``candidates``; ``on_case(i)`` reports progress."""
    out: list[Prediction] = []
    for i, case in enumerate(cases):
        start = time.perf_counter()
        prompt = render_prompt(case, tokenizer, max_prompt_tokens)
        ranked = score_candidates(
            model, tokenizer, prompt.input_ids, candidates, temperature=temperature, icd10=icd10
        )
        out.append(Prediction(case, ranked, (time.perf_counter() - start) * 1000))
        if on_case:
            on_case(i)
    return out
