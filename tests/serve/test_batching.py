"""The scoring thread: concurrent cases grouped by adapter into one Diagnoser call per group;
the serial baseline scores one at a time."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from feddx.data.schema import Case
from feddx.serve.adapters import AdapterPool
from feddx.serve.batching import MicroBatcher, Overloaded, ScoreJob, SerialScheduler

from .world import CASE, World, make_diagnoser


class Recorder:
    """Wraps Diagnoser.diagnose to record each call's adapter and case count; ``gate`` holds
    the scoring thread in the first call so the test can queue more work behind it."""

    def __init__(self, diagnoser: Any) -> None:
        self.calls: list[tuple[str | None, int]] = []
        self.gate = threading.Event()
        self.entered = threading.Event()
        real = diagnoser.diagnose

        def diagnose(cases: Any, candidates: Any, **kw: Any) -> Any:
            self.entered.set()
            self.gate.wait(10)
            self.calls.append((kw.get("adapter"), len(cases)))
            return real(cases, candidates, **kw)

        diagnoser.diagnose = diagnose


def jobs(institutions: list[tuple[str, str]]) -> list[ScoreJob]:
    case = Case.model_validate(CASE)
    return [
        ScoreJob(inst, region, case.model_copy(update={"case_id": f"c{i}"}))
        for i, (inst, region) in enumerate(institutions)
    ]


@pytest.mark.parametrize("serial", [False, True])
def test_queued_cases_are_grouped_by_adapter(tokenizer: Any, world: World, serial: bool) -> None:
    diagnoser = make_diagnoser(tokenizer)
    rec = Recorder(diagnoser)
    pool = AdapterPool(diagnoser, world.registry, capacity=4)
    sched = SerialScheduler(pool) if serial else MicroBatcher(pool, window_ms=0, max_batch_cases=16)
    try:
        first = sched.submit(jobs([("hungary-inst", "hungary")])[0])
        assert rec.entered.wait(10)  # the scorer is busy with the first case...
        mixed = jobs(
            [
                ("cleveland", "usa"),
                ("va-long-beach", "usa"),
                ("cleveland", "usa"),
                ("va-long-beach", "usa"),
                ("cleveland", "usa"),
            ]
        )
        futures = [sched.submit(j) for j in mixed]  # ...while five more queue up
        rec.gate.set()
        results = [f.result(30) for f in [first, *futures]]
    finally:
        sched.close()
    if serial:
        assert rec.calls == [("global/v1", 1)] + [(r.chain.adapter_name, 1) for r in results[1:]]
        assert all(r.batch_cases == 1 for r in results)
    else:
        assert rec.calls == [
            ("global/v1", 1),
            ("institutional/cleveland/v1", 3),
            ("regional/usa/v1", 2),
        ]
        assert [r.batch_cases for r in results] == [1, 5, 5, 5, 5, 5]
    assert [r.chain.adapter_name for r in results[1:]] == [
        "institutional/cleveland/v1",
        "regional/usa/v1",
        "institutional/cleveland/v1",
        "regional/usa/v1",
        "institutional/cleveland/v1",
    ]
    assert [r.prediction.case.case_id for r in results[1:]] == ["c0", "c1", "c2", "c3", "c4"]
    # Grouped cases get exactly the answer they would get alone.
    alone = make_diagnoser(tokenizer)
    alone.add_adapter(world.sources["cleveland"], name="c")
    [pred] = alone.diagnose([mixed[0].case], results[1].chain.candidates.names, adapter="c")
    assert [x.name for x in pred.ranked] == [x.name for x in results[1].prediction.ranked]
    assert pred.ranked[0].probability == pytest.approx(
        results[1].prediction.ranked[0].probability, abs=1e-5
    )


def test_full_queue_is_refused(tokenizer: Any, world: World) -> None:
    diagnoser = make_diagnoser(tokenizer)
    rec = Recorder(diagnoser)
    sched = MicroBatcher(AdapterPool(diagnoser, world.registry), max_queue=2, window_ms=0)
    try:
        [a, b, c, d] = jobs([("cleveland", "usa")] * 4)
        sched.submit(a)
        assert rec.entered.wait(10)
        sched.submit(b)
        sched.submit(c)
        with pytest.raises(Overloaded, match="2 cases are already waiting"):
            sched.submit(d)
        rec.gate.set()
    finally:
        sched.close()


def test_an_error_in_one_case_fails_only_that_case(tokenizer: Any, world: World) -> None:
    diagnoser = make_diagnoser(tokenizer)
    sched = MicroBatcher(AdapterPool(diagnoser, world.registry), window_ms=50)
    try:
        good, bad = jobs([("cleveland", "usa"), ("cleveland", "usa")])
        bad.pinned = "global/v404"
        fb, fg = sched.submit(bad), sched.submit(good)
        assert fg.result(30).chain.adapter_name == "institutional/cleveland/v1"
        with pytest.raises(Exception, match="the pinned adapter is not in the registry"):
            fb.result(30)
    finally:
        sched.close()


def test_a_prompt_cap_applies_below_the_adapters_budget_and_splits_groups(
    tokenizer: Any, world: World
) -> None:
    """The CDS hook's ``cds_max_prompt_tokens``: a job's cap cuts the adapter's own budget (64
    tokens in this world) and never raises it; jobs with different caps are scored apart."""
    diagnoser = make_diagnoser(tokenizer)
    budgets: list[int | None] = []
    real = diagnoser.diagnose

    def diagnose(cases: Any, candidates: Any, **kw: Any) -> Any:
        budgets.extend([kw.get("max_prompt_tokens")] * len(cases))
        return real(cases, candidates, **kw)

    diagnoser.diagnose = diagnose
    sched = MicroBatcher(AdapterPool(diagnoser, world.registry), window_ms=50)
    try:
        plain, capped, above = jobs([("cleveland", "usa")] * 3)
        capped.max_prompt_tokens = 40
        above.max_prompt_tokens = 500
        results = [sched.submit(j).result(30) for j in (plain, capped, above)]
    finally:
        sched.close()
    assert sorted(budgets, key=str) == sorted([None, 40, 64], key=str)
    direct = real(
        [capped.case],
        results[1].chain.candidates.names,
        adapter=results[1].chain.adapter_name,
        max_prompt_tokens=40,
    )
    assert [r.score for r in results[1].prediction.ranked] == pytest.approx(
        [r.score for r in direct[0].ranked], rel=1e-4, abs=1e-5
    )
