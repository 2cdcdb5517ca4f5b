"""The one tiny embedder of the unit tests (shared by every test package): retrieval and case
indexes tested without a sentence-embedding model, with the cases it reads and the model
answers its prior is mixed into."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from feddx.data.schema import Case, Finding, Label
from feddx.model.predict import Prediction
from feddx.model.scoring import ScoredCandidate

# the findings the personalize tests' cases are made of
FINDINGS = ("cough", "fever", "wheeze", "chest pain", "sweating", "rash", "itch")


class BagEmbedder:
    """One dimension per word of ``vocab`` (lower case), 1 where the text holds it in any case,
    L2-normalised: deterministic, so a test can say which past cases are nearest."""

    name = "bag-of-findings"

    def __init__(self, vocab: Sequence[str] = FINDINGS) -> None:
        self.vocab = tuple(vocab)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), len(self.vocab)), dtype=np.float32)
        for i, t in enumerate(texts):
            for j, w in enumerate(self.vocab):
                out[i, j] = float(w in t.lower())
            out[i] /= max(float(np.linalg.norm(out[i])), 1e-9)
        return out


def findings_case(
    cid: str, findings: tuple[str, ...], dx: str | None, patient: str | None = None
) -> Case:
    """A case of a 50-year-old man with ``findings`` (what the embedder reads), labelled
    ``dx`` (unlabelled when ``None``)."""
    return Case(
        case_id=cid,
        patient_id=patient,
        age=50,
        sex="male",
        findings=tuple(Finding(name=f) for f in findings),
        label=Label(diagnosis=dx) if dx else None,
    )


def prediction_of(case: Case, probs: dict[str, float]) -> Prediction:
    """The model's answer for ``case`` with these candidate probabilities, most likely first."""
    ranked = [ScoredCandidate(n, p, math.log(p), None) for n, p in probs.items()]
    return Prediction(case, sorted(ranked, key=lambda r: -r.probability), 1.0)
