"""The ``feddx evaluate --report`` page (issue 26 item 8): group names that do not overlap, a
calibration table whose rows and columns are named, and no false "0" for the baseline's
latency. A stand-in diagnoser gives the harness its rankings, so no model loads."""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from evaluate_fixtures import LABELS, make_cases  # type: ignore[import-not-found]

from feddx.data.candidates import CandidateList
from feddx.data.schema import Case
from feddx.evaluate.harness import EvaluationOptions, EvaluationResult, evaluate_cases
from feddx.evaluate.report import _ms, groups_figure, render_html
from feddx.model.predict import Prediction
from feddx.model.scoring import ScoredCandidate

INSTITUTIONS = [
    "hungarian-inst-of-cardiology",
    "university-hospital-zurich",
    "va-medical-center-long-beach",
    "cleveland-clinic-foundation",
]


class StandIn:
    """Right on two cases in three, 40 ms per case: enough for every table and plot."""

    def candidate_set(self, names: Sequence[str], icd10: Any = None) -> Any:
        return SimpleNamespace(names=list(names), icd10=dict(icd10 or {}))

    def diagnose(self, cases: Sequence[Case], cset: Any, **_: Any) -> list[Prediction]:
        out = []
        for i, case in enumerate(cases):
            gold = case.require_label().diagnosis
            first = gold if i % 3 else next(n for n in cset.names if n != gold)
            rest = [n for n in cset.names if n != first]
            scores = [-0.5] + [-2.0 - j for j in range(len(rest))]
            total = sum(math.exp(x) for x in scores)
            ranked = [
                ScoredCandidate(n, math.exp(x) / total, x)
                for n, x in zip([first, *rest], scores, strict=True)
            ]
            out.append(Prediction(case, ranked, 40.0))
        return out


def _cases(n: int, offset: int) -> list[Case]:
    return [
        c.model_copy(update={"institution": INSTITUTIONS[i % 4]})
        for i, c in enumerate(make_cases(n, offset=offset))
    ]


@pytest.fixture(scope="module")
def result() -> EvaluationResult:
    return evaluate_cases(
        StandIn(),  # type: ignore[arg-type]
        _cases(24, 100),
        CandidateList([*LABELS, "Influenza"], dict(LABELS)),
        baseline_train=_cases(36, 0),
        options=EvaluationOptions(generate_n=0),
    )


def test_group_names_do_not_overlap(result: EvaluationResult) -> None:
    fig = groups_figure(result)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        labels = [t for t in ax.get_yticklabels() if t.get_text()]
        boxes = [t.get_window_extent(renderer) for t in labels]
        assert boxes and all(not a.overlaps(b) for a, b in itertools.combinations(boxes, 2))
        # and none runs into the panel to its right: the bars start after the labels
        assert all(b.x1 <= ax.get_window_extent(renderer).x0 + 1 for b in boxes)
    names = [t.get_text() for ax in fig.axes for t in ax.get_yticklabels()]
    assert "hungarian-inst-of-cardiology (n=6)" in names


def test_calibration_table_names_its_rows_and_columns(result: EvaluationResult) -> None:
    page = render_html(result)
    section = page.split("<h2>Calibration</h2>", 1)[1].split("</table>", 1)[0]
    heads = re.findall(r"<th>(.*?)</th>", section)
    assert heads == ["model", "softmax temperature", "ECE (top-1)"]
    rows = re.findall(r"<tr><td>(.*?)</td>", section)
    assert rows[0] == "LLM, raw scores" and rows[1].startswith("LLM, calibrated (cross-fitted")
    assert rows[2].startswith("baseline")
    assert "<td>value</td>" not in page and "<td>ece_before</td>" not in page


def test_baseline_latency_is_never_a_false_zero(result: EvaluationResult) -> None:
    assert result.baseline is not None
    measured = result.baseline.summary["latency_ms_p50"]
    assert measured > 0  # measured: one batched call over the 24 cases
    page = render_html(result)
    row = re.search(r"<td>latency p50 \(ms/case\)</td><td>(.*?)</td><td>(.*?)</td>", page)
    assert row is not None and row.group(1) == "40"
    assert row.group(2) == _ms(measured) + "*" and float(row.group(2).rstrip("*")) > 0
    assert "one batched call" in page
    assert _ms(0.0) == "not measured" and _ms(0.0123) == "0.012" and _ms(152.4) == "152"
