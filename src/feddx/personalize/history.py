"""The patient's own history in the prompt: which items, in which order, within the budget.

:func:`~feddx.model.prompt.render_prompt` keeps history lines in the order it is given until the
token budget is spent. By default (``order="recent"``) that is the renderer's own order (all
prior conditions in one line, then medications, then encounters most recent first), which every
adapter was trained on. This module offers the alternatives that were measured
(``results/individual.md``):

- ``"none"``: no history at all (the "without history" arm);
- ``"recent"``: the default lines, unchanged;
- ``"relevance"``: one line per item (a prior condition, a medication, an allergy, an encounter;
  :func:`feddx.model.prompt.history_items`, the renderer's words and relative dates), ranked by
  similarity to the current findings, ties broken by recency, so that when the budget is
  tight the items that speak to today's complaint survive rather than the oldest being cut.

Similarity is lexical by default (the share of an item's content words that appear in the
case's findings and note: no model, deterministic) or any :class:`~feddx.personalize.embedding.
Embedder` (cosine of sentence embeddings).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Literal

from feddx.data.schema import Case
from feddx.model.prompt import PromptContext, case_summary, history_items
from feddx.personalize.embedding import Embedder

HistoryOrder = Literal["none", "recent", "relevance"]
HISTORY_ORDERS: tuple[HistoryOrder, ...] = ("none", "recent", "relevance")

_WORD = re.compile(r"[a-z0-9]+")
# Words that carry no clinical meaning in either a history item or a finding.
_STOP = frozenset(
    [
        "a",
        "an",
        "and",
        "or",
        "of",
        "the",
        "to",
        "in",
        "on",
        "with",
        "without",
        "for",
        "by",
        "at",
        "from",
        "no",
        "not",
        "other",
        "unspecified",
        "history",
        "prior",
        "past",
        "visit",
        "type",
    ]
)


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 2}


def lexical_similarity(query: str, items: Sequence[str]) -> list[float]:
    """For each item, the share of its content words found in ``query`` (0 when none)."""
    q = _words(query)
    out = []
    for item in items:
        w = _words(item)
        out.append(len(w & q) / len(w) if w else 0.0)
    return out


def embedding_similarity(embedder: Embedder) -> Callable[[str, Sequence[str]], list[float]]:
    """A similarity function from a sentence embedder: cosine of the query and each item."""

    def similarity(query: str, items: Sequence[str]) -> list[float]:
        if not items:
            return []
        vectors = embedder.encode([query, *items])
        return [float(x) for x in vectors[1:] @ vectors[0]]

    return similarity


def history_lines(
    case: Case,
    order: HistoryOrder = "recent",
    similarity: Callable[[str, Sequence[str]], list[float]] = lexical_similarity,
) -> tuple[str, ...] | None:
    """The history lines of ``case`` for ``render_prompt(history=...)``, most important first.

    ``"recent"`` returns ``None`` (the renderer's default lines, exactly as before);
    ``"none"`` an empty tuple; ``"relevance"`` one line per item, by decreasing similarity of
    the item to the current findings and note, then by recency. Raises :class:`ValueError`
    for an unknown order.
    """
    if order == "recent":
        return None
    if order == "none":
        return ()
    if order != "relevance":
        raise ValueError(f"unknown history order {order!r}; choose one of {HISTORY_ORDERS}")
    items = history_items(case)
    if not items:
        return ()
    query = case_summary(case) + (" " + case.text if case.text and case.findings else "")
    sims = similarity(query, [text for text, _ in items])
    ranked = sorted(zip(items, sims, strict=True), key=lambda x: (-x[1], x[0][1]))
    return tuple(text for (text, _), _ in ranked)


def history_context(
    order: HistoryOrder = "recent",
    similarity: Callable[[str, Sequence[str]], list[float]] = lexical_similarity,
) -> Callable[[Case], PromptContext]:
    """A ``context`` for :meth:`~feddx.model.predict.Diagnoser.diagnose` that renders each
    case's history in ``order``."""
    if order not in HISTORY_ORDERS:
        raise ValueError(f"unknown history order {order!r}; choose one of {HISTORY_ORDERS}")
    return lambda case: PromptContext(history=history_lines(case, order, similarity))
