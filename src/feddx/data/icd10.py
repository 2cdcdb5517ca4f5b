"""ICD-10 terminology: code normalisation, the chapter/block/category hierarchy, and a curated
diagnosis-name -> code map.

Why: evaluation scores diagnoses at chapter, block and category level (a model that says
"unstable angina" for "stable angina" is wrong, but less wrong than "migraine"), and free-text
datasets arrive with names, not codes.

Terminology choice. The hierarchy comes from ICD-10-CM (the ``simple-icd-10-cm`` package, the
maintained, offline source of the full tree). Datasets such as DDXPlus ship WHO ICD-10 ids; the
two agree on chapters and on almost all 3-character categories, but differ in some blocks
(WHO J40-J47 is CM J40-J4A) and in a few codes (WHO I84 hemorrhoids is CM K64). A code unknown
to ICD-10-CM therefore still gets its chapter (from the fixed chapter ranges) and its category
(its own 3-character stem); only the block, which needs the tree, is ``None``. Use
:func:`icd10_known` to report such codes.

Chapters are given as Roman numerals ("IX"), blocks as ranges ("I20-I25"), categories as the
3-character code ("I25").
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

_ROMAN = (
    *("I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X", "XI"),
    *("XII", "XIII", "XIV", "XV", "XVI", "XVII", "XVIII", "XIX", "XX", "XXI", "XXII"),
)

# (first category, last category, chapter). The union of the WHO and CM ranges where they differ
# (WHO E90 / CM E89, WHO T98 / CM T88, ...), so a code of either edition lands in its chapter.
# Compared as strings: "O9A" > "O99" and "QA0" > "Q99", which is what CM's own ranges mean.
_CHAPTER_RANGES: tuple[tuple[str, str, str], ...] = (
    ("A00", "B99", "I"),
    ("C00", "D49", "II"),
    ("D50", "D89", "III"),
    ("E00", "E90", "IV"),
    ("F00", "F99", "V"),
    ("G00", "G99", "VI"),
    ("H00", "H59", "VII"),
    ("H60", "H95", "VIII"),
    ("I00", "I99", "IX"),
    ("J00", "J99", "X"),
    ("K00", "K95", "XI"),
    ("L00", "L99", "XII"),
    ("M00", "M99", "XIII"),
    ("N00", "N99", "XIV"),
    ("O00", "O9A", "XV"),
    ("P00", "P96", "XVI"),
    ("Q00", "QA0", "XVII"),
    ("R00", "R99", "XVIII"),
    ("S00", "T98", "XIX"),
    ("U00", "U85", "XXII"),
    ("V00", "Y99", "XX"),
    ("Z00", "Z99", "XXI"),
)

# A code: letter, two digits or a digit and a letter (CM has "C4A", "O9A"), then up to four
# more characters after an optional dot ("I2510", "I25.10", "T78.2XXA").
_CODE = re.compile(r"^[A-Z][0-9][0-9A-Z](?:\.?[0-9A-Z]{1,4})?$")
_BLOCK = re.compile(r"^([A-Z][0-9][0-9A-Z])-([A-Z][0-9][0-9A-Z])$")
_SEPARATORS = re.compile(r"[,;/]|\s+(?:and|or)\s+", re.IGNORECASE)


@dataclass(frozen=True)
class ICD10Levels:
    """Where a code sits in the hierarchy; ``None`` at a level the code does not determine."""

    chapter: str | None
    block: str | None
    category: str | None


_UNKNOWN = ICD10Levels(None, None, None)


def _cm() -> Any:
    # simple_icd_10_cm parses its data on import (~2 s): pay that only when the tree is needed.
    import simple_icd_10_cm

    return simple_icd_10_cm


def _normalize_one(code: str) -> str:
    c = re.sub(r"\s+", "", code).upper()
    c = c.rstrip("†*+")  # WHO dagger/asterisk markers
    c = re.sub(r"\.?-$", "", c)  # "J45.-": the category itself
    if _BLOCK.match(c):
        return c
    if not _CODE.match(c):
        raise ValueError(f"not an ICD-10 code: {code.strip()[:20]!r}")
    c = c.replace(".", "")
    return c if len(c) == 3 else f"{c[:3]}.{c[3:]}"


def normalize_icd10(code: str) -> str:
    """The canonical spelling of an ICD-10 code: upper case, a dot after the category.

    ``"i2510"`` -> ``"I25.10"``, ``"j45.-"`` -> ``"J45"``, ``"A17.0†"`` -> ``"A17.0"``. A block
    range stays a range (``"i20-i25"`` -> ``"I20-I25"``). Several codes in one field (DDXPlus
    ships ``"j17, j18"``) become one comma-separated string (``"J17,J18"``), which
    :func:`icd10_levels` reads as the levels they share.

    Raises :class:`ValueError` for a string that is not shaped like a code.
    """
    parts = [p for p in _SEPARATORS.split(code) if p.strip()]
    if not parts:
        raise ValueError("empty ICD-10 code")
    return ",".join(dict.fromkeys(_normalize_one(p) for p in parts))


def _chapter_of_category(category: str) -> str | None:
    for first, last, chapter in _CHAPTER_RANGES:
        if first <= category <= last:
            return chapter
    return None


@functools.cache
def _levels_one(code: str) -> ICD10Levels:
    cm = _cm()
    if _BLOCK.match(code):
        if not cm.is_valid_item(code):
            return ICD10Levels(_chapter_of_category(code[:3]), None, None)
        code_levels = cm.get_ancestors(code)
        return ICD10Levels(_roman_chapter(code_levels), code, None)
    category = code[:3]
    chapter = _chapter_of_category(category)
    if chapter is None:
        return _UNKNOWN
    for known in (code, category):
        if cm.is_valid_item(known):
            ancestors = [known, *cm.get_ancestors(known)]
            # The nearest enclosing block (CM nests some, e.g. C30-C39 in C00-C75). A one-code
            # block shares its name with its category ("B20"), so test is_block on the
            # ancestors strictly above the category.
            above = ancestors[ancestors.index(category) + 1 :] if category in ancestors else []
            block = next((a for a in above if cm.is_block(a) and not a.isdigit()), None)
            if block is None and cm.is_block(category):
                block = category
            return ICD10Levels(_roman_chapter(ancestors) or chapter, block, category)
    return ICD10Levels(chapter, None, category)


def _roman_chapter(ancestors: list[str]) -> str | None:
    # CM names its chapters "1".."22"; the chapter is the last ancestor.
    numbers = [a for a in ancestors if a.isdigit()]
    return _ROMAN[int(numbers[-1]) - 1] if numbers else None


def icd10_levels(code: str) -> ICD10Levels:
    """The chapter, block and category of ``code`` (any spelling :func:`normalize_icd10` accepts).

    A code unknown to ICD-10-CM keeps its chapter and 3-character category with ``block=None``;
    a malformed string gives all ``None``. For several codes (``"J17,J18"``) each level is kept
    only where all codes agree (J17 and J18: chapter X, block J09-J18, category ``None``).
    """
    try:
        codes = normalize_icd10(code).split(",")
    except ValueError:
        return _UNKNOWN
    levels = [_levels_one(c) for c in codes]
    first = levels[0]

    def shared(get: Callable[[ICD10Levels], str | None]) -> str | None:
        values = {get(lv) for lv in levels}
        return get(first) if len(values) == 1 else None

    return ICD10Levels(
        shared(lambda lv: lv.chapter), shared(lambda lv: lv.block), shared(lambda lv: lv.category)
    )


def icd10_known(code: str) -> bool:
    """Whether every code in ``code`` exists in ICD-10-CM (for reporting WHO-only or bad ids)."""
    try:
        codes = normalize_icd10(code).split(",")
    except ValueError:
        return False
    cm = _cm()
    return all(cm.is_valid_item(c) for c in codes)


def icd10_title(code: str) -> str | None:
    """The ICD-10-CM description of ``code`` ("I26" -> "Pulmonary embolism"), ``None`` when
    unknown; several codes give their titles joined by "; "."""
    try:
        codes = normalize_icd10(code).split(",")
    except ValueError:
        return None
    cm = _cm()
    titles = [str(cm.get_description(c)) if cm.is_valid_item(c) else None for c in codes]
    if any(t is None for t in titles):
        return None
    return "; ".join(t for t in titles if t)


# --- diagnosis names -------------------------------------------------------------------------


def label_key(label: str) -> str:
    """The comparison key of a diagnosis name: case, accents, underscores and runs of
    whitespace are ignored ("Guillain-Barre  SYNDROME" == "guillain-barré syndrome")."""
    decomposed = unicodedata.normalize("NFKD", label)
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(plain.replace("_", " ").casefold().split())


@dataclass(frozen=True)
class CuratedEntry:
    """One row of the curated map: the readable name, its code, and why that code."""

    name: str
    code: str
    why: str


@functools.cache
def curated_map() -> dict[str, CuratedEntry]:
    """The curated names, keyed by :func:`label_key` (``icd10_map.tsv`` plus the UCI Heart
    diagnoses of :mod:`feddx.data.uci_heart`)."""
    from feddx.data.uci_heart import ICD10 as UCI_ICD10

    entries: dict[str, CuratedEntry] = {}
    text = resources.files("feddx.data").joinpath("icd10_map.tsv").read_text(encoding="utf-8")
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            raise ValueError(f"icd10_map.tsv:{line_no}: expected 3 tab-separated fields")
        name, code, why = (f.strip() for f in fields)
        key = label_key(name)
        if key in entries:
            raise ValueError(f"icd10_map.tsv:{line_no}: duplicate name {name!r}")
        entries[key] = CuratedEntry(name, normalize_icd10(code), why)
    for name, code in UCI_ICD10.items():
        entries.setdefault(label_key(name), CuratedEntry(name, code, "UCI Heart (uci_heart.ICD10)"))
    return entries


def lookup_icd10(label: str) -> str | None:
    """The curated ICD-10 code of a diagnosis name (case/whitespace/accent-insensitive), or
    ``None`` when the name is not in the map."""
    entry = curated_map().get(label_key(label))
    return entry.code if entry else None


def normalize_label(label: str) -> str:
    """The one readable spelling of a diagnosis label, so "drug reaction", "Drug  Reaction"
    and "DRUG REACTION" become one label.

    A name in the curated map takes the map's spelling (which keeps acronyms: "GERD",
    "COVID-19"). Any other name is put in sentence case: first letter upper, the rest lower.
    That loses acronyms of unknown names ("Xyz" for "XYZ"), but it is a function of the
    case-insensitive key alone, so every spelling of a name, in any file or at any federated
    client, yields the same label. Returns ``""`` for a blank label.
    """
    key = label_key(label)
    if not key:
        return ""
    entry = curated_map().get(key)
    if entry is not None:
        return entry.name
    # Keep the original characters (accents), only change their case.
    text = " ".join(unicodedata.normalize("NFC", label).replace("_", " ").split()).lower()
    return text[0].upper() + text[1:]
