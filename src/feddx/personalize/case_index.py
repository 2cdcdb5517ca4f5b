"""An institution's case index as a stored, versioned registry entry, and its use on one case.

``feddx personalize`` fits the individual level per institution
(:class:`~feddx.personalize.retrieval.IndividualContext`: an index of the institution's own
training cases and the weight of the institutional retrieval prior, chosen on its validation
cases). Until this module that index lived in memory only. Here it becomes a registry entry of
kind ``case-index`` (:meth:`~feddx.personalize.registry.AdapterRegistry.register_case_index`):
hashed, versioned per institution, resolved with the institution's adapter chain, and loaded
back (verified) by the service, which applies it to each answer with :func:`apply_case_index`.

What is stored, and why not more: the vectors, each case's diagnosis, and SHA-256 hashes of its
case and patient ids (so a query never meets its own case or patient). **No text**: the
in-memory index keeps each case's compact findings for few-shot prompts; :func:`without_text`
drops them before anything is written, so a stored index cannot give few-shot examples and the
service uses it for the retrieval prior and to say which past cases it drew on (by a short
hash, ``case#`` and 12 hex digits, and their diagnoses). The lineage records the embedder and
its dimension, the data source, the adapter that scored the validation cases the prior weight
was chosen on, and the data fingerprint (a hash over case ids and labels); the metrics the
prior weight and the number of cases.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feddx.data.schema import Case
from feddx.errors import DataError, ModelError
from feddx.model.predict import Prediction
from feddx.personalize.embedding import Embedder
from feddx.personalize.registry import AdapterEntry, AdapterRegistry, data_fingerprint
from feddx.personalize.retrieval import (
    DEFAULT_K,
    CaseIndex,
    Neighbour,
    mix_prior,
    retrieval_prior,
)

REF_PREFIX = "case#"


@dataclass(frozen=True)
class SimilarCase:
    """A past case the retrieval prior drew on: its short hash reference, diagnosis and
    cosine similarity to the case asked about (never its text or id)."""

    ref: str
    diagnosis: str
    similarity: float


@dataclass(frozen=True)
class StoredCaseIndex:
    """A case index loaded from the registry: the entry's id, the index, the prior weight
    chosen on validation and the neighbour count the prior uses."""

    entry_id: str
    index: CaseIndex
    prior_weight: float
    k: int


def without_text(index: CaseIndex) -> CaseIndex:
    """``index`` with every case's text replaced by an empty string (vectors, diagnoses and
    id hashes kept): what may be written to disk and shared with the registry."""
    return CaseIndex(
        index.vectors,
        index.diagnoses,
        [""] * len(index),
        index.id_hashes,
        index.embedder_name,
        index.patient_hashes,
    )


def register_case_index(
    registry: AdapterRegistry,
    index: CaseIndex,
    cases: Sequence[Case],
    *,
    institution: str,
    region: str | None,
    base_fingerprint: str,
    prior_weight: float,
    k: int = DEFAULT_K,
    scored_with: str | None = None,
    source: str | None = None,
) -> AdapterEntry:
    """Store ``index`` (built from ``cases``, the institution's training cases) without text
    and register it as the next ``case-index/<institution>`` version. ``prior_weight`` is the
    weight chosen on validation with the base model ``base_fingerprint`` (and the adapter
    ``scored_with``); ``source`` names the data. Returns the registry entry; raises what
    :meth:`~feddx.personalize.registry.AdapterRegistry.register_case_index` raises."""
    if not 0.0 <= prior_weight <= 1.0:
        raise ValueError(f"prior weight must be in [0, 1], got {prior_weight}")
    lineage: dict[str, Any] = {
        "embedder": index.embedder_name,
        "dim": int(index.vectors.shape[1]),
        "k": k,
        "scored_with": scored_with,
        "data": source,
    }
    # Built inside the registry's folder (same filesystem), then copied in by the registry.
    with tempfile.TemporaryDirectory(dir=registry.root, prefix=".case-index-") as tmp:
        folder = Path(tmp) / "index"
        without_text(index).save(folder)
        return registry.register_case_index(
            folder,
            institution=institution,
            region=region,
            base_fingerprint=base_fingerprint,
            data_fingerprint=data_fingerprint(cases),
            lineage=lineage,
            metrics={"prior_weight": float(prior_weight), "cases": float(len(index))},
        )


def load_case_index(registry: AdapterRegistry | Any, entry_id: str) -> StoredCaseIndex:
    """The case index ``entry_id``, after verifying its files against the registered hash.
    Raises :class:`~feddx.errors.ModelError` (one line naming it) when it is missing,
    damaged or not a case index."""
    entry = registry.verify(entry_id)
    if getattr(entry, "kind", "adapter") != "case-index":
        raise ModelError(f"{entry_id} is not a case index")
    try:
        index = CaseIndex.load(entry.path, embedder_name=entry.lineage.get("embedder"))
    except DataError as e:
        raise ModelError(f"case index {entry_id} refused: {e}") from None
    return StoredCaseIndex(
        entry_id,
        index,
        float(entry.metrics.get("prior_weight", 0.0)),
        int(entry.lineage.get("k") or DEFAULT_K),
    )


def similar_cases(stored: StoredCaseIndex, neighbours: Sequence[Neighbour]) -> list[SimilarCase]:
    """The neighbours as :class:`SimilarCase` (short hash reference, diagnosis, similarity)."""
    return [
        SimilarCase(
            f"{REF_PREFIX}{stored.index.id_hashes[n.position][:12]}",
            n.diagnosis,
            round(float(n.similarity), 4),
        )
        for n in neighbours
    ]


def apply_case_index(
    stored: StoredCaseIndex, case: Case, prediction: Prediction, embedder: Embedder
) -> tuple[Prediction, list[SimilarCase]]:
    """``prediction`` for ``case`` with the institutional retrieval prior of ``stored`` mixed
    in at its registered weight, and the past cases it drew on. A weight of 0 (validation found
    the prior no help) leaves the prediction unchanged and uses no case."""
    if stored.prior_weight <= 0.0:
        return prediction, []
    found = stored.index.neighbours([case], embedder, stored.k)[0]
    prior = retrieval_prior(found, [r.name for r in prediction.ranked])
    return mix_prior(prediction, prior, stored.prior_weight), similar_cases(stored, found)


__all__ = [
    "SimilarCase",
    "StoredCaseIndex",
    "apply_case_index",
    "load_case_index",
    "register_case_index",
    "similar_cases",
    "without_text",
]
