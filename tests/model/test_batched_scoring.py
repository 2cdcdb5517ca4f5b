"""The batched forward and the shared-prefix cache (issue 25 item 5): several prompts of
different lengths in one padded pass, with and without the cached preamble, give the scores
of one prompt at a time, for every model family; the int8 path runs and says so."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch

from feddx.data.schema import Case, Finding
from feddx.errors import ModelError
from feddx.model.scoring import (
    _BATCH_CHECKED,
    _TRIE_CHECKED,
    batch_candidate_scores,
    batch_forward_inputs,
    candidate_scores,
    prefix_kv,
    prepare_candidate_ids,
)
from tiny_models import FAMILIES, make_tiny_model

# Shared first tokens, a candidate that is a prefix of another, different lengths.
SEQUENCES = [[5, 6], [5, 7, 8], [9], [5, 7, 10], [11, 12, 13]]
CSET = prepare_candidate_ids([f"c{i}" for i in range(len(SEQUENCES))], SEQUENCES)
TOLERANCE = 1e-4  # float32 rounding of a different but equivalent computation


def _prompts(vocab: int, seed: int = 0) -> tuple[list[int], list[list[int]]]:
    """A shared 15-token preamble and four prompts of 16 to 32 tokens starting with it."""
    rng = random.Random(seed)
    preamble = [rng.randrange(20, vocab) for _ in range(15)]
    return preamble, [
        preamble + [rng.randrange(20, vocab) for _ in range(n)] for n in (3, 17, 1, 9)
    ]


def _max_diff(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))


@pytest.mark.parametrize("method", ["constrained", "likelihood"])
@pytest.mark.parametrize("family", FAMILIES)
def test_batched_scores_equal_one_prompt_at_a_time(family: str, method: Any) -> None:
    model = make_tiny_model(family, 2000, layers=2, initializer_range=0.2)
    preamble, prompts = _prompts(2000)
    alone = [candidate_scores(model, p, CSET, method=method) for p in prompts]
    plain = batch_candidate_scores(model, prompts, CSET, method=method)
    cached = batch_candidate_scores(
        model, prompts, CSET, method=method, prefix=prefix_kv(model, preamble)
    )
    chunked = batch_candidate_scores(model, prompts, CSET, method=method, max_rows=3)
    for got in (plain, cached, chunked):
        assert _max_diff(got, alone) < TOLERANCE
    if family == "bloom":  # ALiBi: neither the trie pass nor the batch pass applies
        assert model.__dict__[_TRIE_CHECKED] is False
    else:  # the batched pass really ran (a wrong one would have fallen back, and been slow)
        assert model.__dict__[_BATCH_CHECKED] is True


def test_a_longer_prefix_than_the_prompts_share_is_cut_to_what_they_share() -> None:
    model = make_tiny_model("llama", 2000, layers=2)
    _, prompts = _prompts(2000)
    other = [7] * 4 + prompts[1][4:]  # shares nothing with the cached prefix's start
    kv = prefix_kv(model, prompts[1][:-1])  # a whole prompt cached: more than others share
    assert kv is not None and len(kv.ids) == len(prompts[1]) - 1
    batch = [*prompts, other, prompts[1]]
    got = batch_candidate_scores(model, batch, CSET, prefix=kv)
    assert _max_diff(got, [candidate_scores(model, p, CSET) for p in batch]) < TOLERANCE


def test_prompts_are_left_padded_so_the_trie_sits_in_the_same_columns() -> None:
    plan = CSET.plans["likelihood"]
    f = int(plan.node_tokens.numel())
    ids, positions, mask, keep = batch_forward_inputs(
        [[1, 2, 3], [4, 5, 6, 7, 8]], plan, torch.float32, 4
    )
    assert ids.shape == (2, 5 + f) and mask.shape == (2, 1, 5 + f, 4 + 5 + f)
    assert ids[0, :5].tolist() == [0, 0, 1, 2, 3] and ids[1, :5].tolist() == [4, 5, 6, 7, 8]
    assert positions[0, 2:5].tolist() == [4, 5, 6]  # after the 4 cached positions
    assert positions[1, :5].tolist() == [4, 5, 6, 7, 8]
    assert positions[0, 5:].tolist() == (7 + plan.node_depths).tolist()
    assert positions[1, 5:].tolist() == (9 + plan.node_depths).tolist()
    blocked = mask[0, 0] < 0
    assert blocked[2:, 4:6].all()  # no real token of row 0 sees its padding
    assert not blocked[2:, :4].any()  # every real token sees the cached prefix
    assert not blocked[0, 4] and blocked[0, 5] and blocked[0, 9:].all()  # not the other pad
    first = mask[1, 0, 0] < 0  # the unpadded row's first token: the prefix and itself
    assert not first[:5].any() and first[5:].all()
    assert keep.tolist() == torch.where(plan.logit_rows == 0, 4, 4 + plan.logit_rows).tolist()


def _cases() -> list[Case]:
    return [
        Case(
            case_id=f"c{i}",
            age=20 + 7 * i,
            sex="male" if i % 2 else "female",
            findings=tuple(Finding(name=f"symptom {j}") for j in range(i)),
            text="chest pain " * i or None,
        )
        for i in range(6)
    ]


CANDIDATES = ["Angina", "Angina pectoris", "Acute pulmonary edema", "GERD", "Pulmonary embolism"]


def _scores(preds: Any) -> list[dict[str, float]]:
    return [{r.name: r.score for r in p.ranked} for p in preds]


def _close(a: Any, b: Any, tol: float = TOLERANCE) -> bool:
    return all(
        abs(x[k] - y[k]) < tol for x, y in zip(_scores(a), _scores(b), strict=True) for k in x
    )


def _with_adapter(diagnoser: Any, seed: int) -> dict[str, Any]:
    from feddx.model.adapter import LoraSpec, adapter_state

    if diagnoser.lora is None:
        torch.manual_seed(0)
        diagnoser.attach(LoraSpec(rank=4, top_layers=1))
    gen = torch.Generator().manual_seed(seed)
    state = {
        k: torch.randn(v.shape, generator=gen) * 0.1
        for k, v in adapter_state(diagnoser.model).items()
    }
    diagnoser.add_state("a", state, max_prompt_tokens=320)
    return state


def test_diagnoser_batches_and_caches_the_preamble_per_adapter(diagnoser: Any) -> None:
    _with_adapter(diagnoser, 1)
    cases = _cases()
    alone = diagnoser.diagnose(cases, CANDIDATES, adapter="a")
    batched = diagnoser.diagnose(cases, CANDIDATES, adapter="a", batch_size=4)
    diagnoser.prefix_cache = True
    cached = diagnoser.diagnose(cases, CANDIDATES, adapter="a", batch_size=4)
    assert _close(batched, alone) and _close(cached, alone)
    assert [p.top for p in cached] == [p.top for p in alone]
    # the cached preamble is the chat template's opening, shared by every prompt: no case text
    preamble = diagnoser._preamble(None)
    text = diagnoser.tokenizer.decode(preamble)
    assert len(preamble) > 10 and "chest" not in text and "symptom" not in text
    # the base model's weights get their own cache, not the adapter's
    base_cached = diagnoser.diagnose(cases, CANDIDATES, batch_size=3)
    diagnoser.prefix_cache = False
    assert _close(base_cached, diagnoser.diagnose(cases, CANDIDATES))
    assert not _close(base_cached, alone)


def test_replacing_an_adapter_drops_its_cached_preamble(diagnoser: Any) -> None:
    state = _with_adapter(diagnoser, 1)
    diagnoser.prefix_cache = True
    cases = _cases()
    before = diagnoser.diagnose(cases, CANDIDATES, adapter="a", batch_size=4)
    diagnoser.add_state("a", {k: v * 3 for k, v in state.items()}, max_prompt_tokens=320)
    after = diagnoser.diagnose(cases, CANDIDATES, adapter="a", batch_size=4)
    diagnoser.prefix_cache = False
    fresh = diagnoser.diagnose(cases, CANDIDATES, adapter="a")
    assert _close(after, fresh) and not _close(after, before)


def test_int8_runs_with_adapters_and_says_so(diagnoser: Any) -> None:
    from torch.ao.nn.quantized.dynamic import Linear as Int8Linear

    cases = _cases()
    _with_adapter(diagnoser, 1)
    float_preds = diagnoser.diagnose(cases, CANDIDATES, adapter="a")
    diagnoser.model_name = "tiny"
    diagnoser.quantize_int8()
    diagnoser.prefix_cache = True
    preds = diagnoser.diagnose(cases, CANDIDATES, adapter="a", batch_size=4)
    assert diagnoser.int8 and diagnoser.model_name == "tiny+int8"
    modules = dict(diagnoser.model.named_modules())
    assert any(isinstance(m, Int8Linear) for m in modules.values())
    assert not any(isinstance(m, Int8Linear) for n, m in modules.items() if "lora_" in n)
    assert _close(preds, float_preds, tol=0.5) and not _close(preds, float_preds)
    _with_adapter(diagnoser, 2)  # adapters still swap in after quantization
    assert not _close(diagnoser.diagnose(cases, CANDIDATES, adapter="a", batch_size=4), preds)


def test_int8_before_any_adapter_waits_for_its_layout(diagnoser: Any) -> None:
    diagnoser.quantize_int8()
    _with_adapter(diagnoser, 1)  # LoRA attaches to float layers, then they turn int8
    assert diagnoser.diagnose(_cases()[:2], CANDIDATES, adapter="a")


def test_int8_scoring_the_base_model_first_refuses_a_later_layout(
    diagnoser: Any,
) -> None:
    diagnoser.quantize_int8()
    diagnoser.diagnose(_cases()[:2], CANDIDATES)
    with pytest.raises(ModelError, match="int8"):
        _with_adapter(diagnoser, 1)


def test_int8_decides_the_scoring_paths_on_the_float_model(
    diagnoser: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per-batch int8 activation scales make the path checks' equivalent computations differ
    (SmolLM2: by 0.2-0.5 relative), which would send every case down the slowest path."""
    from torch.ao.nn.quantized.dynamic import Linear as Int8Linear

    import feddx.model.scoring as scoring

    seen: list[bool] = []
    real = scoring.batch_pass_works

    def spy(model: Any, prompt_ids: Any) -> bool:
        seen.append(any(isinstance(m, Int8Linear) for m in model.modules()))
        return real(model, prompt_ids)

    monkeypatch.setattr(scoring, "batch_pass_works", spy)
    diagnoser.quantize_int8()
    _with_adapter(diagnoser, 1)
    diagnoser.prefix_cache = True
    diagnoser.diagnose(_cases(), CANDIDATES, adapter="a", batch_size=4)
    assert seen and seen[0] is False  # first (deciding) check ran before quantization
    assert diagnoser.model.__dict__.get(_BATCH_CHECKED) is None  # kept on the base model
    from feddx.model.adapter import unwrap_peft

    assert unwrap_peft(diagnoser.model).__dict__[_BATCH_CHECKED] is True


