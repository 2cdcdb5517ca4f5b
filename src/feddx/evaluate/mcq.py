"""Multiple-choice accuracy under two protocols: option likelihood and FlowerTune's.

Why two: the FlowerTune medical leaderboard (Flower's benchmark for federated LLM fine-tuning)
generates an answer and parses a letter out of it. A small model that knows which option is
likelier may still fail to *write* a bare letter first, and every such failure counts as wrong:
SmolLM2-135M scores 0.09 on MedQA there, below the 0.25 of chance. Scoring each option's
likelihood, as feddx scores diagnoses, asks the model only what it knows. Reporting both, on
the same questions, separates "does not know" from "does not follow the answer format".

``likelihood``
    The question (with its context and lettered options) is asked under FlowerTune's
    instruction for its benchmark through the model's chat template
    (:func:`feddx.model.generate.prompt_ids_for`); each option's *text* is scored as the answer
    with feddx's one scorer (:func:`feddx.model.scoring.candidate_scores`, ``"likelihood"``:
    the mean token log-likelihood of the option closed by the end-of-turn token, i.e.
    length-normalised). The chosen option is the highest-scoring one (ties: the first).
``flowertune``
    Re-implemented from the published description of FlowerTune's medical evaluation
    (``benchmarks/flowertune-llm/evaluation/medical`` in adap/flower, after Meditron's): the
    prompt ``<|im_start|>question\\n{instruction}\\n{body}\\nThe answer is:\\n<|im_end|>\\n
    <|im_start|>answer\\n`` as raw text (not the model's chat template), where ``body`` is
    ``Question: {question}`` (``?`` appended unless it ends with ``?`` or ``.``), a blank line,
    ``Options:`` and ``A. ...`` lines, or for PubMedQA the context and the question; tokenised
    with the tokenizer's special tokens; greedy decoding of as many tokens as the gold answer
    takes (one for a letter); the output lower-cased, the text after a ``\\n##`` heading kept,
    non-alphanumerics turned to spaces, then the first character for a letter question
    (``yesyes``-style doubles collapsed for yes/no). Only ``a``-``e``, ``yes`` and ``no``
    count as answers: anything else is a parse failure and wrong (so a PubMedQA ``maybe``
    never counts, as there). FlowerTune sizes the generation by the first gold answer of
    each batch of 16; here each question's own gold answer sizes it (the same for letters).
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from feddx.data.mcq import MCQuestion

Protocol = Literal["likelihood", "flowertune"]
PROTOCOLS: tuple[Protocol, ...] = ("likelihood", "flowertune")
OnQuestion = Callable[[str, int, int], None]

# FlowerTune's instructions (from Meditron's evaluation), per benchmark; CareQA uses medmcqa's.
INSTRUCTIONS = {
    "pubmedqa": "As an expert doctor in clinical science and medical knowledge, can you tell me "
    "if the following statement is correct? Answer yes, no, or maybe.",
    "medqa": "You are a medical doctor taking the US Medical Licensing Examination. You need to "
    "demonstrate your understanding of basic and clinical science, medical knowledge, and "
    "mechanisms underlying health, disease, patient care, and modes of therapy. Show your "
    "ability to apply the knowledge essential for medical practice. For the following "
    "multiple-choice question, select one correct answer from A to E. Base your answer on the "
    "current and standard practices referenced in medical guidelines.",
    "medmcqa": "You are a medical doctor answering realworld medical entrance exam questions. "
    "Based on your understanding of basic and clinical science, medical knowledge, and "
    "mechanisms underlying health, disease, patient care, and modes of therapy, answer the "
    "following multiple-choice question. Select one correct answer from A to D. Base your "
    "answer on the current and standard practices referenced in medical guidelines.",
}
CHOICE_RULES = {
    "likelihood": "highest mean token log-likelihood of the option's text (closed by the "
    "end-of-turn token) after the question and its options; ties: the first option",
    "flowertune": "greedy generation of as many tokens as the gold answer after FlowerTune's "
    "prompt, parsed by FlowerTune's rule (first letter a-e, or yes/no); unparsed: wrong",
}
_PARSED = {"a", "b", "c", "d", "e", "yes", "no"}
MAX_PROMPT_TOKENS = 4096  # a PubMedQA abstract with its question fits; nothing is cut


@dataclass(frozen=True)
class MCQAnswer:
    """One question answered under one protocol: the right key, the chosen key (``None`` when
    the generated output did not parse) and what the choice rests on (per-option scores for
    ``likelihood``, the generated text for ``flowertune``)."""

    question_id: str
    gold: str
    chosen: str | None
    subject: str | None = None
    scores: dict[str, float] | None = None
    output: str | None = None

    @property
    def correct(self) -> bool:
        return self.chosen == self.gold

    def to_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {"id": self.question_id, "gold": self.gold, "chosen": self.chosen}
        row["correct"] = self.correct
        if self.subject is not None:
            row["subject"] = self.subject
        if self.scores is not None:
            row["scores"] = self.scores
        if self.output is not None:
            row["output"] = self.output
        return row


def _letter(i: int) -> str:
    return chr(ord("A") + i)


def flowertune_body(q: MCQuestion) -> str:
    """The question as FlowerTune lays it out (options lettered by position)."""
    if q.style == "pubmedqa":
        return f"{q.context}\n{q.question}" if q.context else q.question
    question = q.question if q.question.endswith(("?", ".")) else q.question + "?"
    options = "\n".join(f"{_letter(i)}. {v}" for i, v in enumerate(q.options.values()))
    return f"Question: {question}\n\nOptions:\n{options}"


def flowertune_prompt(q: MCQuestion) -> str:
    """FlowerTune's full prompt text for ``q`` (its instruction, body and answer cue)."""
    text = f"{INSTRUCTIONS[q.style]}\n{flowertune_body(q)}\nThe answer is:\n"
    return f"<|im_start|>question\n{text}<|im_end|>\n<|im_start|>answer\n"


