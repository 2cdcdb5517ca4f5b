"""EnsembleScorer: the shared frozen trunk gives the same scores as one full pass per member."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from feddx.data.schema import Case, Finding
from feddx.model.adapter import LoraSpec, adapter_state, attach_lora, load_adapter_state
from feddx.model.ensemble import EnsembleScorer
from feddx.model.prompt import render_prompt
from feddx.model.scoring import candidate_scores, prepare_candidates, probabilities

CANDIDATES = ["Angina", "Angina pectoris", "Acute otitis media", "Pulmonary embolism", "GERD"]


def _prompt(tokenizer: Any) -> list[int]:
    case = Case(
        case_id="e1",
        age=50,
        sex="male",
        findings=(Finding(name="chest pain", value="burning"), Finding(name="cough")),
    )
    return render_prompt(case, tokenizer).input_ids


def _members(model: Any, n: int) -> list[dict[str, torch.Tensor]]:
    out = []
    for seed in range(n):
        torch.manual_seed(100 + seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.normal_(0.0, 0.3)
        out.append(adapter_state(model))
    return out


@pytest.mark.parametrize("top_layers", [1, 2, None])
@pytest.mark.parametrize("method", ["constrained", "likelihood"])
def test_members_score_as_with_one_full_pass_each(
    tiny_model: Any, tokenizer: Any, top_layers: int | None, method: str
) -> None:
    model = attach_lora(tiny_model, LoraSpec(rank=4, top_layers=top_layers))
    model.eval()
    members = _members(model, 3)
    cset = prepare_candidates(tokenizer, CANDIDATES)
    prompt = _prompt(tokenizer)
    expected = []
    for state in members:
        load_adapter_state(model, state)
        expected.append(candidate_scores(model, prompt, cset, method=method))  # type: ignore[arg-type]
    scorer = EnsembleScorer(model, members)
    n_layers = model.get_base_model().config.num_hidden_layers
    assert scorer.split == (max(0, n_layers - top_layers) if top_layers else 0)
    assert scorer.runner is not None
    got = scorer.member_scores(prompt, cset, method)  # type: ignore[arg-type]
    for g, e in zip(got, expected, strict=True):
        assert g == pytest.approx(e, abs=1e-4)
    assert expected[0] != pytest.approx(expected[1], abs=1e-3)  # the members differ
    # The first member is loaded afterwards, and the ensemble averages the probabilities.
    assert all(torch.equal(v, members[0][k]) for k, v in adapter_state(model).items())
    mixed = probabilities(scorer.scores(prompt, cset, method))  # type: ignore[arg-type]
    per = [probabilities(e) for e in expected]
    assert mixed == pytest.approx([sum(p[i] for p in per) / 3 for i in range(len(CANDIDATES))])
    assert math.isclose(sum(mixed), 1.0, rel_tol=1e-9)


def test_an_empty_ensemble_is_refused(tiny_model: Any) -> None:
    with pytest.raises(ValueError, match="at least one member"):
        EnsembleScorer(attach_lora(tiny_model, LoraSpec(rank=4)), [])
