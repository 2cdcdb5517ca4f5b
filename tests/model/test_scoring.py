"""Differential scoring: one forward pass over prompt + candidate trie gives exactly what one
full forward per candidate gives, for both scoring rules."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
import torch

from feddx.data.schema import Case, Finding
from feddx.model.prompt import answer_ids, render_prompt
from feddx.model.scoring import (
    candidate_log_likelihoods,
    candidate_scores,
    fit_temperature,
    prepare_candidate_ids,
    prepare_candidates,
    probabilities,
    score_candidates,
)

# Shared first words ("Acute", "Angina", "Pulmonary"), a name that is a prefix of another,
# and names of different lengths: every trie shape the scorer must handle.
CANDIDATES = [
    "Angina",
    "Angina pectoris",
    "Acute pulmonary edema",
    "Acute otitis media",
    "Pulmonary embolism",
    "Pulmonary neoplasm",
    "GERD",
    "Possible NSTEMI / STEMI",
]
ICD10 = {"Angina": "I20", "Pulmonary embolism": "I26", "GERD": "K21"}


def _prompt(tokenizer: Any) -> list[int]:
    case = Case(
        case_id="s1",
        age=61,
        sex="female",
        findings=(Finding(name="chest pain", value="burning"), Finding(name="fever", negated=True)),
    )
    return render_prompt(case, tokenizer).input_ids


def _full_forward_token_logps(model: Any, prompt: list[int], seq: list[int]) -> list[float]:
    """Reference: one full forward of prompt + candidate, full-vocabulary log-softmax."""
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([prompt + seq])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    return [float(logp[len(prompt) - 1 + k, t]) for k, t in enumerate(seq)]


def test_likelihood_scores_equal_one_full_forward_per_candidate(
    tiny_model: Any, tokenizer: Any
) -> None:
    prompt = _prompt(tokenizer)
    cset = prepare_candidates(tokenizer, CANDIDATES)
    scores = candidate_scores(tiny_model, prompt, cset, method="likelihood")
    for name, score in zip(CANDIDATES, scores, strict=True):
        ref = _full_forward_token_logps(tiny_model, prompt, answer_ids(tokenizer, name))
        assert score == pytest.approx(sum(ref) / len(ref), abs=1e-4), name


def test_per_token_log_likelihoods_match_full_forward(tiny_model: Any, tokenizer: Any) -> None:
    prompt = _prompt(tokenizer)
    seqs = [answer_ids(tokenizer, c) for c in CANDIDATES]
    got = candidate_log_likelihoods(tiny_model, prompt, seqs)
    for seq, lps in zip(seqs, got, strict=True):
        assert lps == pytest.approx(_full_forward_token_logps(tiny_model, prompt, seq), abs=1e-4)


def test_constrained_scores_equal_trie_restricted_decoding(tiny_model: Any, tokenizer: Any) -> None:
    """ "constrained": at each prefix the next token is renormalised over the tokens that
    continue some candidate; the candidates' probabilities then sum to exactly one."""
    prompt = _prompt(tokenizer)
    seqs = [answer_ids(tokenizer, c) for c in CANDIDATES]
    cset = prepare_candidates(tokenizer, CANDIDATES)
    scores = candidate_scores(tiny_model, prompt, cset, method="constrained")
    for seq, score in zip(seqs, scores, strict=True):
        with torch.inference_mode():
            logits = tiny_model(input_ids=torch.tensor([prompt + seq])).logits[0].double()
        ref = 0.0
        for k, tok in enumerate(seq):
            allowed = sorted({s[k] for s in seqs if len(s) > k and s[:k] == seq[:k]})
            row = logits[len(prompt) - 1 + k]
            ref += float(row[tok] - torch.logsumexp(row[allowed], dim=0))
        assert score == pytest.approx(ref, abs=1e-4)
    assert sum(math.exp(s) for s in scores) == pytest.approx(1.0, abs=1e-6)
    # Only branching nodes and their ancestors are fed: far fewer tokens than the full trie.
    assert cset.n_fed_tokens("constrained") < cset.n_fed_tokens("likelihood")


def test_leaves_are_never_fed(tokenizer: Any) -> None:
    """Each candidate's closing end-of-turn token predicts nothing we need."""
    cset = prepare_candidate_ids(["a", "b", "c"], [[5, 6, 2], [5, 7, 2], [9, 2]])
    # trie nodes with children: 5, 6, 7, 9 (the three "2" leaves are skipped)
    assert cset.n_fed_tokens("likelihood") == 4
    # branching: the root (5 vs 9) and node 5 (6 vs 7); 6, 7, 9 have a single child
    assert cset.n_fed_tokens("constrained") == 1