def flowertune_gold(q: MCQuestion) -> str:
    """The gold answer as FlowerTune writes it: the option's letter by position, or the word."""
    return q.answer if q.style == "pubmedqa" else _letter(q.keys.index(q.answer))


def parse_flowertune(output: str, style: str) -> str | None:
    """FlowerTune's answer parsing: ``a``-``e``, ``yes`` or ``no``, else ``None``."""
    out = output.lower()
    if "\n##" in out:
        out = out.split("\n##")[1].split("\n")[0].strip()
    out = re.sub(" +", " ", re.sub(r"[^a-zA-Z0-9]", " ", out).strip())
    if style == "pubmedqa":
        for double, single in (
            ("yesyes", "yes"),
            ("nono", "no"),
            ("yesno", "yes"),
            ("noyes", "no"),
        ):
            if double in out:
                out = out.replace(double, single)
                break
        out = out.encode("ascii", "ignore").decode("ascii")
    else:
        out = out.encode("ascii", "ignore").decode("ascii")[:1]
    return out if out in _PARSED else None


def _key_of(parsed: str | None, q: MCQuestion) -> str | None:
    if parsed is None:
        return None
    if q.style == "pubmedqa":
        return parsed if parsed in q.options else None
    i = ord(parsed) - ord("a")
    return q.keys[i] if 0 <= i < len(q.keys) else parsed.upper()  # "e" of 4: wrong, parsed


def answer_flowertune(model: Any, tokenizer: Any, q: MCQuestion) -> MCQAnswer:
    """``q`` answered under the FlowerTune protocol (see the module docstring)."""
    from feddx.model.generate import generate_answer
    from feddx.model.prompt import RenderedPrompt

    text = flowertune_prompt(q)
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    n_new = len(tokenizer(flowertune_gold(q), add_special_tokens=False)["input_ids"])
    output = generate_answer(
        model, tokenizer, RenderedPrompt(text, ids, False), max_new_tokens=max(n_new, 1)
    )
    chosen = _key_of(parse_flowertune(output, q.style), q)
    return MCQAnswer(q.question_id, q.answer, chosen, q.subject, output=output)


def likelihood_prompt_ids(tokenizer: Any, q: MCQuestion) -> list[int]:
    """The question under its instruction, through the model's chat template."""
    from feddx.model.generate import prompt_ids_for

    messages = [
        {"role": "system", "content": INSTRUCTIONS[q.style]},
        {"role": "user", "content": flowertune_body(q)},
    ]
    return prompt_ids_for(tokenizer, messages, MAX_PROMPT_TOKENS)


