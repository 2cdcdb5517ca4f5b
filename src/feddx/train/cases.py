"""The cases a ``feddx train`` run trains on: the training split of ``--data`` plus any
``--extra-data``, and the candidate list the candidate loss ranks.

The split is the one ``feddx evaluate`` makes (:func:`feddx.data.split.stratified_split`
with the same test fraction and seed), so the held-out cases are never trained on, even when
extra data is added.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from feddx.data.candidates import CandidateList, candidate_list
from feddx.data.schema import Case
from feddx.data.sources import load_cases
from feddx.data.split import cap_per_label, stratified_split
from feddx.errors import DataError


@dataclass(frozen=True)
class TrainingData:
    """Where the training cases come from (the ``feddx train`` data options)."""

    data: str
    split: Literal["train", "all"] = "train"
    test_fraction: float = 0.2
    seed: int = 0
    extra_data: Sequence[str] = ()
    extra_per_label: int | None = None
    candidates_file: Path | None = None


@dataclass(frozen=True)
class TrainingCases:
    """The assembled training cases, the size of the held-out split, counts for the result
    file (never case text), and the candidate list when one was asked for."""

    cases: list[Case]
    n_held_out: int
    info: dict[str, Any]
    extra_info: dict[str, int] = field(default_factory=dict)
    candidates: CandidateList | None = None


def training_cases(spec: TrainingData, *, need_candidates: bool = False) -> TrainingCases:
    """Load and split ``spec.data``, add ``spec.extra_data`` (whose labels must all occur in
    ``spec.data``, optionally capped per label), and build the candidate list from ``spec.data``'s
    own training split when ``need_candidates`` (the list ``feddx evaluate`` scores against).

    Raises :class:`DataError` naming the spec for empty data, an empty training split or
    extra-data labels unknown to ``spec.data``.
    """
    loaded = load_cases(spec.data, purpose="train on")
    cases = loaded.cases
    held_out: list[Case] = []
    if spec.split == "train":
        cases, held_out = stratified_split(cases, test_fraction=spec.test_fraction, seed=spec.seed)
    if not cases:
        raise DataError(f"{spec.data}: the training split is empty")
    own_train = cases
    extra_info: dict[str, int] = {}
    if spec.extra_data:
        known = {c.label.diagnosis for c in [*cases, *held_out] if c.label is not None}
        extra: list[Case] = []
        for extra_spec in spec.extra_data:
            more = load_cases(extra_spec, purpose="train on").cases
            unknown = sorted({c.label.diagnosis for c in more if c.label is not None} - known)
            if unknown:
                shown = ", ".join(repr(u) for u in unknown[:5])
                raise DataError(
                    f"{extra_spec}: {len(unknown)} label(s) do not occur in {spec.data} ({shown}"
                    + (", ..." if len(unknown) > 5 else "")
                    + "); a model trained on them could not be evaluated against --data"
                )
            extra_info[extra_spec] = len(more)
            extra.extend(more)
        if spec.extra_per_label is not None:
            extra = cap_per_label(extra, spec.extra_per_label, seed=spec.seed)
            extra_info["kept_after_per_label_cap"] = len(extra)
        cases = cases + extra
    candidates = None
    if need_candidates:
        candidates = candidate_list(loaded.source, loaded.path, own_train, spec.candidates_file)
    info = {k: v for k, v in loaded.info.items() if k in ("n_loaded", "n_skipped", "n_unlabeled")}
    return TrainingCases(cases, len(held_out), info, extra_info, candidates)