def test_ranking_probabilities_and_icd10(tiny_model: Any, tokenizer: Any) -> None:
    ranked = score_candidates(tiny_model, tokenizer, _prompt(tokenizer), CANDIDATES, icd10=ICD10)
    assert sorted(r.name for r in ranked) == sorted(CANDIDATES)
    assert [r.probability for r in ranked] == sorted((r.probability for r in ranked), reverse=True)
    assert sum(r.probability for r in ranked) == pytest.approx(1.0)
    by_name = {r.name: r for r in ranked}
    assert by_name["GERD"].icd10 == "K21" and by_name["GERD"].score < 0
    assert by_name["Acute otitis media"].icd10 is None


def test_temperature_sharpens_or_flattens(tiny_model: Any, tokenizer: Any) -> None:
    prompt = _prompt(tokenizer)
    cold = score_candidates(tiny_model, tokenizer, prompt, CANDIDATES, temperature=0.5)
    hot = score_candidates(tiny_model, tokenizer, prompt, CANDIDATES, temperature=5.0)
    assert [r.name for r in cold] == [r.name for r in hot]  # order never depends on T
    assert cold[0].probability > hot[0].probability
    assert [r.probability for r in hot] == pytest.approx(probabilities([r.score for r in hot], 5.0))


def test_scoring_through_a_peft_lora_wrapper(tiny_model: Any, tokenizer: Any) -> None:
    """The evaluator scores adapters: a fresh LoRA (B = 0) must give the base model's scores."""
    from peft import LoraConfig, get_peft_model

    prompt = _prompt(tokenizer)
    cset = prepare_candidates(tokenizer, CANDIDATES)
    base = candidate_scores(tiny_model, prompt, cset)
    wrapped = get_peft_model(tiny_model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    wrapped.eval()
    assert candidate_scores(wrapped, prompt, cset) == pytest.approx(base, abs=1e-5)


@pytest.mark.parametrize(
    ("candidates", "message"),
    [
        ([], "candidate list is empty"),
        (["GERD", "Angina", "GERD"], "duplicates: 'GERD'"),
        (["GERD", "  "], "blank names"),
    ],
)
def test_bad_candidate_lists_are_refused(
    tiny_model: Any, tokenizer: Any, candidates: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        score_candidates(tiny_model, tokenizer, _prompt(tokenizer), candidates)


def test_bad_temperature_and_empty_prompt_are_refused(tiny_model: Any, tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="temperature"):
        score_candidates(tiny_model, tokenizer, _prompt(tokenizer), CANDIDATES, temperature=0)
    with pytest.raises(ValueError, match="prompt is empty"):
        score_candidates(tiny_model, tokenizer, [], CANDIDATES)
    with pytest.raises(ValueError, match="not in the candidate list"):
        prepare_candidates(tokenizer, CANDIDATES).index("Influenza")


def test_fit_temperature_recovers_a_known_temperature() -> None:
    """Gold labels drawn from softmax(scores / 2.5): the NLL-optimal temperature is ~2.5."""
    rng = random.Random(0)
    true_t = 2.5
    rows, gold = [], []
    for _ in range(2000):
        row = [rng.gauss(0.0, 4.0) for _ in range(8)]
        probs = probabilities(row, true_t)
        rows.append(row)
        gold.append(rng.choices(range(8), weights=probs)[0])
    assert fit_temperature(rows, gold) == pytest.approx(true_t, rel=0.08)


def test_fit_temperature_validates_its_inputs() -> None:
    with pytest.raises(ValueError):
        fit_temperature([], [])
    with pytest.raises(ValueError, match="gold indices"):
        fit_temperature([[0.0, 1.0]], [2])
    with pytest.raises(ValueError, match="same"):
        fit_temperature([[0.0, 1.0], [0.0]], [0, 0])


@pytest.mark.smollm2
def test_smollm2_scores_equal_full_forwards() -> None:
    from feddx.model.loading import load_base_model

    loaded = load_base_model()
    prompt = _prompt(loaded.tokenizer)
    cset = prepare_candidates(loaded.tokenizer, CANDIDATES)
    scores = candidate_scores(loaded.model, prompt, cset, method="likelihood")
    for name, score in zip(CANDIDATES[:3], scores, strict=False):
        ref = _full_forward_token_logps(loaded.model, prompt, answer_ids(loaded.tokenizer, name))
        assert score == pytest.approx(sum(ref) / len(ref), abs=2e-4)


def test_mixture_scores_average_the_members_probabilities() -> None:
    import math

    from feddx.model.scoring import mixture_scores, probabilities

    a, b = [0.0, -1.0, -3.0], [-2.0, 0.5, -1.0]
    mixed = mixture_scores([a, b])
    pa, pb = probabilities(a), probabilities(b)
    assert probabilities(mixed) == pytest.approx([(x + y) / 2 for x, y in zip(pa, pb, strict=True)])
    assert [math.exp(s) for s in mixture_scores([a])] == pytest.approx(pa)
    with pytest.raises(ValueError, match="at least one member"):
        mixture_scores([])
    with pytest.raises(ValueError, match="same candidates"):
        mixture_scores([a, [0.0]])
