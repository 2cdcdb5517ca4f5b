"""Dropout augmentation: extra training copies of each case with findings or sentences removed.

Why: on DDXPlus the adapters memorise the training cases (training loss ~1e-4) and then lean
on the one or two findings that separate most pairs of similar diagnoses. A held-out case
that lacks those findings is missed even when it carries another finding that settles the
question just as well (unstable angina with nausea but no chest pain at rest is called stable
angina, although no stable-angina case has nausea). Copies with random findings removed make
each finding carry the answer on its own some of the time, as feature dropout does for a
linear model.

Free-text cases (Symptom2Disease) get the same treatment one level up: copies leave out whole
sentences of the note, so each described symptom has to carry the answer on its own.

The copies are built once, before tokenisation, so each is an ordinary example: the frozen
layers' activations of every copy are cached like any other (the copies cost caching time
once, not per epoch), and an epoch passes over the originals and their copies together.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import TypeVar

from feddx.data.schema import Case, History
from feddx.train.config import AugmentSpec

T = TypeVar("T")

AUGMENT_SEED_SALT = 0x5EED_A06
HISTORY_SEED_SALT = 0x415_70E7
# Sentence ends: ., ! or ? followed by white space. Good enough for symptom descriptions; a
# missed boundary only means a longer sentence is kept or dropped as one.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def sentences(text: str) -> list[str]:
    """``text`` cut at sentence ends (empty pieces removed)."""
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def _drop(items: Sequence[T], p: float, rng: random.Random) -> list[T]:
    kept = [x for x in items if rng.random() >= p]
    return kept or [rng.choice(list(items))]


def augment_cases(cases: Sequence[Case], spec: AugmentSpec, seed: int) -> list[Case]:
    """``cases`` followed by ``spec.copies`` augmented copies of each case that has something
    to drop: at least two findings, or (with ``spec.drop_sentence > 0``) a note of at least two
    sentences. Other cases are not copied.

    Each copy drops every finding independently with probability ``spec.drop_finding`` and
    every sentence of the note with probability ``spec.drop_sentence``, keeping at least one
    of each; with ``spec.shuffle_findings`` the kept findings are also put in a random order.
    Copies are named ``<case_id>~aug<k>`` and keep the label, demographics and history of
    their case. Deterministic for a given ``seed``.
    """
    out = list(cases)
    if spec.copies == 0:
        return out
    rng = random.Random(seed ^ AUGMENT_SEED_SALT)
    for k in range(1, spec.copies + 1):
        for case in cases:
            update: dict[str, object] = {}
            if len(case.findings) >= 2:
                kept = _drop(case.findings, spec.drop_finding, rng)
                if spec.shuffle_findings:
                    rng.shuffle(kept)
                update["findings"] = tuple(kept)
            parts = sentences(case.text) if case.text and spec.drop_sentence > 0 else []
            if len(parts) >= 2:
                update["text"] = " ".join(_drop(parts, spec.drop_sentence, rng))
            if update:
                update["case_id"] = f"{case.case_id}~aug{k}"
                out.append(case.model_copy(update=update))
    return out


def drop_history(cases: Sequence[Case], fraction: float, seed: int) -> list[Case]:
    """``cases`` in order, ``round(fraction * n)`` of the ``n`` cases that have a history
    rendered without it (their history emptied; everything else kept), chosen at random from
    ``seed``: equal seeds drop the same cases.

    Why: a model only learns to use the patient's history if it is trained with it, and only
    keeps answering patients who have none on record (a first visit, a history not shared) if
    it also sees such cases; history dropout trains both from the same cases. Cases without a
    history are never counted or changed. Raises :class:`ValueError` for a fraction outside
    [0, 1].
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"history dropout must be in [0, 1], got {fraction}")
    with_history = [i for i, c in enumerate(cases) if not c.history.is_empty()]
    n_drop = round(fraction * len(with_history))
    if n_drop == 0:
        return list(cases)
    dropped = set(random.Random(seed ^ HISTORY_SEED_SALT).sample(with_history, n_drop))
    return [
        c.model_copy(update={"history": History()}) if i in dropped else c
        for i, c in enumerate(cases)
    ]


__all__ = ["augment_cases", "drop_history", "sentences"]
