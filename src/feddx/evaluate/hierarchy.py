"""ICD-10 hierarchical scoring: is the prediction right at the chapter, block or category?

A wrong diagnosis in the right organ system is a smaller error than one in the wrong chapter.
Two views are reported for the top-1 prediction:

* **per-level macro-F1** (and accuracy): gold and predicted codes are mapped to their chapter
  ("IX"), block ("I20-I25") and 3-character category ("I25") with
  :func:`feddx.data.icd10.icd10_levels`, and scored like any classification at that level;
* **hierarchical precision/recall/F1** (Kiritchenko et al., "Learning and evaluation in the
  presence of class hierarchies", 2005): each code is augmented with its ancestors
  {chapter, block, category, full code}; ``hP = Σ|P∩G| / Σ|P|``, ``hR = Σ|P∩G| / Σ|G|``
  summed over cases (micro-averaged), ``hF = 2·hP·hR / (hP + hR)``.

A case whose gold code is unknown at a level is left out of that level (the counts are
reported); a prediction without a code at a level counts as wrong there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sklearn.metrics import f1_score

from feddx.model.predict import Prediction

LEVELS = ("chapter", "block", "category")
LevelsFn = Callable[[str], Any]  # code -> object with .chapter/.block/.category (str | None)


def default_levels_fn() -> LevelsFn | None:
    """:func:`feddx.data.icd10.icd10_levels`, or ``None`` where that module is unavailable."""
    try:
        from feddx.data.icd10 import icd10_levels
    except ImportError:
        return None
    return icd10_levels  # type: ignore[no-any-return]


def _ancestors(code: str | None, levels_fn: LevelsFn) -> dict[str, str | None]:
    if not code:
        return {lvl: None for lvl in (*LEVELS, "code")}
    lv = levels_fn(code)
    return {
        "chapter": lv.chapter,
        "block": lv.block,
        "category": lv.category,
        "code": code.strip().upper().replace(".", ""),
    }


def hierarchical_f1(
    gold_codes: Sequence[str | None],
    predicted_codes: Sequence[str | None],
    levels_fn: LevelsFn,
) -> dict[str, float | int]:
    """Per-level accuracy and macro-F1, and the ancestor-set hierarchical P/R/F1.

    Keys: ``{level}_f1``, ``{level}_accuracy``, ``{level}_n`` for each of chapter, block and
    category, plus ``hierarchical_precision``, ``hierarchical_recall``, ``hierarchical_f1``
    and ``n_coded`` (cases with a gold code). Raises :class:`ValueError` on mismatched inputs.
    """
    if len(gold_codes) != len(predicted_codes):
        raise ValueError("need one predicted code per gold code")
    gold_anc = [_ancestors(c, levels_fn) for c in gold_codes]
    pred_anc = [_ancestors(c, levels_fn) for c in predicted_codes]
    out: dict[str, float | int] = {}
    for level in LEVELS:
        pairs = [(g[level], p[level]) for g, p in zip(gold_anc, pred_anc, strict=True) if g[level]]
        out[f"{level}_n"] = len(pairs)
        if not pairs:
            continue
        gold = [str(g) for g, _ in pairs]
        pred = [p if p else "<none>" for _, p in pairs]
        out[f"{level}_accuracy"] = sum(g == p for g, p in zip(gold, pred, strict=True)) / len(pairs)
        out[f"{level}_f1"] = float(
            f1_score(gold, pred, labels=sorted(set(gold)), average="macro", zero_division=0)
        )
    inter = n_pred = n_gold = coded = 0
    for g, p in zip(gold_anc, pred_anc, strict=True):
        # Sets of node values: a 3-character code is its own category, counted once.
        gs = {v for v in g.values() if v}
        if not gs:
            continue
        coded += 1
        ps = {v for v in p.values() if v}
        inter += len(gs & ps)
        n_pred += len(ps)
        n_gold += len(gs)
    out["n_coded"] = coded
    if coded:
        hp = inter / n_pred if n_pred else 0.0
        hr = inter / n_gold
        out["hierarchical_precision"] = hp
        out["hierarchical_recall"] = hr
        out["hierarchical_f1"] = 2 * hp * hr / (hp + hr) if hp + hr > 0 else 0.0
    return out


def hierarchy_summary(
    preds: Sequence[Prediction],
    icd10: Mapping[str, str] | None = None,
    levels_fn: LevelsFn | None = None,
) -> dict[str, float | int] | None:
    """:func:`hierarchical_f1` of the top-1 predictions; ``None`` if no ICD-10 hierarchy is
    available. Gold codes come from the case label (else ``icd10[diagnosis]``), predicted
    codes from the scored candidate (else ``icd10[name]``)."""
    fn = levels_fn or default_levels_fn()
    if fn is None:
        return None
    codes = dict(icd10 or {})
    gold = [p.case.require_label().icd10 or codes.get(p.gold) for p in preds]
    pred = [p.ranked[0].icd10 or codes.get(p.top) for p in preds]
    return hierarchical_f1(gold, pred, fn)
