"""The one place a case becomes a prompt and a label becomes an answer.

Training, scoring, evaluation, the Flower clients and the service all call these functions, so
a model is always asked the same question in the same words. Prompts are compact on purpose:
these models are small and CPU time grows with every token, so findings are written tersely
and pieces are added in priority order (demographics, findings, note, history) until the
token budget is spent.

A case written in Portuguese (``Case.language`` "pt", "pt-BR", ...) is asked in Portuguese: the
system prompt, the section words, negation and demographics (:data:`PROMPT_WORDS`). The answer,
labels and ICD-10 codes stay the same in every language, so one candidate list and one adapter
serve both. Every other case (``language`` None or another language) keeps the English words
every adapter so far was trained on.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from feddx.data.schema import Case, Finding, Label

SYSTEM_PROMPT = "You are a clinical decision-support model. Reply with the most likely diagnosis."
DEFAULT_MAX_PROMPT_TOKENS = 320
_SEP = "; "


@dataclass(frozen=True)
class PromptWords:
    """The words of one prompt language; ``age`` formats the age (a number) and ``sex`` names
    each :data:`~feddx.data.schema.Sex` shown."""

    system: str
    patient: str
    age: str
    sex: dict[str, str]
    findings: str
    note: str
    prior_conditions: str
    medications: str
    allergies: str
    one_item: tuple[str, str, str]
    earlier_visit: str
    undated: str
    before: str
    spans: tuple[str, str, str]
    visit: str
    negation: str
    examples: str
    this_patient: str
    answer_cue: str


PROMPT_WORDS: dict[str, PromptWords] = {
    "en": PromptWords(
        system=SYSTEM_PROMPT,
        patient="Patient",
        age="{age}y",
        sex={"female": "female", "male": "male", "other": "other"},
        findings="Findings",
        note="Note",
        prior_conditions="Prior conditions",
        medications="Medications",
        allergies="Allergies",
        one_item=("Prior condition", "Medication", "Allergy"),
        earlier_visit="Earlier visit",
        undated="undated",
        before="{span} before",
        spans=("d", "mo", "y"),
        visit="visit",
        negation="no",
        examples="Similar past cases:",
        this_patient="This patient:",
        answer_cue="Diagnosis: ",
    ),
    "pt": PromptWords(
        system="Você é um modelo de apoio à decisão clínica. Responda com o diagnóstico mais "
        "provável.",
        patient="Paciente",
        age="{age} anos",
        sex={"female": "sexo feminino", "male": "sexo masculino", "other": "outro sexo"},
        findings="Achados",
        note="Relato",
        prior_conditions="Condições prévias",
        medications="Medicamentos",
        allergies="Alergias",
        one_item=("Condição prévia", "Medicamento", "Alergia"),
        earlier_visit="Consulta anterior",
        undated="sem data",
        before="{span} antes",
        spans=("d", "m", "a"),
        visit="consulta",
        negation="sem",
        examples="Casos anteriores semelhantes:",
        this_patient="Este paciente:",
        answer_cue="Diagnóstico: ",
    ),
}
"""Prompt words by language (the primary subtag of ``Case.language``)."""


def prompt_words(language: str | None) -> PromptWords:
    """The words for ``language`` (a BCP 47 tag): Portuguese for "pt*", else English."""
    primary = (language or "en").split("-")[0].lower()
    return PROMPT_WORDS.get(primary, PROMPT_WORDS["en"])


@dataclass(frozen=True)
class RenderedPrompt:
    """A chat prompt ready for the model: the templated text and its token ids."""

    text: str
    input_ids: list[int]
    truncated: bool


@dataclass(frozen=True)
class Example:
    """A solved past case shown before the question (few-shot context): its compact text (what
    :func:`case_summary` writes: demographics and findings, never identifiers) and its diagnosis."""

    text: str
    diagnosis: str


@dataclass(frozen=True)
class PromptContext:
    """What an individual-level caller adds to a case's prompt (see :func:`render_prompt`):
    ``history`` lines in priority order (``None``: the default order) and few-shot ``examples``."""

    history: tuple[str, ...] | None = None
    examples: tuple[Example, ...] = ()


def render_finding(f: Finding, words: PromptWords = PROMPT_WORDS["en"]) -> str:
    """A finding as a short phrase ("no fever", "chest pain: burning", "BP 145 mmHg"); the
    negation word is ``words``' ("sem febre")."""
    if f.negated or f.value is False:
        return f"{words.negation} {f.name}"
    if f.value is None or f.value is True:
        return f.name
    value = f"{f.value:g}" if isinstance(f.value, float) else str(f.value)
    return f"{f.name}: {value}{' ' + f.unit if f.unit else ''}"


