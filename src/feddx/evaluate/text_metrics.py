"""Overlap metrics for generated answers: BLEU (sacrebleu) and ROUGE (rouge-score).

Used when the harness lets the model answer freely (``generate_n > 0``) and compares the text
with the reference diagnosis. Only aggregates leave this module: generated text can echo the
prompt, so it is never stored in results or logs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence


def _normalise(text: str) -> str:
    return re.sub(r"[^\w]+", " ", text.lower()).strip()


def text_overlap(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float | int]:
    """Corpus BLEU (sacrebleu, 0-100, effective n-gram order), mean ROUGE-1 and ROUGE-L F1 (rouge-score, stemmed,
    0-1), and exact match after lower-casing and stripping punctuation.

    Raises :class:`ValueError` on empty or mismatched inputs.
    """
    import sacrebleu
    from rouge_score import rouge_scorer

    if not hypotheses or len(hypotheses) != len(references):
        raise ValueError("need one reference per generated answer")
    # Diagnosis names are often shorter than 4 words: effective order drops the n-gram orders
    # no sentence can have, so a perfect 3-word answer scores 100 rather than 0.
    bleu = (
        sacrebleu.metrics.BLEU(effective_order=True)
        .corpus_score(list(hypotheses), [list(references)])
        .score
    )
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    r1 = rl = 0.0
    for h, r in zip(hypotheses, references, strict=True):
        s = scorer.score(r, h)
        r1 += s["rouge1"].fmeasure
        rl += s["rougeL"].fmeasure
    n = len(hypotheses)
    exact = sum(_normalise(h) == _normalise(r) for h, r in zip(hypotheses, references, strict=True))
    return {
        "n": n,
        "bleu": float(bleu),
        "rouge1": r1 / n,
        "rougeL": rl / n,
        "exact_match": exact / n,
    }
