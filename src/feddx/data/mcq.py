"""Medical multiple-choice questions (MedQA, MedMCQA, PubMedQA) read from JSONL.

These are the benchmarks the federated-LLM community reports (Flower's FlowerTune medical
leaderboard averages PubMedQA, MedMCQA, MedQA and CareQA), so feddx reads their published
formats as they are:

- MedQA: ``question``, ``options`` ``{"A": ..., "D": ...}``, ``answer_idx`` (the key; else
  ``answer``, the right option's text), ``meta_info`` ("step1", "step2&3");
- MedMCQA: ``question``, ``opa``..``opd`` and ``cop`` (the right option's index 0-3), or
  ``options``/``answer_idx`` as above; ``subject_name``;
- PubMedQA: ``question`` (or ``QUESTION``), ``context`` (or ``CONTEXTS``: a string or a list of
  passages) and ``answer`` (or ``final_decision``) among yes/no/maybe, with no options.

A question becomes an :class:`MCQuestion`; a line that cannot be one is skipped and recorded in
the :class:`~feddx.data.report.LoadReport` with its file, line and reason (never its text). The
``mcq`` data source also offers each question as a :class:`~feddx.data.schema.Case` (the
question and its lettered options as the text, the right key as the label) so that the data
commands can count and split it; the MCQ evaluation (:mod:`feddx.evaluate.mcq`) works on the
questions themselves, each with its own options.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from feddx.data.report import LoadReport
from feddx.data.schema import Case, Label
from feddx.data.sources import register_source
from feddx.errors import DataError

SOURCE = "mcq"
YES_NO_MAYBE = ("yes", "no", "maybe")
Style = Literal["medqa", "medmcqa", "pubmedqa"]


@dataclass(frozen=True)
class MCQuestion:
    """One question with its options (key -> text, in the file's order) and the right key.

    ``style`` says which benchmark's layout the line had (it picks FlowerTune's instruction);
    a PubMedQA question's options are ``yes``/``no``/``maybe``, each its own key. ``subject``
    is MedMCQA's ``subject_name`` (or a ``subject`` field), else MedQA's ``meta_info``.
    """

    question_id: str
    question: str
    options: Mapping[str, str]
    answer: str
    style: Style
    context: str | None = None
    subject: str | None = None

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.options)


class _Malformed(ValueError):
    """A line that is JSON but not a question: ``args[0]`` is the short reason."""


def _text(row: Mapping[str, Any], *names: str) -> str | None:
    for name in names:
        value = row.get(name)
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            value = "\n".join(value)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _letter_options(row: Mapping[str, Any]) -> dict[str, str] | None:
    options = row.get("options")
    if options is None and all(f"op{c}" in row for c in "abcd"):
        options = {k: row[f"op{c}"] for k, c in zip("ABCD", "abcd", strict=True)}
    if options is None:
        return None
    if isinstance(options, list):  # bigbio: [{"key": "A", "value": ...}, ...]
        try:
            options = {o["key"]: o["value"] for o in options}
        except (TypeError, KeyError):
            raise _Malformed("options not key/value pairs") from None
    if not isinstance(options, dict):
        raise _Malformed("options not an object")
    if not all(isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in options.items()):
        raise _Malformed("blank or non-text option")
    out = {k.strip(): v.strip() for k, v in options.items()}
    if len(out) < 2:
        raise _Malformed("fewer than 2 options")
    if len(set(out.values())) < len(out):
        raise _Malformed("two options with the same text")
    return out


def _letter_answer(row: Mapping[str, Any], options: Mapping[str, str]) -> str:
    key = row.get("answer_idx")
    if key is None and isinstance(row.get("cop"), int) and 0 <= row["cop"] < len(options):
        key = list(options)[row["cop"]]
    if key is None and isinstance(row.get("answer"), str):
        key = next((k for k, v in options.items() if v == row["answer"].strip()), None)
    if not isinstance(key, str) or key.strip() not in options:
        raise _Malformed("answer not among the options", "answer_idx/cop/answer")
    return key.strip()


def parse_question(row: Any, question_id: str) -> MCQuestion:
    """The :class:`MCQuestion` of one decoded JSON line; :class:`ValueError` (short reason in
    ``args[0]``, the fields at fault in ``args[1]`` when known) if it is not one."""
    if not isinstance(row, dict):
        raise _Malformed("not a JSON object")
    question = _text(row, "question", "QUESTION")
    if question is None:
        raise _Malformed("missing question", "question")
    subject = _text(row, "subject", "subject_name", "meta_info")
    qid = str(row.get("id", row.get("realidx", question_id)))
    options = _letter_options(row)
    if options is None:  # PubMedQA: yes/no/maybe over a context
        answer = (_text(row, "answer", "final_decision") or "").lower()
        if answer not in YES_NO_MAYBE:
            raise _Malformed("no options and no yes/no/maybe answer", "options/answer")
        context = _text(row, "context", "CONTEXTS", "contexts")
        yn = {a: a for a in YES_NO_MAYBE}
        return MCQuestion(qid, question, yn, answer, "pubmedqa", context, subject)
    style: Style = "medmcqa" if "cop" in row or "subject_name" in row else "medqa"
    answer = _letter_answer(row, options)
    return MCQuestion(qid, question, options, answer, style, _text(row, "context"), subject)


def load_mcq(path: Path, report: LoadReport | None = None) -> Iterator[MCQuestion]:
    """Yield the questions of a JSONL file (or of every ``*.jsonl`` in a directory).

    Raises :class:`DataError` for a missing or unreadable file; a malformed line is skipped
    and recorded in ``report`` (file, line, reason, fields).
    """
    report = report if report is not None else LoadReport(SOURCE)
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    if not files:
        raise DataError(f"no .jsonl files in {path}")
    for file in files:
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read {file}: {getattr(e, 'strerror', None) or e}") from e
        for line_no, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                q = parse_question(json.loads(line), f"{file.stem}:{line_no}")
            except json.JSONDecodeError as e:
                report.skip(file.name, line_no, "invalid JSON", f"column {e.colno}: {e.msg}")
                continue
            except _Malformed as e:
                report.skip(file.name, line_no, e.args[0], e.args[1] if len(e.args) > 1 else "")
                continue
            report.n_cases += 1
            yield q


def question_text(q: MCQuestion) -> str:
    """The question with its context and lettered options, as one plain text."""
    parts = [q.context or "", q.question]
    if q.style != "pubmedqa":
        parts.append("\n".join(f"{k}. {v}" for k, v in q.options.items()))
    return "\n".join(p for p in parts if p)


def question_case(q: MCQuestion) -> Case:
    """A question as a case: its text and options, labelled with the right key."""
    return Case(
        case_id=q.question_id, text=question_text(q), source=SOURCE, label=Label(diagnosis=q.answer)
    )


def load_mcq_cases(path: Path, report: LoadReport) -> Iterator[Case]:
    """The ``mcq`` data source: every question of ``path`` as a :class:`Case`."""
    return (question_case(q) for q in load_mcq(path, report))


register_source(SOURCE, load_mcq_cases)
