"""DDXPlus differential-diagnosis metrics: GTPA, GTPA@k, DDR, DDP, DDF1.

Definitions follow the DDXPlus authors' reference implementation (Fansi Tchango et al.,
"DDXPlus: A New Dataset For Automatic Medical Diagnosis", NeurIPS 2022 Datasets and
Benchmarks; ``compute_metrics`` in ``code/aarlc/ddxplus_code/metrics.py`` of
github.com/mila-iqia/ddxplus), with their threshold ``tres = 0.01``:

* the **predicted differential** is the set of candidates whose predicted probability is
  strictly above the threshold (optionally also cut to the ``top_k`` most probable; the
  reference uses no cut), and the **ground-truth differential** is the set of entries of the
  case's ``DIFFERENTIAL_DIAGNOSIS`` (``Case.label.differential``) above the same threshold;
* ``GTPA`` = share of cases whose ground-truth pathology has predicted probability above the
  threshold (it is in the predicted differential);
* ``GTPA@k`` = share of cases whose ground-truth pathology is among the ``k`` most probable
  predictions *and* above the threshold (``GTPA@1``: the top prediction is the pathology);
* per case, ``DDR = |pred ∩ gt| / max(1, |gt|)``, ``DDP = |pred ∩ gt| / max(1, |pred|)``,
  ``DDF1 = 2·DDP·DDR / (DDP + DDR)`` (0 when both are 0); each is averaged over cases (the
  mean of per-case F1s, as in the reference, not the F1 of the mean precision and recall).

Cases without a differential are left out of DDR/DDP/DDF1 (``n_differential`` says how many
were used); GTPA needs only the pathology, so it uses every case.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from feddx.model.predict import Prediction

DDXPLUS_THRESHOLD = 0.01


def _predicted_set(probs: Mapping[str, float], threshold: float, top_k: int | None) -> set[str]:
    ranked = sorted(probs.items(), key=lambda kv: -kv[1])
    if top_k is not None:
        ranked = ranked[:top_k]
    return {name for name, p in ranked if p > threshold}


def differential_metrics(
    predicted: Sequence[Mapping[str, float]],
    gold: Sequence[str],
    gold_differentials: Sequence[Mapping[str, float] | None],
    *,
    threshold: float = DDXPLUS_THRESHOLD,
    top_k: int | None = None,
) -> dict[str, float | int]:
    """GTPA, GTPA@1/3/5, DDR, DDP and DDF1 (see the module docstring for the definitions).

    ``predicted[i]`` maps every candidate to its predicted probability for case ``i``,
    ``gold[i]`` is the case's pathology and ``gold_differentials[i]`` its reference
    differential (name -> probability) or ``None``. Raises :class:`ValueError` on empty or
    mismatched inputs.
    """
    n = len(predicted)
    if n == 0 or len(gold) != n or len(gold_differentials) != n:
        raise ValueError("need one gold pathology and differential per prediction")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    out: dict[str, float | int] = {}
    above = [probs.get(g, 0.0) > threshold for probs, g in zip(predicted, gold, strict=True)]
    out["gtpa"] = sum(above) / n
    for k in (1, 3, 5):
        hits = 0
        for probs, g, ok in zip(predicted, gold, above, strict=True):
            top = sorted(probs.items(), key=lambda kv: -kv[1])[:k]
            hits += ok and g in {name for name, _ in top}
        out[f"gtpa@{k}"] = hits / n
    ddr: list[float] = []
    ddp: list[float] = []
    ddf1: list[float] = []
    for probs, diff in zip(predicted, gold_differentials, strict=True):
        if not diff:
            continue
        gt = {name for name, p in diff.items() if p > threshold}
        pred = _predicted_set(probs, threshold, top_k)
        both = len(gt & pred)
        r = both / max(1, len(gt))
        p = both / max(1, len(pred))
        ddr.append(r)
        ddp.append(p)
        ddf1.append(2 * p * r / (p + r) if p + r > 0 else 0.0)
    out["n_differential"] = len(ddr)
    if ddr:
        out["ddr"] = sum(ddr) / len(ddr)
        out["ddp"] = sum(ddp) / len(ddp)
        out["ddf1"] = sum(ddf1) / len(ddf1)
    return out


def differential_summary(
    preds: Sequence[Prediction],
    *,
    threshold: float = DDXPLUS_THRESHOLD,
    top_k: int | None = None,
) -> dict[str, float | int]:
    """:func:`differential_metrics` over model predictions and their cases' labels."""
    predicted = [{r.name: r.probability for r in p.ranked} for p in preds]
    gold = [p.gold for p in preds]
    diffs = [
        {e.name: e.probability for e in p.case.require_label().differential} or None for p in preds
    ]
    return differential_metrics(predicted, gold, diffs, threshold=threshold, top_k=top_k)
