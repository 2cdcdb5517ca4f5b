"""Per-group breakdowns: is the model as good for every hospital, region, age band and sex?

A federated model can look fine on average while failing one institution; the breakdown makes
that visible. Missing attributes are grouped under ``"unknown"``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

from feddx.data.schema import Case, age_band
from feddx.model.predict import Prediction

GROUP_ATTRIBUTES: dict[str, Callable[[Case], str]] = {
    "institution": lambda c: c.institution or "unknown",
    "region": lambda c: c.region or "unknown",
    "age_band": lambda c: age_band(c.age),
    "sex": lambda c: c.sex or "unknown",
}


def group_breakdown(
    preds: Sequence[Prediction], attributes: Sequence[str] = tuple(GROUP_ATTRIBUTES)
) -> dict[str, dict[str, dict[str, float | int]]]:
    """``{attribute: {value: {"n": cases, "top1": accuracy}}}``, values sorted by name.

    Raises :class:`ValueError` for an attribute name it does not know.
    """
    unknown = [a for a in attributes if a not in GROUP_ATTRIBUTES]
    if unknown:
        raise ValueError(f"unknown group attributes {unknown}; known: {list(GROUP_ATTRIBUTES)}")
    out: dict[str, dict[str, dict[str, float | int]]] = {}
    for attr in attributes:
        key = GROUP_ATTRIBUTES[attr]
        hits: dict[str, list[bool]] = defaultdict(list)
        for p in preds:
            hits[key(p.case)].append(p.top == p.gold)
        out[attr] = {v: {"n": len(h), "top1": sum(h) / len(h)} for v, h in sorted(hits.items())}
    return out
