"""How the demo compares federated and centralized training: at equal work, and each at its own
budget chosen on the validation split; and the sentences it says about them.

Work is counted in examples processed: a centralized epoch processes every training case once;
a federated round with ``local_epochs`` local epochs processes every client's share that many
times, so ``local_epochs`` epochs' worth of examples. The budget rule of
:func:`feddx.federated.demo.federated_budget` gives the federation ``clients`` times the
centralized stage's examples (4 rounds x 2 local epochs = 8 epochs' worth against 2), so its
result is not a like-for-like comparison. Hence two comparisons:

- **equal work**: the centralized adapter after ``e`` epochs against the federated global
  adapter after ``e / local_epochs`` rounds (:func:`equal_work`: the largest such ``e`` both
  stages reach);
- **own budgets**: each stage's epochs or rounds chosen on the validation split
  (:func:`first_best`: the fewest with the best validation top-1), whatever work that takes.

Only the first may be read as "ahead" or "behind", and only when its paired-bootstrap interval
(:mod:`feddx.evaluate.stats`) excludes zero; the second always says how much work each side did.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from feddx.evaluate.stats import Comparison


def equal_work(max_epochs: int, rounds: int, local_epochs: int) -> tuple[int, int] | None:
    """``(centralized epochs, federated rounds)`` that process the same examples: the most
    epochs up to ``max_epochs`` that are a whole number of rounds up to ``rounds``; ``None``
    when there is none (``max_epochs < local_epochs``)."""
    r = min(rounds, max_epochs // local_epochs)
    return (r * local_epochs, r) if r >= 1 else None


def first_best(validation_top1: Mapping[int, float]) -> int:
    """The budget (epochs or rounds) with the best validation top-1, the fewest among ties (the
    cheaper one, and the one less likely to have overfitted). Raises :class:`ValueError` when
    empty."""
    if not validation_top1:
        raise ValueError("no validation figures to choose a budget from")
    best = max(validation_top1.values())
    return min(k for k, v in validation_top1.items() if v == best)


def top1_correct(rows: Sequence[Mapping[str, Any]]) -> list[bool]:
    """Per-case top-1 correctness of prediction rows, in their order."""
    return [bool(r["correct"]) for r in rows]


def equal_work_verdict(comparison: Comparison, epochs: int, rounds: int) -> str:
    """The sentence on federated (A) against centralized (B) at equal work."""
    i = comparison.interval
    if i.low > 0:
        word = "federated ahead"
    elif i.high < 0:
        word = "federated behind"
    else:
        word = "no clear difference (the interval includes 0)"
    return (
        f"federated vs centralized at equal work ({rounds} rounds vs {epochs} epochs, "
        f"{epochs} epochs' worth of examples each): {comparison.describe()}: {word}"
    )


def own_budget_verdict(
    comparison: Comparison, fed_rounds: int, fed_work: int, cen_epochs: int, cen_work: int
) -> str:
    """The sentence on federated (A) against centralized (B), each at its own budget chosen
    on validation: the work each did, and never "ahead" when it differs."""
    work = (
        "equal work"
        if fed_work == cen_work
        else f"unequal work: federated {fed_work} epochs' worth of examples, centralized "
        f"{cen_work}; not a like-for-like comparison"
    )
    return (
        f"federated ({fed_rounds} rounds) vs centralized ({cen_epochs} epochs), each at its "
        f"budget chosen on validation: {comparison.describe()} ({work})"
    )