def _demographics(case: Case) -> str:
    w = prompt_words(case.language)
    parts = []
    if case.age is not None:
        parts.append(w.age.format(age=f"{case.age:g}"))
    if case.sex and case.sex != "unknown":
        parts.append(w.sex[case.sex])
    sep = " " if w is PROMPT_WORDS["en"] else ", "
    return f"{w.patient}: " + sep.join(parts) + "." if parts else ""


def history_pieces(case: Case) -> list[str]:
    """The default history lines of ``case``, in the order the renderer keeps them under a
    budget (most relevant first): chronic (prior) conditions, active medications, allergies,
    then earlier encounters most recent first, each dated relative to this case."""
    return _history_pieces(case)


def relative_date(date: dt.date | None, today: dt.date | None, words: PromptWords) -> str:
    """When an earlier encounter was, relative to the case ("3mo before", "2y before"):
    what matters clinically, and no calendar date (an identifier) in the prompt. Falls back
    to the ISO date when the case itself is undated, and to ``words.undated`` without a date.
    """
    if date is None:
        return words.undated
    if today is None or today < date:
        return date.isoformat()
    days = (today - date).days
    d, mo, y = words.spans
    if days < 60:
        span = f"{days}{d}"
    elif days < 730:
        span = f"{round(days / 30.44)}{mo}"
    else:
        span = f"{days // 365}{y}"
    return words.before.format(span=span)


def _encounters_recent_first(case: Case) -> list[int]:
    # Undated encounters keep the schema's chronological tuple order, reversed.
    e = case.history.encounters
    return sorted(
        range(len(e)),
        key=lambda i: (e[i].date.isoformat() if e[i].date else "", i),  # type: ignore[union-attr]
        reverse=True,
    )


def _encounter_line(case: Case, i: int, words: PromptWords) -> str:
    e = case.history.encounters[i]
    what = ", ".join(e.diagnoses) or e.reason or e.kind or words.visit
    return f"{words.earlier_visit} {relative_date(e.date, case.date, words)}: {what}."


def _history_pieces(case: Case) -> list[str]:
    h, w = case.history, prompt_words(case.language)
    pieces: list[str] = []
    if h.prior_conditions:
        pieces.append(f"{w.prior_conditions}: " + ", ".join(h.prior_conditions) + ".")
    if h.medications:
        pieces.append(f"{w.medications}: " + ", ".join(h.medications) + ".")
    if h.allergies:
        pieces.append(f"{w.allergies}: " + ", ".join(h.allergies) + ".")
    # Most recent encounters first: they are the most informative and survive truncation.
    pieces.extend(_encounter_line(case, i, w) for i in _encounters_recent_first(case))
    return pieces


def history_items(case: Case) -> list[tuple[str, int]]:
    """Every history item of ``case`` as its own prompt line with a recency rank (0 = most
    recent; undated conditions, medications and allergies rank after the encounters, in
    schema order): the units :mod:`feddx.personalize.history` ranks by relevance, in the
    same words and relative dates as :func:`history_pieces`."""
    h, w = case.history, prompt_words(case.language)
    items = [
        (_encounter_line(case, i, w), rank) for rank, i in enumerate(_encounters_recent_first(case))
    ]
    title, medication, allergy = w.one_item
    for name, values in (
        (title, h.prior_conditions),
        (medication, h.medications),
        (allergy, h.allergies),
    ):
        for v in values:
            items.append((f"{name}: {v}.", len(items)))
    return items


def case_summary(case: Case, max_findings: int | None = None) -> str:
    """A one-line, identifier-free summary of a case (demographics and the first findings) as a
    few-shot example or a retrieval text: what the prompt itself would show of it."""
    findings = case.findings if max_findings is None else case.findings[:max_findings]
    w = prompt_words(case.language)
    parts = [_demographics(case).removeprefix(f"{w.patient}: ").removesuffix(".")]
    if findings:
        parts.append(_SEP.join(render_finding(f, w) for f in findings))
    elif case.text:
        parts.append(" ".join(case.text.split()[:48]))
    return "; ".join(p for p in parts if p)


def _examples_block(examples: Sequence[Example], words: PromptWords) -> str:
    if not examples:
        return ""
    rows = [f"{i}. {e.text} -> {e.diagnosis}" for i, e in enumerate(examples, start=1)]
    return f"{words.examples}\n" + "\n".join(rows) + f"\n{words.this_patient}"


