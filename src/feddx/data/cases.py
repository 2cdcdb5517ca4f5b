"""The cases a ``feddx train`` run trains on: the training split of ``--data`` plus any
``--extra-data``, and the candidate list the candidate loss ranks.

The split is the one ``feddx evaluate`` makes (:func:`feddx.data.split.stratified_split`
with the same test fraction and seed), so the held-out cases are never trained on, even when
extra data is added. Extra data could still hold copies of held-out cases (two releases of one
dataset share patients; a file was assembled twice): :func:`training_cases` refuses extra
cases identical to a held-out one, where identical means the same label, the same findings and
the same free text after :func:`content_key`'s normalisation (demographics and ids are left
out: a copy with another id or a re-drawn age still hands the model the held-out answer).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import Field

from feddx.data.candidates import CandidateList, candidate_list
from feddx.data.schema import Case
from feddx.data.sources import load_cases
from feddx.data.split import cap_per_label, stratified_split
from feddx.errors import DataError
from feddx.settings import Names, SettingPath, Settings


def case_reference(case_id: str) -> str:
    """A pseudonymous handle for a case in an error message (``case#`` and 12 hex digits of a
    SHA-256 of its id): messages end up in terminals, CI logs and Flower replies, so they never
    carry the id itself; whoever holds the data finds the case by hashing its ids the same way."""
    return "case#" + hashlib.sha256(f"feddx-case:{case_id}".encode()).hexdigest()[:12]


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def content_key(case: Case) -> tuple[object, ...]:
    """What makes two cases the same example for training: the label, the findings (name,
    value, unit, negation; in any order) and the note, each case-folded with whitespace
    collapsed. Ids, demographics and history are left out."""
    findings = sorted(
        (
            _norm(f.name),
            _norm(str(f.value)) if f.value is not None else "",
            _norm(f.unit or ""),
            f.negated,
        )
        for f in case.findings
    )
    label = _norm(case.label.diagnosis) if case.label is not None else ""
    return (label, tuple(findings), _norm(case.text or ""))


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def identical_to_held_out(extra: Sequence[Case], held_out: Sequence[Case]) -> list[int]:
    """Positions in ``extra`` of the cases identical (:func:`content_key`) to a held-out one."""
    held = {content_key(c) for c in held_out}
    return [i for i, c in enumerate(extra) if content_key(c) in held]


def refuse_overlap(extra: Sequence[Case], held_out: Sequence[Case], spec: str) -> None:
    """Raise :class:`DataError` if any case of ``extra`` (loaded from ``spec``) is identical
    (:func:`content_key`) to a held-out case: training on it would score the model on an answer
    it was shown. The message names how many and one by position and pseudonym, never an id."""
    dup = identical_to_held_out(extra, held_out)
    if dup:
        first = extra[dup[0]]
        raise DataError(
            f"{spec}: {len(dup)} of {len(extra)} cases are identical to held-out cases (same "
            f"label, findings and text; e.g. the {_ordinal(dup[0] + 1)} case, "
            f"{case_reference(first.case_id)}); drop them (--drop-overlapping-extra) or hold out "
            "another split"
        )


class TrainingData(Settings):
    """Where the training cases come from (the ``feddx train`` data options)."""

    settings_name: ClassVar[str] = "training data"

    data: str
    split: Literal["train", "all"] = "train"
    test_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    seed: int = 0
    extra_data: Names = ()
    extra_per_label: int | None = Field(default=None, ge=1)
    candidates_file: SettingPath | None = None
    # Leave out extra cases identical to held-out ones instead of refusing the whole run.
    drop_overlapping_extra: bool = False
    # At most this many training cases (a slice for a quick run): the split's own cases
    # first, then extra ones. The held-out split and the candidate list are not affected.
    limit: int | None = Field(default=None, ge=1)


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
    ``spec.data``, optionally capped per label), and build the candidate list from every
    labeled case of ``spec.data`` when ``need_candidates`` (the list ``feddx evaluate`` scores
    against).

    Raises :class:`DataError` naming the spec for empty data, an empty training split,
    extra-data labels unknown to ``spec.data`` or extra-data cases identical to held-out ones
    (:func:`refuse_overlap`; with ``spec.drop_overlapping_extra`` those are left out instead,
    and counted in ``extra_info``). ``spec.limit`` keeps the first that many training cases
    (the split's own before extra ones; the count left out goes into ``extra_info``).
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
            if spec.drop_overlapping_extra:
                dup = set(identical_to_held_out(more, held_out))
                more = [c for i, c in enumerate(more) if i not in dup]
                extra_info[f"{extra_spec}: dropped, identical to held-out cases"] = len(dup)
            else:
                refuse_overlap(more, held_out, extra_spec)
            extra.extend(more)
        if spec.extra_per_label is not None:
            extra = cap_per_label(extra, spec.extra_per_label, seed=spec.seed)
            extra_info["kept_after_per_label_cap"] = len(extra)
        cases = cases + extra
    if spec.limit is not None and len(cases) > spec.limit:
        extra_info["dropped_by_limit"] = len(cases) - spec.limit
        cases = cases[: spec.limit]
    candidates = None
    if need_candidates:
        # the dataset's label space, as feddx evaluate builds it (a patient-grouped split can
        # leave a diagnosis in the held-out cases only)
        candidates = candidate_list(
            loaded.source, loaded.path, [*own_train, *held_out], spec.candidates_file
        )
    info = {k: v for k, v in loaded.info.items() if k in ("n_loaded", "n_skipped", "n_unlabeled")}
    return TrainingCases(cases, len(held_out), info, extra_info, candidates)
