"""Retrieval of similar past cases: the index (exact neighbours, never the case itself, saved and
loaded atomically and verified), the institutional retrieval prior and its mixing, and few-shot
context."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from feddx.data.schema import Case, Finding
from feddx.errors import DataError, ModelError
from feddx.personalize.retrieval import (
    CaseIndex,
    Neighbour,
    case_text,
    choose_prior_weight,
    fewshot_context,
    index_dir,
    knn_prior,
    mix_prior,
    neighbours_by_case,
    retrieval_prior,
)
from tiny_embedder import BagEmbedder, findings_case, prediction_of

TRAIN = [
    findings_case("t1", ("cough", "fever"), "Pneumonia", patient="MRN-123456"),
    findings_case("t2", ("cough", "wheeze"), "Asthma"),
    findings_case("t3", ("chest pain", "sweating"), "Myocardial infarction"),
    findings_case("t4", ("rash", "itch"), "Urticaria"),
    findings_case("t5", ("cough", "fever", "wheeze"), "Pneumonia"),
]


def test_case_text_is_what_the_prompt_shows_without_identifiers() -> None:
    text = case_text(TRAIN[0])
    assert text == "50y male; cough; fever"
    assert "MRN" not in text and "t1" not in text


def test_index_returns_the_exact_neighbours_and_never_the_case_itself() -> None:
    emb = BagEmbedder()
    index = CaseIndex.build(TRAIN, emb)
    query = findings_case("q1", ("cough", "fever"), "Pneumonia")
    [row] = index.neighbours([query], emb, k=3)
    # cos(q, t1) = 1; cos(q, t5) = 2/sqrt(6) = 0.816; cos(q, t2) = 1/2.
    assert [n.diagnosis for n in row] == ["Pneumonia", "Pneumonia", "Asthma"]
    assert [n.position for n in row] == [0, 4, 1]
    assert row[0].similarity == pytest.approx(1.0)
    assert row[1].similarity == pytest.approx(2 / math.sqrt(6), abs=1e-6)
    # The same case queried against an index that holds it: t1 is skipped, not returned at 1.0.
    [own] = index.neighbours([TRAIN[0]], emb, k=3)
    assert [n.position for n in own[:2]] == [4, 1] and 0 not in [n.position for n in own]
    assert own[2].similarity == pytest.approx(0.0)  # t3 and t4 tie: share no finding
    assert len(neighbours_by_case(index, TRAIN, emb, k=10)["t4"]) == 4  # k capped at n - 1


def test_index_saves_and_loads_atomically_and_refuses_damage(tmp_path: Path) -> None:
    emb = BagEmbedder()
    index = CaseIndex.build(TRAIN, emb)
    where = index_dir(tmp_path / "hospital-a")
    index.save(where)
    assert sorted(p.name for p in where.iterdir()) == ["index.json", "vectors.faiss"]
    assert [p.name for p in where.parent.iterdir()] == ["retrieval"]  # no temp dir left behind
    again = CaseIndex.load(where, embedder_name="bag-of-findings")
    assert again.diagnoses == index.diagnoses and again.texts == index.texts
    np.testing.assert_array_equal(again.vectors, index.vectors)
    query = findings_case("q", ("rash",), "Urticaria")
    assert again.neighbours([query], emb, 1)[0][0].diagnosis == "Urticaria"
    assert "MRN-123456" not in (where / "index.json").read_text()
    with pytest.raises(DataError, match="built with 'bag-of-findings', not 'all-MiniLM-L6-v2'"):
        CaseIndex.load(where, embedder_name="all-MiniLM-L6-v2")
    data = (where / "vectors.faiss").read_bytes()
    (where / "vectors.faiss").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"vectors.faiss: checksum mismatch"):
        CaseIndex.load(where)
    with pytest.raises(DataError, match="not a case index"):
        CaseIndex.load(tmp_path / "nowhere")


def test_index_refuses_another_embedder_and_unlabeled_cases() -> None:
    index = CaseIndex.build(TRAIN, BagEmbedder())

    class Other(BagEmbedder):
        name = "other"

    with pytest.raises(ModelError, match="built with 'bag-of-findings', queried with 'other'"):
        index.neighbours(TRAIN[:1], Other())
    with pytest.raises(ValueError, match="case 'u' has no label"):
        CaseIndex.build([Case(case_id="u", findings=(Finding(name="cough"),))], BagEmbedder())


def test_retrieval_prior_weights_neighbours_by_similarity() -> None:
    nbs = [
        Neighbour(0, 0.9, "Pneumonia", ""),
        Neighbour(1, 0.8, "Asthma", ""),
        Neighbour(2, 0.8, "Outside", ""),  # not a candidate: ignored
    ]
    prior = retrieval_prior(
        nbs, ["Pneumonia", "Asthma", "Urticaria"], temperature=0.1, smoothing=0.0
    )
    w_asthma = math.exp(-1.0)  # (0.8 - 0.9) / 0.1
    assert prior["Pneumonia"] == pytest.approx(1 / (1 + w_asthma))
    assert prior["Asthma"] == pytest.approx(w_asthma / (1 + w_asthma))
    assert prior["Urticaria"] == 0.0
    uniform = retrieval_prior([], ["a", "b"])
    assert uniform == {"a": 0.5, "b": 0.5}
    assert knn_prior is retrieval_prior  # the former name still works


def test_mix_prior_is_the_stated_linear_mixture_and_reranks() -> None:
    case = findings_case("q", ("cough",), "Asthma")
    pred = prediction_of(case, {"Pneumonia": 0.6, "Asthma": 0.3, "Urticaria": 0.1})
    prior = {"Pneumonia": 0.0, "Asthma": 1.0, "Urticaria": 0.0}
    mixed = mix_prior(pred, prior, 0.5)
    assert [r.name for r in mixed.ranked] == ["Asthma", "Pneumonia", "Urticaria"]
    assert [r.probability for r in mixed.ranked] == pytest.approx([0.65, 0.3, 0.05])
    assert mixed.ranked[0].score == pytest.approx(math.log(0.65))
    assert [r.name for r in mix_prior(pred, prior, 0.0).ranked] == [r.name for r in pred.ranked]
    with pytest.raises(ValueError, match=r"prior weight must be in \[0, 1\], got 1.5"):
        mix_prior(pred, prior, 1.5)


def test_prior_weight_is_chosen_by_validation_likelihood() -> None:
    cases = [findings_case(f"v{i}", ("cough",), "Asthma") for i in range(3)]
    preds = [prediction_of(c, {"Pneumonia": 0.7, "Asthma": 0.3}) for c in cases]
    helpful = [{"Pneumonia": 0.0, "Asthma": 1.0}] * 3
    useless = [{"Pneumonia": 1.0, "Asthma": 0.0}] * 3
    assert choose_prior_weight(preds, helpful) == 1.0
    assert choose_prior_weight(preds, useless) == 0.0
    # Half right: NLL of (1 - w) 0.3 + w for one case and (1 - w) 0.3 for the other is
    # minimised at w = 0.35; the grid's nearest value with the lowest NLL is 0.3 or 0.4.
    mixed = [{"Pneumonia": 0.0, "Asthma": 1.0}, {"Pneumonia": 1.0, "Asthma": 0.0}]
    assert choose_prior_weight(preds[:2], mixed) in (0.3, 0.4)


def test_fewshot_context_gives_the_nearest_solved_cases(tokenizer: Any) -> None:
    from feddx.model.prompt import render_prompt

    emb = BagEmbedder()
    index = CaseIndex.build(TRAIN, emb)
    query = findings_case("q", ("chest pain",), "Myocardial infarction")
    nbs = neighbours_by_case(index, [query], emb, k=5)
    ctx = fewshot_context(nbs, k=2)(query)
    assert ctx.history is None
    assert ctx.examples[0].text == "50y male; chest pain; sweating"
    assert ctx.examples[0].diagnosis == "Myocardial infarction"
    assert len(ctx.examples) == 2
    text = render_prompt(query, tokenizer, examples=ctx.examples).text
    assert "1. 50y male; chest pain; sweating -> Myocardial infarction" in text
    assert fewshot_context({}, k=2)(query).examples == ()


@pytest.mark.slow
def test_minilm_embeds_offline_and_ranks_a_clinical_paraphrase_first() -> None:
    from feddx.personalize.retrieval import MiniLMEmbedder

    emb = MiniLMEmbedder()
    v = emb.encode(["crushing chest pain radiating to the left arm", "itchy skin rash", ""])
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert np.linalg.norm(v, axis=1) == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)
    cases = [
        findings_case(
            "a", ("chest pain radiating to the left arm", "sweating"), "Myocardial infarction"
        ),
        findings_case("b", ("itchy skin rash",), "Urticaria"),
        findings_case("c", ("cough", "fever"), "Pneumonia"),
    ]
    index = CaseIndex.build(cases, emb)
    query = findings_case(
        "q", ("pressure in the chest spreading to the arm",), "Myocardial infarction"
    )
    [row] = index.neighbours([query], emb, k=3)
    assert row[0].diagnosis == "Myocardial infarction"
    assert row[0].similarity > row[1].similarity + 0.1


def test_individual_context_fits_on_validation_and_applies_the_prior(diagnoser: Any) -> None:
    from feddx.personalize.retrieval import PRIOR_WEIGHTS, IndividualContext

    names = ["Pneumonia", "Asthma", "Myocardial infarction", "Urticaria"]
    val = [
        findings_case("v1", ("cough", "fever"), "Pneumonia"),
        findings_case("v2", ("rash", "itch"), "Urticaria"),
        findings_case("v3", ("chest pain", "sweating"), "Myocardial infarction"),
    ]
    ctx = IndividualContext.fit(
        diagnoser, TRAIN, val, names, embedder=BagEmbedder(), shots=2, history_order="relevance"
    )
    # On these cases the neighbours' labels are right and the random model is not, so the
    # validation likelihood prefers a large weight.
    assert ctx.prior_weight in PRIOR_WEIGHTS and ctx.prior_weight >= 0.5
    test = [
        findings_case("q1", ("rash",), "Urticaria"),
        findings_case("q2", ("wheeze", "cough"), "Asthma"),
    ]
    preds = ctx.diagnose(diagnoser, test, names)
    assert [p.case.case_id for p in preds] == ["q1", "q2"]
    assert sum(r.probability for r in preds[0].ranked) == pytest.approx(1.0)
    ctx.prior_weight = 1.0
    assert [p.top for p in ctx.diagnose(diagnoser, test, names)] == ["Urticaria", "Asthma"]
    ctx.prior_weight, ctx.shots = 0.0, 0
    plain = diagnoser.diagnose(test, names)
    assert [p.ranked for p in ctx.diagnose(diagnoser, test, names)] == [p.ranked for p in plain]


def test_other_records_of_the_same_patient_are_excluded_unless_asked() -> None:
    emb = BagEmbedder()
    index = CaseIndex.build(TRAIN, emb)
    # A later stay of the patient of t1 (same findings, same diagnosis).
    later = findings_case("q-later", ("cough", "fever"), "Pneumonia", patient="MRN-123456")
    [row] = index.neighbours([later], emb, k=2)
    assert [n.position for n in row] == [4, 1]  # t1, the same patient, is skipped
    [row] = index.neighbours([later], emb, k=2, same_patient=True)
    assert [n.position for n in row] == [0, 4]
