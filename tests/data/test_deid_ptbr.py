"""De-identification of pt-BR free text (issue 23): narrative notes, messages and letters whose
names mostly have no cue. Structured identifiers are all redacted; names recall is measured
(``benchmarks/bench_deid_ptbr.py``, ``results/deid.md``) and guarded here so it cannot fall."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from feddx.data.deid import DeidConfig, Deidentifier

RECORDS = Path(__file__).resolve().parents[1] / "fixtures" / "deid" / "ptbr_freetext.txt"
# Written after the kinship/self-introduction cues, to measure them on records not seen.
RECORDS_2 = RECORDS.with_name("ptbr_freetext_2.txt")
Span = tuple[int, int, str]


@pytest.fixture(scope="module")
def deid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deidentifier]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDDX_CACHE", str(tmp_path_factory.mktemp("feddx-cache")))
        mp.delenv("FEDDX_DEID_KEY", raising=False)
        yield Deidentifier(DeidConfig(key="test-key"))


def _records(path: Path = RECORDS) -> list[tuple[str, list[Span], list[str]]]:
    """(text, gold spans, the registry's identifiers) per paragraph of ``[[TYPE:value]]``."""
    out = []
    for block in path.read_text(encoding="utf-8").split("\n\n"):
        lines = [ln for ln in block.splitlines() if not ln.startswith("#")]
        extra = [v.strip() for ln in lines if ln.startswith("EXTRA:") for v in ln[6:].split("|")]
        marked = "\n".join(ln for ln in lines if not ln.startswith("EXTRA:"))
        text, spans, pos = "", [], 0
        for m in re.finditer(r"\[\[([A-Z]+):(.+?)\]\]", marked):
            text += marked[pos : m.start()]
            spans.append((len(text), len(text) + len(m.group(2)), m.group(1)))
            text += m.group(2)
            pos = m.end()
        if spans:
            out.append((text + marked[pos:], spans, [e for e in extra if e]))
    return out


def _missed(
    deid: Deidentifier, with_extra: bool, path: Path = RECORDS
) -> tuple[dict[str, int], dict[str, int]]:
    missed: dict[str, int] = {}
    total: dict[str, int] = {}
    for text, spans, extra in _records(path):
        found = deid.find(text, extra if with_extra else ())
        covered = {i for s in found for i in range(s.start, s.end)}
        for start, end, entity in spans:
            total[entity] = total.get(entity, 0) + 1
            if any(i not in covered for i in range(start, end) if not text[i].isspace()):
                missed[entity] = missed.get(entity, 0) + 1
    return missed, total


def test_the_records_cover_every_kind_of_identifier() -> None:
    kinds = {e for _, spans, _ in _records() for _, _, e in spans}
    assert {"NAME", "CPF", "CNS", "RG", "ADDRESS", "DATE", "PHONE", "CEP"} <= kinds
    assert len(_records()) == 20 and len(_records(RECORDS_2)) == 10


def test_numbers_with_check_digits_phones_and_emails_are_all_redacted(deid: Deidentifier) -> None:
    missed, total = _missed(deid, with_extra=False)
    for entity in ("CPF", "CNS", "CEP", "PHONE", "EMAIL", "ID", "AGE"):
        assert total[entity] >= 1 and entity not in missed, entity


def test_names_recall_on_pt_br_free_text_does_not_fall(deid: Deidentifier) -> None:
    # Measured (results/deid.md): 28/44 names from the text alone, 41/44 with the registry's
    # identifiers (25 and 38 before the kinship/self-introduction cues); one date ("5/4") and
    # one rural address ("Sítio ...") missed. The RG's state layouts, missed at first (3 of 5),
    # are found since the cue pattern takes them; the one left is "3.456.789 SSP/GO", whose
    # number is redacted and issuer kept (not identifying).
    missed, total = _missed(deid, with_extra=False)
    assert total["NAME"] == 44 and total["NAME"] - missed.get("NAME", 0) >= 28
    assert missed.get("RG", 0) <= 1 and missed.get("DATE", 0) <= 1
    assert missed.get("ADDRESS", 0) <= 1
    with_extra, _ = _missed(deid, with_extra=True)
    assert total["NAME"] - with_extra.get("NAME", 0) >= 41


def test_names_recall_on_the_second_set_does_not_fall(deid: Deidentifier) -> None:
    # Held out for the kinship/self-introduction cues: 19/25 names from the text alone (18
    # without the cues), 23/25 with the registry's identifiers.
    missed, total = _missed(deid, with_extra=False, path=RECORDS_2)
    assert total["NAME"] == 25 and total["NAME"] - missed.get("NAME", 0) >= 19
    with_extra, _ = _missed(deid, with_extra=True, path=RECORDS_2)
    assert total["NAME"] - with_extra.get("NAME", 0) >= 23


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("Veio com o marido, Anselmo, que dirigia.", "Anselmo"),
        ("Pai (Jurandir) assina o termo.", "Jurandir"),
        ("oi aqui é o robson do leito 3", "robson"),
        ("Diz se chamar Odete e não lembra o endereço.", "Odete"),
    ],
)
def test_a_name_after_a_kinship_word_or_a_self_introduction_is_redacted(
    deid: Deidentifier, text: str, name: str
) -> None:
    assert name in [text[s.start : s.end] for s in deid.find(text) if s.entity == "NAME"]


def test_a_kinship_word_without_a_name_redacts_nothing(deid: Deidentifier) -> None:
    assert not deid.find("O vizinho, que chamou o SAMU, foi embora; a mãe, aflita, chorava.")


@pytest.mark.parametrize(
    ("text", "rg"),
    [
        ("RG SP-22.333.444-5 emitido em 2001", "SP-22.333.444-5"),
        ("Identidade MG 9.876.543, órgão emissor SSP", "MG 9.876.543"),
        ("Identidade nº 1.234.567 SSP/BA.", "1.234.567"),
        ("RG 045.612.783 apresentado", "045.612.783"),
    ],
)
def test_state_layouts_of_the_rg_are_found_behind_their_cue(
    deid: Deidentifier, text: str, rg: str
) -> None:
    assert [text[s.start : s.end] for s in deid.find(text) if s.entity == "RG"] == [rg]


def test_a_dotted_number_without_an_rg_cue_is_not_an_rg(deid: Deidentifier) -> None:
    assert not [s for s in deid.find("Recebeu 1.234.567 unidades de heparina.") if s.entity == "RG"]
