"""The evaluation harness: every figure the issue asks for, from one call.

:func:`evaluate_cases` scores the cases with the LLM (one prompt pass per case), calibrates the
probabilities with a temperature fitted on cases it does not score, optionally lets the model
answer freely for BLEU/ROUGE, fits the classical baseline on the training cases, and returns an
:class:`EvaluationResult` that serialises to JSON and renders as an HTML report
(:mod:`feddx.evaluate.report`). Only aggregates and diagnosis names are kept: no patient text,
prompt or generated answer reaches the result. The per-case rankings (case id, reference and
every candidate's probability, for error analysis) ride along in ``EvaluationResult.cases``
but are left out of the JSON result; :func:`feddx.evaluate.report.write_predictions` writes
them to their own file.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from feddx.data.candidates import CandidateList
from feddx.data.schema import Case
from feddx.evaluate.baseline import fit_baseline
from feddx.evaluate.calibration import (
    cross_fit_temperature,
    fit_prediction_temperature,
    prediction_ece,
    reliability_curve,
    top1_confidence,
)
from feddx.evaluate.differential import DDXPLUS_THRESHOLD, differential_summary
from feddx.evaluate.groups import group_breakdown
from feddx.evaluate.hierarchy import LevelsFn, hierarchy_summary
from feddx.evaluate.metrics import confusion, summary
from feddx.evaluate.text_metrics import text_overlap
from feddx.model.predict import (
    AdapterChoice,
    Diagnoser,
    Prediction,
    check_labels,
    with_temperature,
)
from feddx.model.prompt import render_answer
from feddx.model.scoring import DEFAULT_METHOD, ScoringMethod
from feddx.settings import Settings

Progress = Callable[[str, int, int], None]  # (stage, done, total)
Calibration = Literal["cross-fit", "none"]
_MIN_CROSS_FIT = 10


@dataclass
class ModelMetrics:
    """Every metric of one model (the LLM or the baseline) on the evaluated cases."""

    summary: dict[str, float | int]
    calibration: dict[str, Any]
    groups: dict[str, dict[str, dict[str, float | int]]]
    confusion_labels: list[str]
    confusion_matrix: list[list[int]]
    differential: dict[str, float | int] | None = None
    hierarchy: dict[str, float | int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvaluationResult:
    """The outcome of :func:`evaluate_cases`.

    ``llm`` and ``baseline`` carry the same metrics; ``baseline_extra`` is the baseline fitted
    on the training split plus the extra cases an adapter trained on (``feddx train
    --extra-data``), so the LLM is also compared with a baseline that saw the same data;
    ``temperature`` says how the LLM's probabilities were calibrated (``method``:
    ``"validation"``, ``"cross-fit"``, ``"fixed"`` or ``"none"``) with the ECE before and
    after; ``generation`` holds BLEU/ROUGE when the model also answered freely. ``meta`` is
    free-form provenance (model, adapter, data, split) that callers such as the CLI fill in.
    """

    n: int
    candidates: list[str]
    scoring_method: str
    temperature: dict[str, Any]
    llm: ModelMetrics
    baseline: ModelMetrics | None = None
    baseline_extra: ModelMetrics | None = None
    generation: dict[str, float | int] | None = None
    seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    cases: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def headline(self) -> dict[str, float | int]:
        """The LLM's headline figures (n, top-1/3/5, macro-F1, balanced accuracy, latency)."""
        return dict(self.llm.summary)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the LLM's headline figures at the top level (``n``, ``top1``,
        ``top3``, ``top5``, ``macro_f1``, ``latency_ms_p50`` ...), then every detail except the
        per-case rows (a result file stays aggregate-only)."""
        fields = asdict(replace(self, cases=[]))  # the rows are not deep-copied only to be dropped
        fields.pop("cases")
        body: dict[str, Any] = _finite({**self.headline(), **fields})
        return body

    def to_json(self, indent: int | None = None) -> str:
        """Strict JSON (non-finite numbers become ``null``)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.generic):
        return _finite(obj.item())
    return obj


def model_metrics(
    preds: Sequence[Prediction],
    candidates: Sequence[str],
    *,
    icd10: Mapping[str, str] | None = None,
    levels_fn: LevelsFn | None = None,
    differential_threshold: float = DDXPLUS_THRESHOLD,
    differential_top_k: int | None = None,
) -> ModelMetrics:
    """All per-model metrics over ``preds`` (classification, calibration, groups, confusion,
    DDXPlus differential when the cases carry one, ICD-10 hierarchy when codes are known)."""
    conf, correct = top1_confidence(preds)
    labels, matrix = confusion(preds, candidates)
    has_diff = any(p.case.require_label().differential for p in preds)
    return ModelMetrics(
        summary=summary(preds),
        calibration={
            "ece": prediction_ece(preds),
            "reliability": [asdict(b) for b in reliability_curve(conf, correct)],
        },
        groups=group_breakdown(preds),
        confusion_labels=labels,
        confusion_matrix=matrix,
        differential=(
            differential_summary(preds, threshold=differential_threshold, top_k=differential_top_k)
            if has_diff
            else None
        ),
        hierarchy=hierarchy_summary(preds, icd10, levels_fn),
    )


