"""Recognizers that Presidio lacks: Brazilian identifiers, dates, addresses, names, record ids.

Every recognizer here is plain regular expressions plus, where the identifier has one, its
check-digit rule (no Presidio import, so this module is cheap to import and to test);
:mod:`feddx.data.deid` registers them in Presidio's analyzer:

- CPF (11 digits, two mod-11 check digits), formatted ``123.456.789-09`` or bare;
- CNS, the Cartão Nacional de Saúde (15 digits whose weighted sum 15..1 is a multiple of 11);
- RG (formats vary by state, so it is found by its cue "RG"/"identidade" or by the common
  ``12.345.678-9`` layout), CEP (``01310-100``), Brazilian and US phone numbers;
- dates in ISO, US and Brazilian numeric formats and written out in Portuguese and English
  ("12 de março de 2023", "March 12, 2023");
- street addresses (Rua, Av., Travessa, ... and "123 Main Street");
- record numbers behind a cue (MRN, prontuário, atendimento, matrícula, ...), US SSNs;
- names behind a cue (Nome:, Paciente:, Sr., Sra., Dr., Dra., Mr., Mrs., ...);
- ages over 89 (HIPAA Safe Harbor aggregates them).

Unlike Presidio's ``PatternRecognizer``, a recognizer here reports the span of the named
group ``phi`` when its pattern has one, so a cue ("CPF:", "Paciente:") can anchor a match
without being redacted itself, and its patterns keep their own case sensitivity (Presidio
compiles pattern recognizers case-insensitively, which would make "any capitalised word" mean
"any word").

Scores follow one convention: 0.9+ a validated or cue-anchored identifier, 0.5-0.8 a
well-formed one without a cue, below 0.35 (the default threshold) only where a number merely
*could* be an identifier.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass


def _words(text: str) -> tuple[str, ...]:
    """A whitespace-separated word list, kept as a string for readability."""
    return tuple(text.split())


# Entity types this module emits (the public names; see feddx.data.deid.PLACEHOLDERS).
NAME = "NAME"
DATE = "DATE"
PHONE = "PHONE"
EMAIL = "EMAIL"
ADDRESS = "ADDRESS"
CPF = "CPF"
CNS = "CNS"
RG = "RG"
CEP = "CEP"
ID = "ID"
SSN = "SSN"
AGE = "AGE"

# --------------------------------------------------------------------------------------------
# Check-digit rules
# --------------------------------------------------------------------------------------------


def digits_of(text: str) -> str:
    """The decimal digits of ``text``, in order (separators dropped)."""
    return "".join(ch for ch in text if ch.isdigit())


def cpf_check_digits(first9: str) -> str:
    """The two CPF check digits for a 9-digit base (Receita Federal's mod-11 rule)."""
    if len(first9) != 9 or not first9.isdigit():
        raise ValueError("a CPF base has exactly 9 digits")
    nums = [int(c) for c in first9]
    d1 = sum(n * w for n, w in zip(nums, range(10, 1, -1), strict=True)) * 10 % 11 % 10
    nums.append(d1)
    d2 = sum(n * w for n, w in zip(nums, range(11, 1, -1), strict=True)) * 10 % 11 % 10
    return f"{d1}{d2}"


def is_valid_cpf(text: str) -> bool:
    """True when ``text`` (formatted or bare) is a CPF with correct check digits.

    Sequences of one repeated digit (``111.111.111-11``) satisfy the arithmetic but are not
    issued, and are rejected.
    """
    d = digits_of(text)
    if len(d) != 11 or len(set(d)) == 1:
        return False
    return cpf_check_digits(d[:9]) == d[9:]


def is_valid_cns(text: str) -> bool:
    """True when ``text`` is a valid Cartão Nacional de Saúde number.

    Definitive cards start with 1 or 2, provisional ones with 7, 8 or 9; for both the sum of
    the 15 digits weighted 15, 14, ..., 1 is a multiple of 11 (DATASUS rule).
    """
    d = digits_of(text)
    if len(d) != 15 or d[0] not in "12789":
        return False
    return sum(int(c) * w for c, w in zip(d, range(15, 0, -1), strict=True)) % 11 == 0


# --------------------------------------------------------------------------------------------
# A regex recognizer that reports a group span and keeps its own flags
# --------------------------------------------------------------------------------------------

Validator = Callable[[str, re.Match[str], str], float | None]
"""(span text, match, whole text) -> score, or None to drop the match."""


@dataclass(frozen=True)
class RegexRule:
    """One pattern of a :class:`RegexRecognizer`.

    The reported span is the named group ``phi`` when the pattern has one, else the whole
    match; ``adjust`` may then trim it. ``score`` is used as is unless ``validate`` is given,
    which may return another score or ``None`` to reject the match.
    """

    name: str
    pattern: re.Pattern[str]
    score: float
    validate: Validator | None = None
    adjust: Callable[[str, int, int], tuple[int, int]] | None = None


@dataclass(frozen=True)
class RegexMatch:
    """One match of a :class:`RegexRecognizer`: offsets, score and the rule that fired."""

    start: int
    end: int
    score: float
    rule: str


@dataclass(frozen=True)
class RegexRecognizer:
    """Rules for one entity type. Plain Python: :mod:`feddx.data.deid` adapts it to Presidio."""

    entity: str
    rules: tuple[RegexRule, ...]
    name: str

    def matches(self, text: str) -> list[RegexMatch]:
        """Every accepted match of every rule (overlaps included; resolution comes later)."""
        out: list[RegexMatch] = []
        for rule in self.rules:
            has_group = "phi" in rule.pattern.groupindex
            for m in rule.pattern.finditer(text):
                start, end = m.span("phi") if has_group else m.span()
                if rule.adjust is not None and end > start:
                    start, end = rule.adjust(text, start, end)
                if start < 0 or end <= start:
                    continue
                score: float | None = rule.score
                if rule.validate is not None:
                    score = rule.validate(text[start:end], m, text)
                if score is not None:
                    out.append(RegexMatch(start, end, score, rule.name))
        return out


def _recognizer(entity: str, rules: Sequence[RegexRule], name: str) -> RegexRecognizer:
    return RegexRecognizer(entity, tuple(rules), name)


def _cue_before(text: str, start: int, cue: re.Pattern[str], window: int = 40) -> bool:
    return cue.search(text, max(0, start - window), start) is not None


# --------------------------------------------------------------------------------------------
# Brazilian identifiers
# --------------------------------------------------------------------------------------------

_NOT_DIGIT_BEFORE = r"(?<![\d.\-/])"
_NOT_DIGIT_AFTER = r"(?![\d]|[.\-/]\d)"

_CPF_CUE = re.compile(r"(?i)\bC\.?P\.?F\b")
_CPF_PATTERN = re.compile(
    _NOT_DIGIT_BEFORE
    + r"(?P<phi>\d{3}\.\d{3}\.\d{3}-?\d{2}|\d{3} \d{3} \d{3}[ -]\d{2}|\d{9}-\d{2}|\d{11})"
    + _NOT_DIGIT_AFTER
)


def _cpf_score(span: str, m: re.Match[str], text: str) -> float | None:
    cue = _cue_before(text, m.start("phi"), _CPF_CUE)
    if is_valid_cpf(span):
        formatted = not span.isdigit()
        return 0.95 if (cue or formatted) else 0.6
    # A mistyped CPF behind an explicit "CPF:" is still the patient's identifier.
    return 0.5 if cue and len(digits_of(span)) == 11 else None


def cpf_recognizer() -> RegexRecognizer:
    """CPF, formatted or bare, kept only when its check digits are right (or it has a cue)."""
    return _recognizer(
        CPF, [RegexRule("cpf", _CPF_PATTERN, 0.95, _cpf_score)], name="BrCpfRecognizer"
    )


_CNS_CUE = re.compile(
    r"(?i)\b(?:CNS|cart[ãa]o\s+(?:do\s+)?SUS|cart[ãa]o\s+nacional\s+de\s+sa[úu]de)\b"
)
_CNS_PATTERN = re.compile(
    r"(?<![\d.\-/])(?P<phi>[1-27-9]\d{2}[ .]?\d{4}[ .]?\d{4}[ .]?\d{4})" + _NOT_DIGIT_AFTER
)


def _cns_score(span: str, m: re.Match[str], text: str) -> float | None:
    cue = _cue_before(text, m.start("phi"), _CNS_CUE)
    if is_valid_cns(span):
        return 0.95 if (cue or not span.isdigit()) else 0.7
    return 0.5 if cue else None


def cns_recognizer() -> RegexRecognizer:
    """CNS (Cartão Nacional de Saúde), 15 digits, validated by its mod-11 rule."""
    return _recognizer(
        CNS, [RegexRule("cns", _CNS_PATTERN, 0.95, _cns_score)], name="BrCnsRecognizer"
    )


def rg_recognizer() -> RegexRecognizer:
    """RG: no national check digit, so found behind its cue or in the usual 2.3.3-1 layout.

    Behind the cue, the states' own layouts count too: a state prefix ("MG-14.785.236"), a
    number without check digit ("3.456.789 SSP/GO") or with three leading digits."""
    cue = re.compile(
        r"(?i:\bR\.?G\.?\b|registro\s+geral|(?:carteira\s+de\s+)?identidade|\bC\.I\.)"
        r"\s*(?:n[º°o]\.?\s*)?[:.]?\s*"
        r"(?P<phi>(?:[A-Z]{2}[-\s]?)?\d{1,3}\.\d{3}\.\d{3}(?:-?[\dXx])?"
        r"|\d{1,2}\.?\d{3}\.?\d{3}-?[\dXx]|\d{5,10}(?:-[\dXx])?)"
        r"(?:[ \t]*(?:SSP|SESP|SDS|DETRAN|IFP|PC|SSPDS)[/\-]?[ \t]*[A-Z]{2})?" + _NOT_DIGIT_AFTER
    )
    layout = re.compile(
        _NOT_DIGIT_BEFORE + r"(?P<phi>\d{2}\.\d{3}\.\d{3}-[\dXx])" + _NOT_DIGIT_AFTER
    )
    return _recognizer(
        RG,
        [RegexRule("rg-cue", cue, 0.9), RegexRule("rg-layout", layout, 0.5)],
        name="BrRgRecognizer",
    )


def cep_recognizer() -> RegexRecognizer:
    """CEP (Brazilian postcode): ``01310-100`` / ``01.310-100``, or 8 digits behind "CEP"."""
    cue = re.compile(r"(?i:\bCEP\b)\s*(?:n[º°o]\.?)?\s*:?\s*(?P<phi>\d{2}\.?\d{3}-?\d{3})(?!\d)")
    layout = re.compile(r"(?<![\d.\-/])(?P<phi>\d{5}-\d{3}|\d{2}\.\d{3}-\d{3})(?![\d\-])")
    return _recognizer(
        CEP,
        [RegexRule("cep-cue", cue, 0.95), RegexRule("cep-layout", layout, 0.6)],
        name="BrCepRecognizer",
    )


# --------------------------------------------------------------------------------------------
# Phone numbers (Presidio's phonenumbers-based recognizer misses unassigned ranges such as
# the 555 numbers of synthetic US data, and local Brazilian numbers without area code)
# --------------------------------------------------------------------------------------------

_PHONE_CUE = (
    r"(?i:\b(?:tel(?:efone)?s?|fone|cel(?:ular)?|whats(?:app)?|contato|recado|phone|ph|cell|"
    r"mobile|tel\.?\s*(?:res|com)\.?))\.?\s*(?:n[º°o]\.?)?\s*:?\s*"
)


def phone_recognizer() -> RegexRecognizer:
    """Brazilian and North American phone numbers in their usual written forms."""
    nb = r"(?<![\w+\-/.])"
    na = r"(?![\d\-/]|\.\d)"
    rules = [
        # +55 (11) 98765-4321, (11) 98765-4321, (11) 3456-7890, (011) 3456 7890
        RegexRule(
            "br-ddd-parens",
            re.compile(
                nb + r"(?P<phi>(?:\+\s?55\s?)?\(\s?0?\d{2}\s?\)\s?9?\s?\d{4}[\s.\-]?\d{4})" + na
            ),
            0.85,
        ),
        # +55 11 98765-4321, +5511987654321
        RegexRule(
            "br-intl",
            re.compile(r"(?P<phi>\+\s?55[\s\-]?0?\d{2}[\s\-]?9?\s?\d{4}[\s.\-]?\d{4})" + na),
            0.9,
        ),
        # 11 98765-4321, 011-98765-4321 (mobile: the 9 prefix makes it distinctive)
        RegexRule(
            "br-ddd-mobile",
            re.compile(nb + r"(?P<phi>0?\d{2}[\s\-]9\d{4}[\s.\-]?\d{4})" + na),
            0.75,
        ),
        # 98765-4321 (mobile without area code)
        RegexRule("br-mobile", re.compile(nb + r"(?P<phi>9\d{4}-\d{4})" + na), 0.6),
        # behind a cue: 3456-7890, 11 3456 7890, 11987654321
        RegexRule(
            "cue",
            re.compile(
                _PHONE_CUE
                + r"(?P<phi>(?:\+?\s?\d{1,3}[\s\-])?(?:\(?\d{2,3}\)?[\s\-]?)?\d{4,5}[\s.\-]?\d{4})"
                + na
            ),
            0.9,
        ),
        # (316) 555-0123, 555-810-7203, 316.555.0123, +1 316 555 0123
        RegexRule(
            "nanp",
            re.compile(
                nb
                + r"(?P<phi>(?:\+?1[\s.\-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.\-])\d{3}[\s.\-]\d{4})"
                + na
            ),
            0.7,
        ),
    ]
    return _recognizer(PHONE, rules, name="BrUsPhoneRecognizer")


# --------------------------------------------------------------------------------------------
# Dates
# --------------------------------------------------------------------------------------------

_PT_MONTHS = (
    "janeiro|fevereiro|mar[çc]o|abril|maio|junho|julho|agosto|setembro|outubro|novembro|dezembro"
)
_PT_ABBR = "jan|fev|mar|abr|mai|jun|jul|ago|set|out|nov|dez"
_EN_MONTHS_LIST = _words(
    """
    January February March April May June July August September October November
    December
    """
)
_EN_ABBR_LIST = _words(
    """
    Jan Feb Mar Apr Jun Jul Aug Sep Sept Oct Nov Dec
    """
)


def _case_variants(words: Iterable[str]) -> str:
    return "|".join(sorted({v for w in words for v in (w, w.upper())}, key=len, reverse=True))


_EN_MONTH = rf"(?:{_case_variants(_EN_MONTHS_LIST)}|(?:{_case_variants(_EN_ABBR_LIST)})\.?)"
_DAY = r"(?:0?[1-9]|[12]\d|3[01])"
_MON = r"(?:0?[1-9]|1[0-2])"
_YEAR = r"(?:1[89]\d{2}|20\d{2})"
_NUM_BEFORE = r"(?<![\w/.\-])"
_NUM_AFTER = r"(?![\w/\-]|[.,]\d)"
_TIME = r"(?:[T ]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:\s?(?:Z|[+-]\d{2}:?\d{2}))?)?"


def date_recognizer() -> RegexRecognizer:
    """Dates with a day or month (HIPAA keeps years alone), in the forms clinical text uses."""
    rules = [
        RegexRule(
            "iso",
            re.compile(
                _NUM_BEFORE + rf"(?P<phi>{_YEAR}[-/.]{_MON}[-/.]{_DAY}{_TIME})" + _NUM_AFTER
            ),
            0.9,
        ),
        # dd/mm/yyyy (Brazil) and mm/dd/yyyy (US): both read as a date, whichever it is.
        RegexRule(
            "numeric-4y",
            re.compile(
                _NUM_BEFORE
                + rf"(?P<phi>(?:{_DAY}/{_MON}|{_MON}/{_DAY})/{_YEAR}"
                + rf"|(?:{_DAY}\.{_MON}|{_MON}\.{_DAY})\.{_YEAR}"
                + rf"|(?:{_DAY}-{_MON}|{_MON}-{_DAY})-{_YEAR}){_TIME}"
                + _NUM_AFTER
            ),
            0.9,
        ),
        RegexRule(
            "numeric-2y",
            re.compile(
                _NUM_BEFORE + rf"(?P<phi>(?:{_DAY}/{_MON}|{_MON}/{_DAY})/\d{{2}})" + _NUM_AFTER
            ),
            0.6,
        ),
        RegexRule(
            "month-year",
            re.compile(_NUM_BEFORE + rf"(?P<phi>{_MON}/{_YEAR})" + _NUM_AFTER),
            0.5,
        ),
        # dd/mm without a year only behind a cue ("em 12/03", "on 3/12"): "10/10" alone is
        # as likely a pain score.
        RegexRule(
            "day-month-cue",
            re.compile(
                r"(?i:\b(?:em|dia|desde|at[ée]|data|on|since|until|dated?)\s*:?\s+)"
                + rf"(?P<phi>{_DAY}/{_MON}){_NUM_AFTER}"
            ),
            0.6,
        ),
        # 12 de março de 2023, 1º de jan. de 2023, 12 de março, março de 2023
        RegexRule(
            "pt-written",
            re.compile(
                rf"(?i:\b(?P<phi>(?:{_DAY}\s?[º°o]?\s+de\s+)?(?:{_PT_MONTHS}|(?:{_PT_ABBR})\.?)"
                rf"(?:\s+de\s+|\s*[/\-]\s*|\s+)(?:\d{{4}}|\d{{2}})"
                rf"|{_DAY}\s?[º°o]?\s+de\s+(?:{_PT_MONTHS}|(?:{_PT_ABBR})\.)))(?![\w])"
            ),
            0.85,
        ),
        # 12/mar/2023, 12-MAR-23, 12 mar 2023
        RegexRule(
            "day-abbr-year",
            re.compile(
                rf"(?i:\b(?P<phi>{_DAY}[\s/.\-](?:{_PT_ABBR}|feb|apr|may|aug|sep|oct|dec)[a-z]*\.?"
                r"[\s/.\-](?:\d{4}|\d{2}))\b)"
            ),
            0.8,
        ),
        # March 12, 2023 / Mar. 12th 2023 / March 12 / March 2023
        RegexRule(
            "en-month-first",
            re.compile(
                rf"\b(?P<phi>{_EN_MONTH}\s+(?:{_DAY}(?:st|nd|rd|th)?(?:,?\s+{_YEAR})?|{_YEAR}))"
                + r"(?![\w])"
            ),
            0.8,
        ),
        # 12 March 2023 / 12th of March, 2023 / 12 March
        RegexRule(
            "en-day-first",
            re.compile(
                rf"\b(?P<phi>{_DAY}(?:st|nd|rd|th)?\s+(?:of\s+)?{_EN_MONTH}(?:,?\s+{_YEAR})?)"
                + r"(?![\w])"
            ),
            0.8,
        ),
    ]
    return _recognizer(DATE, rules, name="MultiFormatDateRecognizer")


# --------------------------------------------------------------------------------------------
# Ages over 89 (HIPAA Safe Harbor: ages over 89 are aggregated into "90 or older")
# --------------------------------------------------------------------------------------------


def age_over_89_recognizer() -> RegexRecognizer:
    """An age of 90 or more written in the text ("93 year-old", "92 anos", "idade: 95")."""
    age = r"(?P<phi>9\d|1[01]\d)"
    rules = [
        RegexRule(
            "age-unit",
            re.compile(
                r"(?<![\d.,])"
                + age
                + r"(?:\s|-)*(?i:years?|yrs?|y/?o\b|y\.o\.|anos?|a\b)(?:[\s\-]old)?"
            ),
            0.9,
        ),
        RegexRule(
            "age-cue",
            re.compile(r"(?i:\b(?:aged?|idade(?:\s+de)?|com)\s*:?\s*)" + age + r"(?![\d.,]\d|\d)"),
            0.7,
        ),
    ]
    return _recognizer(AGE, rules, name="AgeOver89Recognizer")


# --------------------------------------------------------------------------------------------
# Street addresses
# --------------------------------------------------------------------------------------------

_CAP = r"[A-ZÀ-ÖØ-Þ]"
_WORD_CHARS = r"[A-Za-zÀ-ÖØ-öø-ÿ'’\-]"
_PT_STREET = (
    r"(?:Rua|R\.|Avenida|Av\.?|Alameda|Al\.|Travessa|Trav\.|Tv\.|Praça|Pça\.?|Estrada|Estr\.|"
    r"Rodovia|Rod\.|Largo|Lgo\.|Ladeira|Viela|Beco|Servidão|Quadra|Qd\.|Setor|Conjunto)"
)
_PT_CONNECT = r"(?:d[aeo]s?|e|del|di)"
_PT_NAME_WORD = rf"(?:{_CAP}{_WORD_CHARS}*\.?|\d{{1,2}}|[IVXLC]+)"
_PT_COMPLEMENT = (
    r"(?:[ \t]*[,\-–]?[ \t]*(?i:ap(?:to|t)?\.?|apartamento|casa|bloco|bl\.?|sala|cj\.?|conj\.?|"
    r"lote|lt\.?|quadra|qd\.?|andar|fundos|km)[ \t]*[\w\-]*)"
)
_EN_SUFFIX = (
    r"(?i:street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|dr|court|ct|way|place|pl|"
    r"terrace|ter|circle|cir|highway|hwy|parkway|pkwy|square|sq|trail|trl|landing|fork|dam|"
    r"viaduct|manor|common|underpass|ville|trace|branch|rapid|rapids|frontage\s+road|crossing|"
    r"xing|ridge|run|path|pike|loop|alley|aly|row|walk|heights|hts|hill|hills|point|pt|park|"
    r"plaza|plz|grove|grv|glen|gardens|estates|meadow|meadows|valley|view|village|crescent|"
    r"cres|route|rte|turnpike|expressway|expy|freeway|fwy|bypass|causeway|mall|pass|port|"
    r"harbor|station|summit|shoal|shore|shores|spring|springs|stream|track|tunnel|union|vista|"
    r"well|wells|bridge|brook|burg|camp|canyon|cape|center|ctr|club|corner|corners|cove|creek|"
    r"crest|dale|divide|extension|falls|ferry|field|fields|flat|flats|ford|forest|forge|"
    r"fort|freeway|garden|gateway|green|haven|hollow|inlet|island|isle|junction|key|knoll|"
    r"lake|lakes|light|lock|lodge|mill|mills|mission|motorway|mount|mountain|neck|orchard|"
    r"oval|overpass|pine|pines|plain|plains|port|prairie|radial|ranch|rest|river|shoals|"
    r"skyway|spur|stravenue|summit|throughway|trafficway|wall|wharf)"
)
_STATES = _words(
    """
    AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE
    NV NH NJ NM NY NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY PR
    """
)
_BR_UF = _words(
    """
    AC AL AP AM BA CE DF ES GO MA MT MS MG PA PB PR PE PI RJ RN RS RO RR SC SP SE TO
    """
)


def address_recognizer() -> RegexRecognizer:
    """Street addresses: Brazilian (Rua/Av./Travessa ... nº, complemento, bairro, cidade - UF)
    and US ("633 Abernathy Landing Unit 4, Emporia, KS 66801")."""
    pt_name = rf"(?:{_PT_CONNECT}[ \t]+)?{_PT_NAME_WORD}(?:[ \t]+(?:{_PT_CONNECT}[ \t]+)?{_PT_NAME_WORD}){{0,6}}"
    pt_number = r"(?:[ \t]*,?[ \t]*(?i:n[º°o]\.?|n\.|número|num\.)?[ \t]*\d{1,5}[A-Za-z]?\b|[ \t]*,?[ \t]*(?i:s/?n)\b)"
    place = rf"{_CAP}{_WORD_CHARS}+(?:[ \t]+(?:{_PT_CONNECT}[ \t]+)?{_CAP}{_WORD_CHARS}+){{0,3}}"
    uf = "|".join(_BR_UF)
    pt_tail = rf"(?:[ \t]*[,\-–][ \t]*(?:(?i:bairro)[ \t]+)?{place}){{0,2}}(?:[ \t]*[-/,][ \t]*(?:{uf})\b)?"
    pt = re.compile(
        rf"\b(?P<phi>{_PT_STREET}[ \t]+{pt_name}(?:{pt_number}{_PT_COMPLEMENT}*{pt_tail})?)"
    )
    states = "|".join(_STATES)
    en = re.compile(
        r"(?<![\w.\-/])(?P<phi>\d{1,6}[A-Za-z]?[ \t]+(?:[NSEW]\.?[ \t]+)?"
        rf"(?:{_CAP}[\w'’.\-]*[ \t]+){{1,4}}{_EN_SUFFIX}\.?"
        r"(?:[ \t]*,?[ \t]*(?i:unit|suite|ste\.?|apt\.?|apartment|#)[ \t]*[\w\-]+)?"
        rf"(?:[ \t]*,[ \t]*{_CAP}[A-Za-z]+(?:[ \t]+{_CAP}[A-Za-z]+){{0,2}},?[ \t]+(?:{states})"
        r"(?:[ \t]+\d{5}(?:-\d{4})?)?)?)(?![\w])"
    )
    city_state_zip = re.compile(
        rf"\b(?P<phi>{_CAP}[A-Za-z]+(?:[ \t]+{_CAP}[A-Za-z]+){{0,2}},[ \t]+(?:{states})[ \t]+\d{{5}}(?:-\d{{4}})?)(?![\d\-])"
    )

    # "Endereço: ..." / "Address: ...": everything up to the end of the line, a field that
    # follows (CEP, Tel, e-mail) or the start of a new sentence.
    field = re.compile(
        r"(?i:\b(?:endere[çc]o(?:\s+residencial)?|address|resid[êe]ncia|domic[íi]lio|"
        r"mora\s+(?:na|no|em)|reside\s+(?:na|no|em))\s*:?[ \t]*)"
        r"(?P<phi>[^\n;]{4,160}?)"
        r"(?=[ \t]*(?:[;\n]|$|[,.]?[ \t]*(?i:CEP|tel|fone|telefone|e-?mail|cel)\b|"
        rf"\.[ \t]+{_CAP}[a-zà-öø-ÿ]+[ \t]+[a-zà-öø-ÿ]|\.[ \t]*$))"
    )

    def cut_at_sentence_end(text: str, start: int, end: int) -> tuple[int, int]:
        # A period then a capital starts a new sentence unless the word before it is an
        # abbreviation ("R. Dr. Arnaldo", "12 Oak St., Springfield").
        for m in re.finditer(r"\.\s+[A-ZÀ-ÖØ-Þ]", text[start:end]):
            before = re.search(r"(\w+)$", text[start : start + m.start()])
            if before is None or len(before.group(1)) > 3 or before.group(1).isdigit():
                return start, start + m.start()
        return start, end

    def pt_score(span: str, m: re.Match[str], text: str) -> float | None:
        # "Rua das Flores" names a street; with a number it is an address. Either is kept
        # (a street plus a neighbourhood can identify a household), with different scores.
        return 0.85 if any(c.isdigit() for c in span) else 0.5

    return _recognizer(
        ADDRESS,
        [
            RegexRule("pt-street", pt, 0.85, pt_score),
            RegexRule("en-street", en, 0.8),
            RegexRule("city-state-zip", city_state_zip, 0.8),
            RegexRule("address-field", field, 0.8, adjust=cut_at_sentence_end),
        ],
        name="StreetAddressRecognizer",
    )


# --------------------------------------------------------------------------------------------
# Record numbers and other identifiers behind a cue
# --------------------------------------------------------------------------------------------


def record_id_recognizer() -> RegexRecognizer:
    """Medical record, chart, visit, insurance and licence numbers named by a cue."""
    cue = (
        r"(?i:\b(?:MRN|med(?:ical)?\s+rec(?:ord)?(?:\s+(?:number|num|no))?|"
        r"(?:hospital\s+)?record\s+(?:number|num|no)|chart\s+(?:number|num|no)|"
        r"patient\s+(?:id|number)|account\s+(?:number|num|no)|acct|encounter\s+(?:id|number)|"
        r"visit\s+(?:id|number)|insurance\s+(?:id|number|no)|member\s+id|policy\s+(?:number|no)|"
        r"passport(?:\s+(?:number|no))?|driver'?s\s+licen[cs]e(?:\s+(?:number|no))?|"
        r"licen[cs]e\s+(?:number|no)|NPI|DEA|prontu[áa]rio|registro(?:\s+hospitalar)?|"
        r"atendimento|matr[íi]cula|carteirinha|carteira\s+do\s+conv[êe]nio|"
        r"(?:id|c[óo]digo)\s+do\s+paciente|guia|senha\s+de\s+autoriza[çc][ãa]o|"
        r"CRM(?:[\-/ ]?[A-Z]{2})?|COREN(?:[\-/ ]?[A-Z]{2})?|CNPJ|PIS|PASEP|NIS|t[íi]tulo\s+de\s+eleitor|"
        r"CNH)\b)"
    )
    pattern = re.compile(
        cue
        + r"\.?[ \t]*(?i:n[º°o]\.?|#|no\.|number|num\.?)?[ \t]*[:#.]?[ \t]*"
        + r"(?P<phi>[A-Za-z0-9](?:[A-Za-z0-9]|[\-./](?=[A-Za-z0-9])){2,40})"
    )

    def has_digit(span: str, m: re.Match[str], text: str) -> float | None:
        return 0.85 if sum(c.isdigit() for c in span) >= 2 else None

    return _recognizer(
        ID, [RegexRule("record-cue", pattern, 0.85, has_digit)], name="RecordNumberRecognizer"
    )


def ssn_recognizer() -> RegexRecognizer:
    """US SSNs written ``ddd-dd-dddd`` (Presidio's recognizer drops the synthetic 999 range)."""
    pattern = re.compile(r"(?<![\d\-])(?P<phi>\d{3}-\d{2}-\d{4})(?![\d\-])")
    cue = re.compile(
        r"(?i:\bSSN|social\s+security(?:\s+(?:number|no))?)\.?\s*[:#]?\s*(?P<phi>\d{9})\b"
    )
    return _recognizer(
        SSN, [RegexRule("ssn", pattern, 0.6), RegexRule("ssn-cue", cue, 0.9)], name="SsnRecognizer"
    )


# --------------------------------------------------------------------------------------------
# Names behind a cue
# --------------------------------------------------------------------------------------------

# Capitalised words that follow a cue but are not names ("Paciente Feminina", "Patient Has").
NAME_STOPWORDS = frozenset(
    _words(
        """
        a o os as e em no na um uma com sem de do da the an and of in on at to for with
        is was has had who presents presented reports denies admitted patient paciente
        pt nome name sexo sex masculino feminino male female homem mulher idade age anos
        years refere nega relata apresenta comparece deu chega procura queixa history
        historia história hpi chief complaint mr mrs ms dr dra sr sra none nenhum n/a na
        desconhecido unknown identificado não nao responsável responsavel médico medico
        doctor date data admission alta discharge cpf rg cns diagnóstico diagnostico
        diagnosis cid hospital clinic clínica clinica unidade ubs ups celular telefone
        tel fone phone cell mobile e-mail email endereço endereco address cep contato
        contact sim não yes no sem nega único unico
        """
    )
)
_NAME_PARTICLES = frozenset(
    _words(
        """
        da de do das dos e van von der den del della di du la le y
        """
    )
)
_NAME_WORD = rf"(?:{_CAP}(?:[a-zà-öø-ÿ'’]+(?:-{_CAP}?[a-zà-öø-ÿ'’]+)?|[A-ZÀ-ÖØ-Þ'’]+)\d*|{_CAP}\.)"
_NAME_SEQ = (
    # One space between words: a run of spaces or a tab separates fields ("Public   SSN").
    rf"{_NAME_WORD}(?:[ ](?:(?:{'|'.join(sorted(_NAME_PARTICLES))})[ ])?{_NAME_WORD}){{0,5}}"
)

_HONORIFIC = (
    r"(?:(?:Sr|Sra|Srta|Dr|Dra|Mr|Mrs|Ms|Mx|Prof|Profa|Enf|Enfa)\.?|Dona|Seu|Senhor|Senhora|"
    r"Doutor|Doutora|Miss|Doctor|Mister)"
)
_FIELD_CUE = (
    r"(?i:(?:nome(?:\s+(?:completo|social))?(?:\s+d[oa]\s+(?:paciente|m[ãa]e|pai|respons[áa]vel|"
    r"acompanhante|m[ée]dic[oa]))?|(?:patient(?:'s)?|full|first|last|family|given|mother'?s?|"
    r"father'?s?|maiden)\s+name|name|patient|paciente|pt|usu[áa]ri[oa]|respons[áa]vel|"
    r"acompanhante|m[ãa]e|pai|filh[oa]|espos[oa]|marido|c[ôo]njuge|contato(?:\s+de\s+emerg[êe]ncia)?|"
    r"emergency\s+contact|next\s+of\s+kin|m[ée]dic[oa](?:\s+respons[áa]vel|\s+assistente)?|"
    r"physician|attending|provider|doctor|nurse|enfermeir[oa]|assinado\s+por|signed\s+by|"
    r"atendido\s+por|encaminhado\s+por|referred\s+by|informante|informant))"
)


def _name_validator(score: float) -> Validator:
    def validate(span: str, m: re.Match[str], text: str) -> float | None:
        first = span.split()[0].rstrip(".").lower() if span.split() else ""
        return None if not first or first in NAME_STOPWORDS else score

    return validate


def name_recognizer() -> RegexRecognizer:
    """Person names after a field label ("Nome:", "Paciente:"), an honorific ("Sra.", "Dr."), a
    kinship word ("a esposa, Camila") or a self-introduction ("aqui é a fernanda"). A name in
    apposition with an age ("Jefferson Souza, 42 anos,") is not taken: "Diabetes Mellitus, 10
    anos," reads the same.

    Without a statistical NER model this finds only names that sit behind such cues; the
    :class:`~feddx.data.deid.Deidentifier` then propagates every name it found to the rest of
    the same text, and redacts the caller's ``extra_identifiers`` wherever they occur.
    """
    field = re.compile(rf"(?P<cue>{_FIELD_CUE}\s*:[ \t]*)(?P<phi>{_NAME_SEQ})")
    honorific = re.compile(rf"(?<![\w.])(?:{_HONORIFIC})[ \t]+(?P<phi>{_NAME_SEQ})")
    patient = re.compile(
        r"(?<![\w.])(?i:paciente|patient|o\s+paciente|a\s+paciente)[ \t]+"
        rf"(?P<phi>{_NAME_SEQ})"
    )
    # "pelo filho João", "a esposa, Camila,", "Mãe (Daiane)": kinship words are followed by
    # names often enough, directly, after a comma or in parentheses.
    kin = re.compile(
        r"(?<![\w])(?i:filh[oa]|espos[oa]|marido|irm[ãa]o?|net[oa]|m[ãa]e|pai|sobrinh[oa]|"
        r"cunhad[oa]|genro|nora|t[ií]o|t[ií]a|av[óô]|companheir[oa]|cuidador[a]?|vizinh[oa]|"
        r"namorad[oa]|entead[oa]|bisnet[oa]|beb[êe]|son|daughter|wife|husband|brother|sister|"
        r"mother|father|grandson|granddaughter|caregiver|neighbou?r)"
        r"(?:[ \t]+|,[ \t]+|[ \t]*\([ \t]*)"
        rf"(?P<phi>{_NAME_SEQ})"
    )
    # "aqui é a fernanda", "me chamo joão", "refere se chamar Edvaldo": a self-introduction
    # names its speaker, in a message often in lower case (one word: the given name).
    intro = re.compile(
        r"(?<![\w])(?i:aqui\s+(?:é|e)\s+(?:o|a)|me\s+chamo|meu\s+nome\s+(?:é|e)|"
        r"se\s+chamar|chamad[oa]\s+de|my\s+name\s+is)[ \t]+"
        r"(?P<phi>[A-Za-zÀ-ÖØ-öø-ÿ][a-zà-öø-ÿ'’]+)(?![\w])"
    )
    return _recognizer(
        NAME,
        [
            RegexRule("kin", kin, 0.6, _name_validator(0.6), trim_name_span),
            RegexRule("intro", intro, 0.6, _name_validator(0.6), trim_name_span),
            RegexRule("field", field, 0.85, _name_validator(0.85), trim_name_span),
            RegexRule("honorific", honorific, 0.8, _name_validator(0.8), trim_name_span),
            RegexRule("patient", patient, 0.6, _name_validator(0.6), trim_name_span),
        ],
        name="CuedNameRecognizer",
    )


def trim_name_span(text: str, start: int, end: int) -> tuple[int, int]:
    """Drop trailing stop-words/particles and a final period from a name span."""
    span = text[start:end]
    words = list(re.finditer(r"\S+", span))
    while words and words[-1].group().rstrip(".").lower() in NAME_STOPWORDS | _NAME_PARTICLES:
        words.pop()
    if not words:
        return start, start
    last = words[-1]
    new_end = start + last.end()
    # Keep "Jr." style abbreviations, drop a sentence-final period after a full word.
    if text[new_end - 1] == "." and len(last.group()) > 4:
        new_end -= 1
    return start, new_end


def name_tokens(name: str) -> list[str]:
    """The tokens of a name worth matching on their own (no particles, no 1-letter initials)."""
    out = []
    for tok in re.split(r"[\s,]+", name):
        tok = tok.strip(".'’\"()")
        if len(tok) < 2 or tok.lower() in _NAME_PARTICLES or tok.lower() in NAME_STOPWORDS:
            continue
        out.append(tok)
    return out


# --------------------------------------------------------------------------------------------
# Names proposed by a statistical NER model
# --------------------------------------------------------------------------------------------

# Words a model often folds into a PERSON span that are cues, not names ("Paciente Ana",
# "Dona Graça", "Filha Rosa"): dropped from either end of the span.
_MODEL_NAME_EDGE_WORDS = NAME_STOPWORDS | frozenset(
    _words(
        """
        sr sra srta dr dra mr mrs ms mx prof profa enf enfa dona seu senhor senhora doutor
        doutora miss doctor mister usuário usuária usuario usuaria filho filha esposo esposa
        marido irmão irmã irmao irma neto neta mãe mae pai tio tia avó avô sobrinho sobrinha
        son daughter wife husband brother sister mother father caregiver cuidador cuidadora
        acompanhante responsável informante
        """
    )
)
_MODEL_NAME_WORD = re.compile(rf"{_NAME_WORD}[,.;:]?")
_HEADING_LINE = re.compile(r"[ \t]*#")  # matched at a line start
_FOLLOWED_BY_NUMBER = re.compile(r"[ \t]*\d")
_AFTER_LABEL_WORD = re.compile(r"[ \t]+(?:d[aeo]s?|em|of|in)[ \t]+[a-zà-öø-ÿ\d]")


def _is_acronym(word: str) -> bool:
    letters = [c for c in word if c.isalpha()]
    return 0 < len(letters) <= 4 and all(c.isupper() for c in letters)


def model_name_spans(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """The name spans in a statistical model's PERSON span: one per line it covers (a name
    never spans lines; the model sometimes joins "João Dias\nJoão"), each trimmed by
    :func:`trim_model_name`."""
    out = []
    for m in re.finditer(r"[^\n]+", text[start:end]):
        piece = trim_model_name(text, start + m.start(), start + m.end())
        if piece is not None:
            out.append(piece)
    return out


def trim_model_name(text: str, start: int, end: int) -> tuple[int, int] | None:
    """A statistical model's PERSON span cut to its name words, or ``None`` to reject it.

    en_core_web_sm was trained on English news (OntoNotes): on clinical and Portuguese text it
    also labels cue words ("Paciente Ana"), lowercase phrases ("informa piora da"), headings
    ("# Social History") and measurement labels ("Glasgow 15", "Troponina 0,45", "TC de
    crânio") as persons. So:

    - cue words, lowercase words and words glued to the previous one ("mg/L.") are dropped
      from either end; what remains must be capitalised name words (initials and particles
      such as "da" allowed inside);
    - rejected: a span on a markdown heading line, a span followed by a number ("Escala de
      Braden 14"), an acronym alone ("ST", "SUS") or beside other words ("Cartão SUS"), a
      word of two letters alone, and a single word followed by "de/em/of/in" and a lowercase
      word or number ("Retorno em 30 dias": a label, not a name).

    A redaction placeholder (``[NAME]``) is never a name word, so text that was already
    de-identified stays as it is.
    """
    words = list(re.finditer(r"\S+", text[start:end]))

    def edge(m: re.Match[str]) -> bool:
        word = m.group().strip(".,;:()\"'")
        at = start + m.start()
        glued = at > 0 and not text[at - 1].isspace() and text[at - 1] not in "([\"'"
        return (
            not word
            or glued
            or word.lower() in _MODEL_NAME_EDGE_WORDS
            or word.lower() in _NAME_PARTICLES
            or not word[0].isupper()
        )

    while words and edge(words[0]):
        words.pop(0)
    while words and edge(words[-1]):
        words.pop()
    if not words:
        return None
    for m in words:
        word = m.group()
        if word.lower() not in _NAME_PARTICLES and _MODEL_NAME_WORD.fullmatch(word) is None:
            return None
    first, last = words[0], words[-1]
    span_start, span_end = start + first.start(), start + last.end()
    while span_end > span_start and text[span_end - 1] in ",;:":
        span_end -= 1
    # "Dr. Kalil." ends a sentence; "John Q." keeps its initial's period.
    if text[span_end - 1] == "." and len(last.group()) > 3:
        span_end -= 1
    line_start = text.rfind("\n", 0, span_start) + 1
    if _HEADING_LINE.match(text, line_start):
        return None
    names = [m.group().strip(".,;:") for m in words if m.group().lower() not in _NAME_PARTICLES]
    if any(_is_acronym(w) for w in names) and not all(w.isupper() for w in names):
        return None
    if _FOLLOWED_BY_NUMBER.match(text, span_end):
        return None
    if len(names) == 1:
        word = names[0]
        if sum(c.isalpha() for c in word) <= 2 or _is_acronym(word):
            return None
        if _AFTER_LABEL_WORD.match(text, span_end):
            return None
    return span_start, span_end


# --------------------------------------------------------------------------------------------
# Caller-supplied identifiers (e.g. the FHIR Patient's own names and numbers)
# --------------------------------------------------------------------------------------------

_ACCENTS: dict[str, str] = {
    "a": "aáàâãäå",
    "e": "eéèêë",
    "i": "iíìîï",
    "o": "oóòôõö",
    "u": "uúùûü",
    "c": "cç",
    "n": "nñ",
    "y": "yý",
}


def _strip_accents(s: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", s) if not unicodedata.combining(c))


def _accent_insensitive(s: str) -> str:
    parts = []
    for ch in s:
        base = _strip_accents(ch).lower()
        if base in _ACCENTS:
            variants = _ACCENTS[base].upper() if ch.isupper() else _ACCENTS[base]
            parts.append(f"[{variants}]")
        elif ch.isspace():
            parts.append(r"\s+")
        else:
            parts.append(re.escape(ch))
    return "".join(parts)


_STREET_START = re.compile(rf"^{_PT_STREET}\s")
_PHONE_CHARS = re.compile(r"^\+?[\d\s().\-]{8,20}$")


def classify_identifier(value: str) -> str:
    """The entity type of a caller-supplied identifier, guessed from its shape.

    ``a@b`` is an EMAIL; a string that starts like a street ("Rua ...", "633 Abernathy
    Landing") an ADDRESS; a valid CPF/CNS a CPF/CNS; 8-13 digits written like a phone a PHONE;
    mostly digits an ID; anything else a NAME (matched token by token too).
    """
    v = value.strip()
    if "@" in v:
        return EMAIL
    digits = sum(c.isdigit() for c in v)
    letters = sum(c.isalpha() for c in v)
    if _STREET_START.match(v) or (letters and digits and re.match(r"^\d+[A-Za-z]?\s+\w", v)):
        return ADDRESS
    if letters == 0 and is_valid_cpf(v):
        return CPF
    if letters == 0 and is_valid_cns(v):
        return CNS
    if letters == 0 and _PHONE_CHARS.match(v) and 8 <= digits <= 13:
        return PHONE
    if digits and (digits >= letters or letters <= 2):
        return ID
    if digits and "," in v:
        return ADDRESS
    return NAME


_TOKEN = re.compile(r"\w+(?:['’\-]\w+)*")


def _fold(word: str) -> str:
    return _strip_accents(word).casefold()


@dataclass(frozen=True)
class IdentifierMatch:
    """One occurrence of a known identifier."""

    start: int
    end: int
    entity: str


class IdentifierMatcher:
    """Finds known identifiers of one patient (e.g. the FHIR Patient's names and numbers).

    Names match token by token (a note may say "Maria" for "Maria da Silva Souza"),
    case- and accent-insensitively, on word boundaries: the text is split into words once
    and each word is looked up in a set, so the cost does not grow with the number of names.
    Numbers match with or without separators ("123.456.789-09" finds "12345678909"; a phone
    also without its country and area code); anything else (an e-mail, an address line)
    matches literally, case- and accent-insensitively.

    With ``ignore_case=False`` (names the de-identifier found itself: "Dias" the surname must
    not hit "há 3 dias") a name token matches only where the text capitalises it.
    """

    def __init__(self, identifiers: Sequence[str], *, ignore_case: bool = True) -> None:
        self.ignore_case = ignore_case
        self.name_tokens: frozenset[str] = frozenset()
        patterns: dict[str, str] = {}
        tokens: set[str] = set()
        for raw in identifiers:
            value = " ".join(raw.split())
            if len(value) < 2:
                continue
            kind = classify_identifier(value)
            d = digits_of(value)
            if kind == NAME:
                tokens.update(_fold(t) for t in name_tokens(value))
            elif (
                kind in (ID, CPF, CNS, PHONE)
                and len(d) >= 4
                and not any(c.isalpha() for c in value)
            ):
                patterns[r"[\s.\-/()]{0,2}".join(d)] = kind
                if kind == PHONE and len(d) >= 10 and not value.lstrip().startswith("+1"):
                    local = d[-9:] if len(d) >= 11 and d[-9] == "9" else d[-8:]
                    patterns[r"[\s.\-/()]{0,2}".join(local)] = kind
            else:
                patterns[_accent_insensitive(value)] = kind
        self.name_tokens = frozenset(tokens)
        self.patterns = [
            (kind, re.compile(rf"(?<![\w]){body}(?![\w])", re.IGNORECASE))
            for body, kind in patterns.items()
        ]

    def matches(self, text: str) -> list[IdentifierMatch]:
        out: list[IdentifierMatch] = []
        if self.name_tokens:
            for m in _TOKEN.finditer(text):
                word = m.group()
                if _fold(word) in self.name_tokens and (self.ignore_case or word[0].isupper()):
                    out.append(IdentifierMatch(m.start(), m.end(), NAME))
        for kind, pattern in self.patterns:
            out.extend(IdentifierMatch(m.start(), m.end(), kind) for m in pattern.finditer(text))
        return out


def all_recognizers() -> list[RegexRecognizer]:
    """Every custom recognizer of this module, ready to add to a Presidio registry."""
    return [
        cpf_recognizer(),
        cns_recognizer(),
        rg_recognizer(),
        cep_recognizer(),
        phone_recognizer(),
        date_recognizer(),
        age_over_89_recognizer(),
        address_recognizer(),
        record_id_recognizer(),
        ssn_recognizer(),
        name_recognizer(),
    ]
