"""The cross-lingual design (feddx.data.crosslingual) and its linear references: the pairing
of translations with their originals, the fixed pt-BR split, and the English originals being
kept out of English training."""

from __future__ import annotations

from pathlib import Path

import pytest

from feddx.data.crosslingual import (
    EN_CLINICS,
    PT_CLINIC,
    crosslingual_data,
    pair_translations,
    split_ptbr,
)
from feddx.data.schema import Case, Label
from feddx.demo.crosslingual_experiment import linear_correct, training_rows
from feddx.errors import DataError
from feddx.evaluate.baseline import fit_baseline


def _case(i: int, label: str, text: str = "x") -> Case:
    return Case(case_id=f"c{i}", text=text, label=Label(diagnosis=label))


def write_pair(
    tmp: Path, diseases: int = 3, english_per: int = 12, pt_per: int = 10
) -> tuple[Path, Path]:
    """An English CSV with ``english_per`` rows per disease, interleaved, and a 'translated'
    CSV of the first ``pt_per`` rows of each disease in file order (as the shared files are)."""
    en_rows, seen = [], {d: 0 for d in range(diseases)}
    pt_rows = []
    for i in range(diseases * english_per):
        d = (i * 7) % diseases if i % 5 else i % diseases
        if seen[d] >= english_per:
            d = min(seen, key=seen.__getitem__)
        text = f"symptom{d}a symptom{d}b patient{i} words"
        en_rows.append((f"disease {d}", text))
        if seen[d] < pt_per:
            pt_rows.append((f"disease {d}", f"sintoma{d}a sintoma{d}b paciente{i} palavras"))
        seen[d] += 1
    en, pt = tmp / "en.csv", tmp / "pt.csv"
    en.write_text("label,text\n" + "".join(f"{a},{b}\n" for a, b in en_rows))
    pt.write_text("label,text\n" + "".join(f"{a},{b}\n" for a, b in pt_rows))
    return en, pt


def test_pairing_walks_both_files_in_order() -> None:
    english = [_case(i, lab) for i, lab in enumerate("ABACBBA")]
    translated = [_case(10 + i, lab) for i, lab in enumerate("AAB")]
    # A -> 0, next A after 0 -> 2, next B after 2 -> 4 (not 1: order is kept)
    assert pair_translations(english, translated) == [0, 2, 4]


def test_pairing_refuses_files_that_do_not_pair() -> None:
    english = [_case(i, lab) for i, lab in enumerate("AB")]
    with pytest.raises(DataError, match="do not pair"):
        pair_translations(english, [_case(9, "B"), _case(10, "A")])


def test_split_is_fixed_per_disease_and_seeded() -> None:
    cases = [_case(i, f"d{i % 4}") for i in range(40)]
    train, val, test = split_ptbr(cases, seed=3)
    assert (len(train), len(val), len(test)) == (12, 8, 20)
    for part, k in ((test, 5), (val, 2), (train, 3)):
        assert all(sum(c.label.diagnosis == f"d{d}" for c in part) == k for d in range(4))  # type: ignore[union-attr]
    ids = lambda cs: [c.case_id for c in cs]  # noqa: E731
    assert ids(split_ptbr(cases, seed=3)[2]) == ids(test)
    assert ids(split_ptbr(cases, seed=4)[2]) != ids(test)
    assert not set(ids(train)) & set(ids(test)) and not set(ids(val)) & set(ids(test))


def test_design_leaves_the_originals_out_of_english_training(tmp_path: Path) -> None:
    en, pt = write_pair(tmp_path)
    data = crosslingual_data(en, pt)
    assert data.left_out == 30 and len(data.english) == 6
    originals = {e.text for e, _ in data.pairs}
    assert not originals & {c.text for c in data.english}
    # each pair names the same patient (the 'patient{i}' marker survives the 'translation')
    assert all(e.text.split()[2][7:] == p.text.split()[2][8:] for e, p in data.pairs)  # type: ignore[union-attr]
    assert {c.institution for c in data.english} == set(EN_CLINICS)
    pt_all = [*data.pt_train, *data.pt_validation, *data.pt_test]
    assert {c.language for c in pt_all} == {"pt-BR"} and {c.institution for c in pt_all} == {
        PT_CLINIC
    }
    assert len(training_rows(data, "federation-pt")) == len(data.english) + len(data.pt_train)


def test_char_ngrams_carry_across_words_a_word_model_never_saw() -> None:
    train = [
        _case(i, lab, text)
        for i, (lab, text) in enumerate(
            [
                ("flu", "fever and cough"),
                ("flu", "high fever"),
                ("acne", "pimples on skin"),
                ("acne", "skin pimples"),
            ]
            * 3
        )
    ]
    test = [_case(99, "flu", "febre e tosse"), _case(98, "acne", "espinhas na pele")]
    assert fit_baseline(train, text_analyzer="char").text_vectorizer.analyzer == "char_wb"
    assert sum(linear_correct(train, test, "char")) >= sum(linear_correct(train, test, "word"))