class EvaluationOptions(Settings):
    """How :func:`evaluate_cases` scores and reports.

    Parameters
    ----------
    method
        The scoring rule of :func:`feddx.model.scoring.score_candidates`.
    temperature, calibration
        An explicit ``temperature`` skips fitting. Otherwise, with validation cases the
        temperature is fitted on them; without, ``"cross-fit"`` fits it on one half of the
        evaluated cases for the other half and vice versa (no case is calibrated on itself;
        needs at least 10 cases), and ``"none"`` keeps temperature 1.
    max_prompt_tokens
        Override the prompt budget (default: the adapter's own, see
        :meth:`feddx.model.predict.Diagnoser.settings`).
    generate_n, max_new_tokens
        Also let the model answer the first ``generate_n`` cases freely (greedy, at most
        ``max_new_tokens`` tokens) and report BLEU/ROUGE against the reference diagnosis.
    differential_threshold, differential_top_k
        Which candidates form the predicted differential (DDXPlus: probability > 0.01).
    levels_fn
        ICD-10 code -> hierarchy levels (default: :mod:`feddx.data.icd10`).
    seed
        Seed of the baseline's fit.
    """

    settings_name: ClassVar[str] = "evaluation options"

    method: ScoringMethod = DEFAULT_METHOD
    temperature: float | None = Field(default=None, gt=0.0)
    calibration: Calibration = "cross-fit"
    max_prompt_tokens: int | None = Field(default=None, ge=16)
    generate_n: int = Field(default=0, ge=0)
    max_new_tokens: int = Field(default=24, ge=1)
    differential_threshold: float = Field(default=DDXPLUS_THRESHOLD, ge=0.0, lt=1.0)
    differential_top_k: int | None = Field(default=None, ge=1)
    levels_fn: LevelsFn | None = None
    seed: int = 0


