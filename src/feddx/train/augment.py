"""Finding-dropout augmentation: extra training copies of each case with findings removed.

Why: on DDXPlus the adapters memorise the training cases (training loss ~1e-4) and then lean
on the one or two findings that separate most pairs of similar diagnoses. A held-out case
that lacks those findings is missed even when it carries another finding that settles the
question just as well (unstable angina with nausea but no chest pain at rest is called stable
angina, although no stable-angina case has nausea). Copies with random findings removed make
each finding carry the answer on its own some of the time, as feature dropout does for a
linear model.

The copies are built once, before tokenisation, so each is an ordinary example: the frozen
layers' activations of every copy are cached like any other (the copies cost caching time
once, not per epoch), and an epoch passes over the originals and their copies together.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from feddx.data.schema import Case
from feddx.train.config import AugmentSpec

AUGMENT_SEED_SALT = 0x5EED_A06


def augment_cases(cases: Sequence[Case], spec: AugmentSpec, seed: int) -> list[Case]:
    """``cases`` followed by ``spec.copies`` augmented copies of each case with at least two
    findings (a case with fewer has nothing to drop and is not copied).

    Each copy drops every finding independently with probability ``spec.drop_finding`` and
    keeps at least one; with ``spec.shuffle_findings`` the kept findings are also put in a
    random order. Copies are named ``<case_id>~aug<k>`` and keep the label, demographics,
    text and history of their case. Deterministic for a given ``seed``.
    """
    out = list(cases)
    if spec.copies == 0:
        return out
    rng = random.Random(seed ^ AUGMENT_SEED_SALT)
    for k in range(1, spec.copies + 1):
        for case in cases:
            if len(case.findings) < 2:
                continue
            kept = [f for f in case.findings if rng.random() >= spec.drop_finding]
            if not kept:
                kept = [rng.choice(case.findings)]
            if spec.shuffle_findings:
                rng.shuffle(kept)
            out.append(
                case.model_copy(
                    update={"case_id": f"{case.case_id}~aug{k}", "findings": tuple(kept)}
                )
            )
    return out


__all__ = ["augment_cases"]