def _user_message(
    case: Case,
    n_findings: int,
    text: str | None,
    n_history: int,
    history: Sequence[str] | None = None,
    examples: Sequence[Example] = (),
) -> str:
    w = prompt_words(case.language)
    lines = [_examples_block(examples, w), _demographics(case)]
    if n_findings:
        shown = _SEP.join(render_finding(f, w) for f in case.findings[:n_findings])
        lines.append(f"{w.findings}: {shown}.")
    if text:
        lines.append(f"{w.note}: {text}")
    lines.extend((_history_pieces(case) if history is None else list(history))[:n_history])
    return "\n".join(x for x in lines if x)


def case_to_text(case: Case) -> str:
    """The full, untruncated user message for a case (for baselines and debugging)."""
    return _user_message(case, len(case.findings), case.text, len(_history_pieces(case)))


def _template(tokenizer: Any, user: str, words: PromptWords = PROMPT_WORDS["en"]) -> str:
    messages = [{"role": "system", "content": words.system}, {"role": "user", "content": user}]
    if getattr(tokenizer, "chat_template", None):
        return str(
            tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        )
    # Base models without a chat template get a plain, stable layout.
    return f"{words.system}\n\n{user}\n\n{words.answer_cue}"


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def render_prompt(
    case: Case,
    tokenizer: Any,
    max_tokens: int = DEFAULT_MAX_PROMPT_TOKENS,
    *,
    history: Sequence[str] | None = None,
    examples: Sequence[Example] = (),
) -> RenderedPrompt:
    """Render ``case`` as a chat prompt of at most ``max_tokens`` tokens.

    Pieces are dropped from the end of the priority order (few-shot examples, oldest history,
    then the last findings) and the free-text note is cut at a token boundary, so the most
    important information always fits. Raises :class:`ValueError` if even the bare template is
    over budget.

    ``history`` replaces the default history lines (:func:`history_pieces`) with lines in the
    caller's priority order (e.g. :mod:`feddx.personalize.history` ranks them by relevance);
    ``examples`` are solved past cases shown before the patient, the first ones kept under the
    budget. Both default to nothing new, so every existing adapter sees the prompts it was
    trained on.
    """
    pieces = _history_pieces(case) if history is None else list(history)
    examples = list(examples)

    def message(nf: int, tx: str | None, nh: int, ne: int = 0) -> str:
        return _user_message(case, nf, tx, nh, pieces, examples[:ne])

    language_words = prompt_words(case.language)

    def template(user: str) -> str:
        return _template(tokenizer, user, language_words)

    n_find, n_hist, n_ex = len(case.findings), len(pieces), len(examples)
    text = case.text
    full = template(message(n_find, text, n_hist, n_ex))
    ids = _ids(tokenizer, full)
    if len(ids) <= max_tokens:
        return RenderedPrompt(full, ids, truncated=False)

    base = len(_ids(tokenizer, template(message(0, None, 0))))
    if base > max_tokens:
        raise ValueError(f"max_tokens={max_tokens} is below the bare prompt size ({base} tokens)")
    # Grow greedily in priority order, measuring the real templated length each time.
    n_hist = n_ex = 0
    text = None

    def fits(nf: int, tx: str | None, nh: int, ne: int = 0) -> bool:
        return len(_ids(tokenizer, template(message(nf, tx, nh, ne)))) <= max_tokens

    lo, hi = 0, len(case.findings)
    while lo < hi:  # largest number of findings that fits
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid, None, 0) else (lo, mid - 1)
    n_find = lo
    if case.text:
        words = case.text.split()
        lo, hi = 0, len(words)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(n_find, " ".join(words[:mid]), 0) else (lo, mid - 1)
        text = " ".join(words[:lo]) or None
    while n_hist < len(pieces) and fits(n_find, text, n_hist + 1):
        n_hist += 1
    while n_ex < len(examples) and fits(n_find, text, n_hist, n_ex + 1):
        n_ex += 1
    final = template(message(n_find, text, n_hist, n_ex))
    return RenderedPrompt(final, _ids(tokenizer, final), truncated=True)


def render_answer(label: Label | str) -> str:
    """The answer text the model is trained to produce and scored on: the diagnosis name."""
    return label.diagnosis if isinstance(label, Label) else label


def answer_ids(tokenizer: Any, label: Label | str) -> list[int]:
    """Token ids of the answer, closed by the end-of-turn token so that "Angina" and
    "Angina pectoris" are different, complete answers."""
    ids = _ids(tokenizer, render_answer(label))
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    return ids