def evaluate_cases(
    diagnoser: Diagnoser,
    cases: Sequence[Case],
    candidates: CandidateList | Sequence[str],
    *,
    adapter: AdapterChoice = None,
    options: EvaluationOptions | None = None,
    validation_cases: Sequence[Case] | None = None,
    baseline_train: Sequence[Case] | None = None,
    baseline_extra_train: Sequence[Case] | None = None,
    on_progress: Progress | None = None,
) -> EvaluationResult:
    """Evaluate ``diagnoser`` with ``adapter`` (see :data:`~feddx.model.predict.AdapterChoice`;
    several names: an ensemble, whose free generation uses the first member) on labeled
    ``cases`` against ``candidates`` (names with their ICD-10 codes, for the ranked output and
    the hierarchical F1).

    ``validation_cases``: labeled cases to fit the softmax temperature on (never the evaluated
    cases; see :class:`EvaluationOptions`). ``baseline_train``: training cases of the same
    split; when given, the logistic-regression baseline is fitted on them and reported with
    the same metrics. ``baseline_extra_train``: the training split plus any extra training data
    the evaluated adapter saw; a second baseline is fitted on it (``baseline_extra``).
    ``on_progress(stage, done, total)`` after each case of each stage.

    Raises :class:`ValueError` for no cases, an unlabeled case, a label outside the candidate
    list (naming it), or bad candidates.
    """
    o = options or EvaluationOptions()
    names, icd10 = (
        (candidates.names, candidates.icd10)
        if isinstance(candidates, CandidateList)
        else (list(candidates), {})
    )
    method, temperature, generate_n, seed = o.method, o.temperature, o.generate_n, o.seed
    start = time.perf_counter()
    cset = diagnoser.candidate_set(names, icd10)
    check_labels(cases, cset.names, "evaluated cases")
    if validation_cases:
        check_labels(validation_cases, cset.names, "validation cases")
    if generate_n < 0:
        raise ValueError(f"generate_n must be >= 0, got {generate_n}")
    notes: list[str] = []

    def stage(name: str, total: int) -> Callable[[int], None] | None:
        if on_progress is None:
            return None
        cb = on_progress
        return lambda i: cb(name, i + 1, total)

    def score(which: Sequence[Case], name: str) -> list[Prediction]:
        return diagnoser.diagnose(
            which,
            cset,
            adapter=adapter,
            method=method,
            temperature=1.0,  # raw scores: calibrated below
            max_prompt_tokens=o.max_prompt_tokens,
            on_case=stage(name, len(which)),
        )

    raw = score(cases, "scoring")
    raw_conf, raw_correct = top1_confidence(raw)
    temp_info: dict[str, Any] = {
        "ece_before": prediction_ece(raw),
        "reliability_before": [asdict(b) for b in reliability_curve(raw_conf, raw_correct)],
    }
    if temperature is not None:
        preds = [with_temperature(p, temperature) for p in raw]
        temp_info.update(method="fixed", value=temperature)
    elif validation_cases:
        val = score(validation_cases, "validation")
        t = fit_prediction_temperature(val)
        preds = [with_temperature(p, t) for p in raw]
        temp_info.update(method="validation", value=t, n_validation=len(val))
    elif o.calibration == "cross-fit" and len(raw) >= _MIN_CROSS_FIT:
        preds, fold_t = cross_fit_temperature(raw, folds=2)
        temp_info.update(
            method="cross-fit",
            value=fit_prediction_temperature(raw),
            fold_values=fold_t,
        )
        notes.append(
            "temperature cross-fitted: each half of the evaluated cases is calibrated with the "
            "temperature fitted on the other half; the temperature reported ('value') is the "
            "fit on all of them (for use on new cases)"
        )
    else:
        preds = list(raw)
        temp_info.update(method="none", value=1.0)
        if o.calibration == "cross-fit":
            notes.append(f"fewer than {_MIN_CROSS_FIT} cases: temperature not fitted")
    temp_info["ece_after"] = prediction_ece(preds)

    llm = model_metrics(
        preds,
        cset.names,
        icd10=cset.icd10,
        levels_fn=o.levels_fn,
        differential_threshold=o.differential_threshold,
        differential_top_k=o.differential_top_k,
    )
    if llm.hierarchy is None:
        notes.append("ICD-10 hierarchy unavailable (feddx.data.icd10 missing): no hierarchical F1")

    generation = None
    if generate_n:
        from feddx.model.generate import generate_answer

        chosen = list(cases)[:generate_n]
        hyps, refs, lat = [], [], []
        report = stage("generation", len(chosen))
        _, budget, _ = diagnoser.settings(adapter, o.max_prompt_tokens)
        with diagnoser.weights(adapter) as net:
            for i, case in enumerate(chosen):
                t0 = time.perf_counter()
                hyps.append(
                    generate_answer(
                        net,
                        diagnoser.tokenizer,
                        case,
                        max_new_tokens=o.max_new_tokens,
                        max_prompt_tokens=budget,
                    )
                )
                lat.append((time.perf_counter() - t0) * 1000)
                refs.append(render_answer(case.require_label()))
                if report:
                    report(i)
        generation = {**text_overlap(hyps, refs), "latency_ms_p50": float(np.percentile(lat, 50))}

    def fit(train: Sequence[Case]) -> tuple[ModelMetrics, list[Prediction]]:
        fitted = fit_baseline(train, seed=seed)
        out = fitted.predict(cases, cset.names)
        metrics = model_metrics(
            out,
            cset.names,
            icd10=cset.icd10,
            levels_fn=o.levels_fn,
            differential_threshold=o.differential_threshold,
            differential_top_k=o.differential_top_k,
        )
        metrics.extra = {
            "kind": "logistic regression over findings (+ text TF-IDF), scikit-learn",
            "n_train": len(train),
            "fit_seconds": fitted.fit_seconds,
        }
        return metrics, out

    baseline = baseline_extra = None
    bpreds: list[Prediction] | None = None
    if baseline_train:
        baseline, bpreds = fit(baseline_train)
    if baseline_extra_train:
        baseline_extra, _ = fit(baseline_extra_train)

    return EvaluationResult(
        n=len(preds),
        candidates=list(cset.names),
        scoring_method=method,
        temperature=temp_info,
        llm=llm,
        baseline=baseline,
        baseline_extra=baseline_extra,
        generation=generation,
        seconds=time.perf_counter() - start,
        notes=notes,
        cases=case_rows(preds, bpreds),
    )


def case_rows(
    predictions: Sequence[Prediction], baseline: Sequence[Prediction] | None = None
) -> list[dict[str, Any]]:
    """One row per case: its id, the reference, the LLM's full ranking (calibrated probability
    and raw score of every candidate, so rankings of several adapters can be compared or
    averaged offline) and the baseline's top answer. Ids and diagnosis names only: no text."""
    rows = []
    for i, p in enumerate(predictions):
        row: dict[str, Any] = {
            "case_id": p.case.case_id,
            "gold": p.gold,
            "top1": p.top,
            "correct": p.top == p.gold,
            "gold_rank": next(k for k, c in enumerate(p.ranked, 1) if c.name == p.gold),
            "latency_ms": p.latency_ms,
            # with_temperature keeps each candidate's raw score beside the new probability
            "ranked": [
                {"name": c.name, "icd10": c.icd10, "probability": c.probability, "score": c.score}
                for c in p.ranked
            ],
        }
        if baseline is not None:
            row["baseline_top1"] = baseline[i].top
            row["baseline_correct"] = baseline[i].top == p.gold
        rows.append(_finite(row))
    return rows