def test_a_bf16_model_on_the_cpu_scores_with_a_float32_head(
    tiny_model: Any, tokenizer: Any
) -> None:
    """bf16 on the CPU (the service's ``dtype``): the LM head becomes a float32 copy, so the
    logits are float32 products of the final states, and the batched, cached pass still
    gives one prompt at a time's scores, close to float32's."""
    import copy

    from feddx.model.predict import Diagnoser, float32_head

    assert not float32_head(copy.deepcopy(tiny_model))  # float32 already: left as it is
    half = copy.deepcopy(tiny_model).to(torch.bfloat16)
    original = half.get_output_embeddings().weight.detach().float().clone()
    d16 = Diagnoser(half, tokenizer, base_fingerprint="tiny-llama:test")
    head = d16.model.get_output_embeddings()
    assert head.weight.dtype == torch.float32 and torch.equal(head.weight, original)
    states = torch.randn(3, original.shape[1]).to(torch.bfloat16)
    assert torch.equal(head(states), states.float() @ original.T)
    d32 = Diagnoser(tiny_model, tokenizer, base_fingerprint="tiny-llama:test")
    cases = _cases()
    alone = d16.diagnose(cases, CANDIDATES)
    d16.prefix_cache = True
    cached = d16.diagnose(cases, CANDIDATES, batch_size=4)
    assert _close(cached, alone, tol=2e-2)  # bf16 rounding of an equivalent computation
    assert _close(cached, d32.diagnose(cases, CANDIDATES), tol=5e-2)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_in_bf16_gets_the_float32_head(family: str) -> None:
    """The float32 LM head on every architecture family the README lists (Bloom and Gemma 3
    included): the swap takes, the logits come out in float32, and they stay the bf16 model's
    logits within bf16 rounding."""
    from feddx.model.predict import float32_head

    model = make_tiny_model(family, 2000).to(torch.bfloat16)
    ids = torch.randint(0, 2000, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(ids).logits.float()
        assert float32_head(model)
        after = model(ids).logits
    assert after.dtype == torch.float32
    assert torch.allclose(after, before, atol=2e-2)
