"""Counts over a dataset: what ``feddx data stats`` prints and ``--json`` returns.

Streaming (cases are consumed once), and safe to print or store: counts, diagnosis names,
ICD-10 codes and skip reasons only, never patient text.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from feddx.data.report import LoadReport
from feddx.data.schema import Case

SHOW_SKIPPED = 5


def _age_summary(ages: list[float]) -> dict[str, float | int] | None:
    if not ages:
        return None
    return {
        "n": len(ages),
        "min": min(ages),
        "max": max(ages),
        "mean": round(statistics.fmean(ages), 2),
        "median": statistics.median(ages),
    }


def dataset_stats(
    source: str, path: Path | None, cases: Iterable[Case], report: LoadReport
) -> dict[str, Any]:
    """Counts over ``cases`` (consumed once, streaming) and the load report, as one JSON-ready
    dict: at least ``n_cases``, ``labels``, ``n_skipped`` and ``skipped_reasons``."""
    from feddx.data.icd10 import icd10_known

    labels: Counter[str] = Counter()
    codes: dict[str, str | None] = {}
    institutions: Counter[str] = Counter()
    regions: Counter[str] = Counter()
    sexes: Counter[str] = Counter()
    ages: list[float] = []
    n = n_labeled = n_text = n_findings = n_history = n_differential = 0
    for case in cases:
        n += 1
        if case.label is not None:
            n_labeled += 1
            labels[case.label.diagnosis] += 1
            codes.setdefault(case.label.diagnosis, case.label.icd10)
            n_differential += bool(case.label.differential)
        if case.institution:
            institutions[case.institution] += 1
        if case.region:
            regions[case.region] += 1
        sexes[case.sex or "unknown"] += 1
        if case.age is not None:
            ages.append(case.age)
        n_text += bool(case.text)
        n_findings += bool(case.findings)
        n_history += not case.history.is_empty()
    distinct_codes = sorted({c for c in codes.values() if c})
    return {
        "source": source,
        "path": str(path) if path is not None else None,
        "n_cases": n,
        "n_labeled": n_labeled,
        "n_labels": len(labels),
        "labels": dict(labels.most_common()),
        "n_skipped": report.n_skipped,
        "skipped_reasons": report.skipped_reasons(),
        "skipped_examples": [str(s) for s in report.skipped[:SHOW_SKIPPED]],
        "institutions": dict(institutions.most_common()),
        "regions": dict(regions.most_common()),
        "sex": dict(sexes.most_common()),
        "age": _age_summary(ages),
        "n_with_text": n_text,
        "n_with_findings": n_findings,
        "n_with_history": n_history,
        "n_with_differential": n_differential,
        "icd10": {
            "label_codes": {label: codes[label] for label in labels},
            "labels_without_code": sorted(lb for lb, c in codes.items() if not c),
            # WHO-only ids (or typos) in the data: scored at chapter/category level only.
            "codes_not_in_icd10cm": [c for c in distinct_codes if not icd10_known(c)],
        },
    }
