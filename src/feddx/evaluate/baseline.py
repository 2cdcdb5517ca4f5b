"""The classical baseline: multinomial logistic regression over the case's findings.

Reported beside the LLM on the same split with the same metrics, so the LLM's value is
visible (on DDXPlus a plain logistic regression over the evidences is near 0.98 top-1).
Features, all from the one case schema:

* each finding: ``name=value`` one-hot for categorical values, ``name`` = the number for
  numeric values, ``name`` = +1 present / -1 explicitly negated for plain findings;
* age (numeric), sex (one-hot);
* for free-text cases, word uni- and bigram TF-IDF of the text (Symptom2Disease has no
  structured findings, so a findings-only model would only see age and sex there), or with
  ``text_analyzer="char"`` TF-IDF of character 2- to 5-grams within word boundaries: the
  stronger linear reference across languages, since stems and cognates ("febre"/"fever")
  share character n-grams where they share no word.

Numeric columns are scaled by their maximum absolute value (sparse-friendly), so a lab value
in the hundreds does not swamp the one-hot columns.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from feddx.data.schema import Case
from feddx.model.predict import Prediction
from feddx.model.scoring import ScoredCandidate


def case_features(case: Case) -> dict[str, float]:
    """The sparse feature dict of one case (see the module docstring)."""
    feats: dict[str, float] = {"_bias": 1.0}  # never an empty row, even for text-only data
    if case.age is not None:
        feats["_age"] = float(case.age)
    if case.sex:
        feats[f"_sex={case.sex}"] = 1.0
    for f in case.findings:
        v = f.value
        if f.negated or v is False:
            feats[f.name] = -1.0
        elif v is None or v is True:
            feats[f.name] = 1.0
        elif isinstance(v, int | float) and math.isfinite(float(v)):
            feats[f"{f.name}#num"] = float(v)
        else:
            feats[f"{f.name}={v}"] = 1.0
    return feats


@dataclass
class LogisticBaseline:
    """A fitted baseline; :meth:`predict` returns :class:`Prediction` objects ranked over a
    candidate list, so every metric of the harness applies to it unchanged."""

    model: Any
    vectorizer: Any
    text_vectorizer: Any | None
    scaler: Any
    classes: list[str]
    fit_seconds: float

    def _matrix(self, cases: Sequence[Case]) -> Any:
        from scipy.sparse import hstack

        x = self.scaler.transform(self.vectorizer.transform([case_features(c) for c in cases]))
        if self.text_vectorizer is not None:
            x = hstack([x, self.text_vectorizer.transform([c.text or "" for c in cases])])
        return x.tocsr()

    def predict(self, cases: Sequence[Case], candidates: Sequence[str]) -> list[Prediction]:
        """Probabilities for every candidate (0 for a candidate never seen in training),
        most probable first; ``latency_ms`` is the batch time divided by the number of cases."""
        if not cases:
            return []
        start = time.perf_counter()
        proba = self.model.predict_proba(self._matrix(cases))
        per_case = (time.perf_counter() - start) * 1000 / len(cases)
        col = {name: j for j, name in enumerate(self.classes)}
        out = []
        for case, row in zip(cases, proba, strict=True):
            probs = [float(row[col[c]]) if c in col else 0.0 for c in candidates]
            order = sorted(range(len(candidates)), key=lambda i: (-probs[i], i))
            ranked = [
                ScoredCandidate(
                    candidates[i], probs[i], math.log(probs[i]) if probs[i] > 0 else -1e9
                )
                for i in order
            ]
            out.append(Prediction(case, ranked, per_case))
        return out


TextAnalyzer = Literal["word", "char"]


def _text_vectorizer(analyzer: TextAnalyzer) -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer

    if analyzer == "char":
        return TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)
    return TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True)


def fit_baseline(
    train_cases: Sequence[Case],
    *,
    c: float = 1.0,
    max_iter: int = 2000,
    seed: int = 0,
    text_analyzer: TextAnalyzer = "word",
) -> LogisticBaseline:
    """Fit the baseline on labeled ``train_cases``; ``text_analyzer`` picks word or
    character n-grams for free text (see the module docstring).

    Raises :class:`ValueError` if fewer than two distinct labels are present (a classifier
    needs two classes) or a case is unlabeled.
    """
    from scipy.sparse import hstack
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import MaxAbsScaler

    labels = [c_.require_label().diagnosis for c_ in train_cases]
    if len(set(labels)) < 2:
        raise ValueError(
            f"the baseline needs at least 2 distinct labels in its training cases, got {len(set(labels))}"
        )
    start = time.perf_counter()
    vectorizer = DictVectorizer(sparse=True)
    scaler = MaxAbsScaler()
    x = scaler.fit_transform(vectorizer.fit_transform([case_features(c_) for c_ in train_cases]))
    text_vec = None
    if any(c_.text for c_ in train_cases):
        text_vec = _text_vectorizer(text_analyzer)
        x = hstack([x, text_vec.fit_transform([c_.text or "" for c_ in train_cases])])
    model = LogisticRegression(C=c, max_iter=max_iter, random_state=seed)
    model.fit(x.tocsr(), labels)
    return LogisticBaseline(
        model=model,
        vectorizer=vectorizer,
        text_vectorizer=text_vec,
        scaler=scaler,
        classes=[str(k) for k in model.classes_],
        fit_seconds=time.perf_counter() - start,
    )