def answer_likelihood(model: Any, tokenizer: Any, q: MCQuestion) -> MCQAnswer:
    """``q`` answered by the option text the scorer finds likeliest (length-normalised)."""
    from feddx.model.prompt import answer_ids
    from feddx.model.scoring import candidate_scores, prepare_candidate_ids

    keys = list(q.keys)
    cset = prepare_candidate_ids(keys, [answer_ids(tokenizer, q.options[k]) for k in keys])
    scores = candidate_scores(model, likelihood_prompt_ids(tokenizer, q), cset, method="likelihood")
    best = max(range(len(keys)), key=lambda i: (scores[i], -i))
    by_key = {k: round(s, 6) for k, s in zip(keys, scores, strict=True)}
    return MCQAnswer(q.question_id, q.answer, keys[best], q.subject, scores=by_key)


_ANSWER: dict[str, Callable[[Any, Any, MCQuestion], MCQAnswer]] = {
    "likelihood": answer_likelihood,
    "flowertune": answer_flowertune,
}


@dataclass
class ProtocolResult:
    """Every question's answer under one protocol, and how long they took."""

    protocol: str
    answers: list[MCQAnswer]
    chance: float
    seconds: float = 0.0

    @property
    def correct(self) -> list[bool]:
        return [a.correct for a in self.answers]

    def summary(self, *, resamples: int, seed: int) -> dict[str, Any]:
        """``n``, ``accuracy`` with its 95% bootstrap interval, the choice rule, chance,
        per-subject accuracy (when the questions have subjects) and, for ``flowertune``,
        ``parse_failures``."""
        from feddx.evaluate.stats import paired_bootstrap

        n = len(self.answers)
        # One system's interval: the paired bootstrap against a system that is never right.
        ci = paired_bootstrap(self.correct, [False] * n, resamples=resamples, seed=seed)
        out: dict[str, Any] = {
            "protocol": self.protocol,
            "choice": CHOICE_RULES[self.protocol],
            "n": n,
            "correct": sum(self.correct),
            "accuracy": sum(self.correct) / n,
            "accuracy_ci95": {"low": ci.low, "high": ci.high, "resamples": resamples, "seed": seed},
            "chance": self.chance,
        }
        if self.protocol == "flowertune":
            failures = sum(a.chosen is None for a in self.answers)
            out["parse_failures"] = failures
            out["parse_failure_rate"] = failures / n
        subjects: dict[str, list[bool]] = defaultdict(list)
        for a in self.answers:
            if a.subject is not None:
                subjects[a.subject].append(a.correct)
        if subjects:
            out["per_subject"] = {
                s: {"n": len(c), "accuracy": sum(c) / len(c)} for s, c in sorted(subjects.items())
            }
        out["seconds"] = round(self.seconds, 1)
        return out


@dataclass
class MCQEvaluation:
    """The same questions under one or more protocols."""

    results: list[ProtocolResult]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, *, resamples: int = 10_000, seed: int = 0) -> dict[str, Any]:
        """One protocol: its summary at the top level; several: ``protocols`` by name and the
        paired comparison of the first two (bootstrap interval and McNemar)."""
        from feddx.evaluate.stats import compare_correct

        summaries = [r.summary(resamples=resamples, seed=seed) for r in self.results]
        if len(summaries) == 1:
            return {**summaries[0], "meta": self.meta}
        a, b = self.results[0], self.results[1]
        comparison = compare_correct(a.correct, b.correct, resamples=resamples, seed=seed)
        return {
            "n": summaries[0]["n"],
            "protocols": {s["protocol"]: s for s in summaries},
            "comparison": {"a": a.protocol, "b": b.protocol, **comparison.to_dict()},
            "meta": self.meta,
        }


def evaluate_mcq(
    model: Any,
    tokenizer: Any,
    questions: Sequence[MCQuestion],
    protocols: Sequence[str] = ("likelihood",),
    *,
    on_question: OnQuestion | None = None,
) -> MCQEvaluation:
    """Answer every question under each protocol (in order). ``on_question(protocol, done,
    total)`` after each. Raises :class:`ValueError` for no questions or an unknown protocol."""
    if not questions:
        raise ValueError("no questions to evaluate")
    unknown = [p for p in protocols if p not in _ANSWER]
    if unknown or not protocols:
        raise ValueError(f"unknown protocol {unknown}; choose from {', '.join(PROTOCOLS)}")
    chance = sum(1 / len(q.options) for q in questions) / len(questions)
    results = []
    for protocol in protocols:
        start, answers = time.perf_counter(), []
        for i, q in enumerate(questions):
            answers.append(_ANSWER[protocol](model, tokenizer, q))
            if on_question is not None:
                on_question(protocol, i + 1, len(questions))
        results.append(ProtocolResult(protocol, answers, chance, time.perf_counter() - start))
    return MCQEvaluation(results)
