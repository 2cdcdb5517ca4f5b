"""English and Brazilian Portuguese Symptom2Disease cases, paired and split for the
cross-lingual experiments (:mod:`feddx.demo.crosslingual_experiment`).

The pt-BR file holds translations of rows of the English file, with the English labels but no
pointer back to the row each one translates. Transfer from English is only measured honestly
when a pt-BR test case's English original is not among the English training cases, so the
originals have to be found. Exact text matching is impossible across languages; the files pair
by order instead: the translated rows are the first ten rows of each disease in the English
file, in file order, so walking both files and matching each translated row to the next
English row with the same label (:func:`pair_translations`) finds every original. The
pairing is checked, not trusted: it must consume the translated file completely, and the
benchmark reports how well the paired texts' lengths agree (a wrong pairing of free-text
descriptions gives lengths that barely correlate).

:func:`crosslingual_data` builds the fixed, seeded design every experiment shares: the
English cases minus the originals, dealt to three English-writing clinics; the pt-BR cases
(``language`` = ``pt-BR``, so prompts are asked in Portuguese) split per disease into test,
validation and a Portuguese-writing clinic's training rows.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from feddx.data.schema import Case
from feddx.errors import DataError

PT_LANGUAGE = "pt-BR"
PT_CLINIC = "clinica-pt"
EN_CLINICS = ("clinic-en-1", "clinic-en-2", "clinic-en-3")
PT_TEST_PER_DISEASE = 5
PT_VALIDATION_PER_DISEASE = 2


@dataclass(frozen=True)
class CrosslingualData:
    """The shared design: who trains on what, and what every condition is scored on.

    ``english`` are the English cases whose translation is not in the pt-BR file, each with
    its clinic in ``institution``; ``pt_train`` the Portuguese clinic's own rows;
    ``pt_validation`` where every setting (epochs, rounds, the personalization gate) is chosen;
    ``pt_test`` scored once per system. ``left_out`` counts the English originals removed.
    """

    english: list[Case]
    pt_train: list[Case]
    pt_validation: list[Case]
    pt_test: list[Case]
    candidates: list[str]
    left_out: int
    pairs: list[tuple[Case, Case]]

    def english_originals(self, cases: Sequence[Case]) -> list[Case]:
        """The English original of each pt-BR case, in order: the same patients in English
        (never trained on), to tell a model that did not learn from one that did not transfer."""
        original = {p.case_id: e for e, p in self.pairs}
        return [original[c.case_id] for c in cases]

    def sizes(self) -> dict[str, int]:
        """The n of every part, for the results file."""
        return {
            "english_train": len(self.english),
            "english_originals_left_out": self.left_out,
            "pt_train": len(self.pt_train),
            "pt_validation": len(self.pt_validation),
            "pt_test": len(self.pt_test),
            "diseases": len(self.candidates),
        }


def pair_translations(english: Sequence[Case], translated: Sequence[Case]) -> list[int]:
    """For each translated case, the index in ``english`` of its original: the next English
    case (in file order) with the same label, after the previous match (see the module
    docstring). Raises :class:`DataError` when the translated labels are not a subsequence
    of the English ones in order, i.e. when the files do not pair this way."""
    out: list[int] = []
    j = 0
    for i, case in enumerate(translated):
        label = case.require_label().diagnosis
        while j < len(english) and english[j].require_label().diagnosis != label:
            j += 1
        if j == len(english):
            raise DataError(
                f"translated row {i + 1} ({label}): no English row with that label after the "
                "previous match, so the files do not pair in order"
            )
        out.append(j)
        j += 1
    return out


def _shuffled_by_disease(cases: Sequence[Case], rng: random.Random) -> list[list[Case]]:
    """Each disease's cases (diseases in name order), each group shuffled by ``rng`` in that
    order: what the pt-BR split and the clinics' deal both draw from, so both are functions
    of the seed alone."""
    by_label: dict[str, list[Case]] = defaultdict(list)
    for c in cases:
        by_label[c.require_label().diagnosis].append(c)
    groups = []
    for label in sorted(by_label):
        group = list(by_label[label])
        rng.shuffle(group)
        groups.append(group)
    return groups


def split_ptbr(
    cases: Sequence[Case],
    *,
    test_per_disease: int = PT_TEST_PER_DISEASE,
    validation_per_disease: int = PT_VALIDATION_PER_DISEASE,
    seed: int = 0,
) -> tuple[list[Case], list[Case], list[Case]]:
    """(train, validation, test) with a fixed number of cases per disease in test and
    validation, the rest in train; per disease a seeded shuffle (diseases in name order), so
    the split is a function of the seed alone. Each row is its own patient (the data has no
    patient ids). A disease with too few rows leaves train short, never test."""
    train: list[Case] = []
    validation: list[Case] = []
    test: list[Case] = []
    for group in _shuffled_by_disease(cases, random.Random(seed)):
        test.extend(group[:test_per_disease])
        validation.extend(group[test_per_disease : test_per_disease + validation_per_disease])
        train.extend(group[test_per_disease + validation_per_disease :])
    return train, validation, test


def _deal_clinics(cases: Sequence[Case], seed: int) -> list[Case]:
    """Each English case in one of three clinics: per disease, a seeded shuffle dealt round
    robin, so every clinic sees every disease about equally often."""
    rng = random.Random(seed)
    out: list[Case] = []
    k = 0
    for group in _shuffled_by_disease(cases, rng):
        for c in group:
            out.append(c.model_copy(update={"institution": EN_CLINICS[k % len(EN_CLINICS)]}))
            k += 1
    rng.shuffle(out)
    return out


def crosslingual_data(english_csv: Path, ptbr_csv: Path, *, seed: int = 0) -> CrosslingualData:
    """Load both files (``csv`` source), pair the translations with their originals, leave the
    originals out of the English cases and build the split (see :class:`CrosslingualData`).
    Raises :class:`DataError` naming the file for an unreadable or unpairable dataset."""
    from feddx.data.sources import load_cases

    english = list(load_cases(f"csv:{english_csv}", purpose="train on").cases)
    translated = list(load_cases(f"csv:{ptbr_csv}", purpose="evaluate against").cases)
    try:
        originals = pair_translations(english, translated)
    except DataError as e:
        raise DataError(f"{ptbr_csv}: {e}") from None
    left = set(originals)
    pt = [
        c.model_copy(update={"language": PT_LANGUAGE, "institution": PT_CLINIC}) for c in translated
    ]
    pt_train, pt_validation, pt_test = split_ptbr(pt, seed=seed)
    kept = [c for i, c in enumerate(english) if i not in left]
    labels = {c.require_label().diagnosis for c in [*english, *translated]}
    return CrosslingualData(
        english=_deal_clinics(kept, seed),
        pt_train=pt_train,
        pt_validation=pt_validation,
        pt_test=pt_test,
        candidates=sorted(labels),
        left_out=len(left),
        pairs=[(english[j], pt[i]) for i, j in enumerate(originals)],
    )
