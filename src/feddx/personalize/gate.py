"""The personalization gate: a personalized adapter answers a group only where it beat its parent
on that group's validation cases.

A regional or institutional adapter is fine-tuned from its parent (the global adapter, or the
region's) on a few hundred cases at most. It can be worse than its parent for the very group it
was made for: the demo's first UCI Heart run registered adapters that were 3.1 and 8.7 points
worse on the test split for Cleveland and VA Long Beach, and the service answered those
hospitals with them. The rule, fixed before any run (never tuned on a test split):

    accept the child for a group only if, on that group's validation cases, it gets at least
    ``GATE_MARGIN_CASES`` (1) more cases right at top-1 than the adapter that would otherwise
    answer the group (its parent).

One more right case is the smallest margin that is not a tie: a tie or a loss keeps the parent,
whose figures are already known. With no validation cases for a group the child is refused
(nothing shows it helps). ``feddx demo`` and ``feddx personalize`` both call :func:`gate`; the
decision, its figures and its reason go into their results and the registry (or, for a refused
adapter, the reason it is absent).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

GATE_MARGIN_CASES = 1
GATE_RULE = (
    f"a personalized adapter answers a group only if it gets at least {GATE_MARGIN_CASES} more "
    "of that group's validation cases right (top-1) than its parent; otherwise the parent answers"
)


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict on one adapter for one group (``accepted``) and why."""

    group: str
    adapter: str
    parent: str
    n_validation: int
    child_correct: int
    parent_correct: int
    accepted: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "margin_cases": GATE_MARGIN_CASES, "rule": GATE_RULE}


def gate(
    group: str,
    adapter: str,
    parent: str,
    child_correct: Sequence[bool],
    parent_correct: Sequence[bool],
) -> GateDecision:
    """Decide whether ``adapter`` answers ``group`` instead of ``parent``, from both systems'
    per-case top-1 correctness on the group's validation cases (the same cases, in the same
    order). Raises :class:`ValueError` if the two lists differ in length."""
    if len(child_correct) != len(parent_correct):
        raise ValueError(
            f"gate for {group}: {len(child_correct)} child vs {len(parent_correct)} parent cases"
        )
    n, child, par = len(child_correct), sum(child_correct), sum(parent_correct)
    if n == 0:
        accepted, reason = False, "no validation cases for this group: the parent answers"
    else:
        accepted = child - par >= GATE_MARGIN_CASES
        verb = "beats" if accepted else "does not beat"
        reason = (
            f"{adapter} {verb} {parent} on {group}'s {n} validation cases by the "
            f"{GATE_MARGIN_CASES}-case margin ({child} vs {par} right)"
            + ("" if accepted else f": {parent} answers")
        )
    return GateDecision(group, adapter, parent, n, child, par, accepted, reason)
