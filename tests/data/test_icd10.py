"""ICD-10 terminology: spelling, hierarchy (ICD-10-CM, with WHO-only ids handled), and the
curated name -> code map."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feddx.data.icd10 import (
    ICD10Levels,
    curated_map,
    icd10_known,
    icd10_levels,
    icd10_title,
    label_key,
    lookup_icd10,
    normalize_icd10,
    normalize_label,
)
from feddx.data.uci_heart import ICD10 as UCI_ICD10

# The 24 labels of Symptom2Disease, spelled as the Kaggle release spells them.
SYMPTOM2DISEASE_LABELS = [
    "Acne", "Arthritis", "Bronchial Asthma", "Cervical spondylosis", "Chicken pox", "Common Cold",
    "Dengue", "Dimorphic Hemorrhoids", "Fungal infection", "Hypertension", "Impetigo", "Jaundice",
    "Malaria", "Migraine", "Pneumonia", "Psoriasis", "Typhoid", "Varicose Veins", "allergy",
    "diabetes", "drug reaction", "gastroesophageal reflux disease", "peptic ulcer disease",
    "urinary tract infection",
]  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("I25.10", "I25.10"),
        ("i2510", "I25.10"),
        (" j45 ", "J45"),
        ("J45.-", "J45"),
        ("A17.0†", "A17.0"),
        ("g44.009", "G44.009"),
        ("i20-i25", "I20-I25"),
        ("j17, j18", "J17,J18"),
        ("J17; J18; J17", "J17,J18"),
        ("T78.2XXA", "T78.2XXA"),
    ],
)
def test_normalize_icd10_spells_codes_one_way(raw: str, expected: str) -> None:
    assert normalize_icd10(raw) == expected


@pytest.mark.parametrize("raw", ["", "  ", "hello", "125.1", "I2", "IX"])
def test_normalize_icd10_rejects_non_codes(raw: str) -> None:
    with pytest.raises(ValueError, match="ICD-10"):
        normalize_icd10(raw)


@pytest.mark.parametrize(
    ("code", "levels"),
    [
        ("I25.10", ICD10Levels("IX", "I20-I25", "I25")),
        ("i2510", ICD10Levels("IX", "I20-I25", "I25")),
        ("J45", ICD10Levels("X", "J40-J4A", "J45")),  # the CM block (WHO: J40-J47)
        ("C34.90", ICD10Levels("II", "C30-C39", "C34")),  # nearest of CM's nested blocks
        ("B20", ICD10Levels("I", "B20", "B20")),  # a one-category block
        ("U07.1", ICD10Levels("XXII", "U00-U49", "U07")),
        ("I20-I25", ICD10Levels("IX", "I20-I25", None)),
    ],
)
def test_levels_come_from_the_icd10_cm_tree(code: str, levels: ICD10Levels) -> None:
    assert icd10_levels(code) == levels


def test_a_who_only_code_keeps_chapter_and_category_without_block() -> None:
    # WHO ICD-10 I84 (hemorrhoids, before 2016) does not exist in ICD-10-CM (K64 there).
    assert not icd10_known("I84")
    assert icd10_levels("I84") == ICD10Levels("IX", None, "I84")
    assert icd10_levels("I84.9") == ICD10Levels("IX", None, "I84")
    assert icd10_title("I84") is None


def test_a_subcode_unknown_to_cm_falls_back_to_its_category() -> None:
    # WHO A01.9 does not exist in CM, whose typhoid codes are A01.00-A01.09.
    assert not icd10_known("A01.9")
    assert icd10_levels("A01.9") == icd10_levels("A01") == ICD10Levels("I", "A00-A09", "A01")


def test_several_codes_keep_only_the_levels_they_share() -> None:
    # DDXPlus ships pneumonia as "j17, j18": same chapter and block, different categories.
    assert icd10_levels("j17, j18") == ICD10Levels("X", "J09-J18", None)
    assert icd10_levels("J18.9,I10") == ICD10Levels(None, None, None)
    assert icd10_known("j17, j18")


def test_malformed_codes_have_no_levels() -> None:
    assert icd10_levels("not a code") == ICD10Levels(None, None, None)
    assert not icd10_known("not a code")
    assert icd10_title("not a code") is None


def test_titles() -> None:
    assert icd10_title("i26") == "Pulmonary embolism"
    assert icd10_title("J17,J18") == (
        "Pneumonia in diseases classified elsewhere; Pneumonia, unspecified organism"
    )


def test_every_curated_code_exists_in_icd10_cm() -> None:
    unknown = {e.name: e.code for e in curated_map().values() if not icd10_known(e.code)}
    assert unknown == {}
    assert all(e.why for e in curated_map().values()), "every mapping says why"


def test_symptom2disease_labels_are_all_mapped() -> None:
    codes = {label: lookup_icd10(label) for label in SYMPTOM2DISEASE_LABELS}
    assert None not in codes.values()
    assert codes["diabetes"] == "E11.9"
    assert codes["Common Cold"] == "J00"
    assert codes["drug reaction"] == "T88.7"


def test_uci_heart_labels_come_from_the_uci_loader() -> None:
    for name, code in UCI_ICD10.items():
        assert lookup_icd10(name) == code
        assert normalize_label(name.upper()) == name


def test_lookup_ignores_case_whitespace_accents_and_underscores() -> None:
    assert lookup_icd10("  URINARY   tract\tinfection ") == "N39.0"
    assert lookup_icd10("Fungal_infection") == "B36.9"
    assert lookup_icd10("guillain-barre syndrome") == lookup_icd10("Guillain-Barré Syndrome")
    assert lookup_icd10("a disease nobody has heard of") is None


def test_label_key() -> None:
    assert label_key(" Drug  REACTION ") == label_key("drug reaction") == "drug reaction"


@pytest.mark.parametrize(
    ("variants", "expected"),
    [
        (["drug reaction", "Drug Reaction", " DRUG  reaction "], "Drug reaction"),
        (["gerd", "GERD"], "GERD"),  # a curated name keeps its acronym
        (["covid-19", "Covid-19"], "COVID-19"),
        (
            ["hand foot and mouth DISEASE", "Hand Foot And Mouth Disease"],
            "Hand foot and mouth disease",
        ),
        (["infecção URINÁRIA"], "Infecção urinária"),  # accents kept in unknown names
    ],
)
def test_normalize_label_gives_one_readable_spelling(variants: list[str], expected: str) -> None:
    assert {normalize_label(v) for v in variants} == {expected}


def test_normalize_label_of_blank_is_empty() -> None:
    assert normalize_label("   ") == ""


def test_ddxplus_shipped_ids_all_resolve(shared_data: Path) -> None:
    """Every ICD-10 id in the DDXPlus release (WHO style, some lower case, one a list) gets a
    chapter and category; all of them exist in ICD-10-CM once normalised."""
    conditions = json.loads((shared_data / "ddxplus" / "release_conditions.json").read_text())
    ids = {c["cond-name-eng"]: c["icd10-id"] for c in conditions.values()}
    assert len(ids) == 49
    for name, raw in ids.items():
        levels = icd10_levels(raw)
        assert levels.chapter is not None, name
        assert icd10_known(raw), name
        if "," not in normalize_icd10(raw):
            assert levels.category is not None, name


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("Viral sinusitis", "J01.90"),
        ("Essential hypertension", "I10"),
        ("Chronic kidney disease stage 3", "N18.30"),
        ("Sprain of ankle", "S93.409A"),
        ("Suspected COVID-19", "Z20.822"),
    ],
)
def test_synthea_snomed_display_names_are_mapped(name: str, code: str) -> None:
    assert lookup_icd10(name) == code
