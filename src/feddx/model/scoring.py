"""Score a differential: every candidate diagnosis gets a probability from the LM itself.

The prompt is run once. All candidates' answer tokens are then laid out as a prefix trie
(candidates sharing a first word share its tokens) and scored in a single forward pass over
the trie nodes, each node attending to the prompt's KV cache and to its own ancestors only
(a "tree attention" mask). The cost is one prompt pass plus one pass over the distinct trie
tokens, instead of one full forward per candidate.

A candidate's score is its mean token log-likelihood (length normalisation, so long names are
not penalised for being long); probabilities are a softmax of those scores divided by a
temperature that :func:`fit_temperature` fits on validation data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from feddx.model.prompt import answer_ids


@dataclass(frozen=True)
class ScoredCandidate:
    """One candidate diagnosis with its calibrated probability and raw score."""

    name: str
    probability: float
    score: float  # mean log-likelihood per answer token
    icd10: str | None = None


@dataclass
class _Trie:
    token_ids: list[int] = field(default_factory=list)  # one entry per node
    parents: list[int] = field(default_factory=list)  # -1: child of the prompt
    depths: list[int] = field(default_factory=list)
    paths: list[list[int]] = field(default_factory=list)  # per candidate: its node indices


def _build_trie(sequences: Sequence[Sequence[int]]) -> _Trie:
    trie = _Trie()
    children: dict[tuple[int, int], int] = {}
    for seq in sequences:
        parent, path = -1, []
        for depth, tok in enumerate(seq):
            node = children.get((parent, tok))
            if node is None:
                node = len(trie.token_ids)
                children[(parent, tok)] = node
                trie.token_ids.append(tok)
                trie.parents.append(parent)
                trie.depths.append(depth)
            path.append(node)
            parent = node
        trie.paths.append(path)
    return trie


def _tree_mask(trie: _Trie, prompt_len: int, dtype: torch.dtype) -> torch.Tensor:
    n = len(trie.token_ids)
    allowed = torch.zeros(n, prompt_len + n, dtype=torch.bool)
    allowed[:, :prompt_len] = True
    for i in range(n):
        j = i
        while j != -1:
            allowed[i, prompt_len + j] = True
            j = trie.parents[j]
    mask = torch.zeros(n, prompt_len + n, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None]


def _cache_of(out: Any) -> Any:
    # transformers 5.24 renamed the output field; accept either name.
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def candidate_log_likelihoods(
    model: Any, prompt_ids: Sequence[int], candidate_ids: Sequence[Sequence[int]]
) -> list[list[float]]:
    """Per-token log-likelihoods of each candidate continuation of ``prompt_ids``."""
    if not candidate_ids or any(len(c) == 0 for c in candidate_ids):
        raise ValueError("every candidate needs at least one token")
    with torch.inference_mode():
        return _tree_log_likelihoods(model, prompt_ids, candidate_ids)


def _tree_log_likelihoods(
    model: Any, prompt_ids: Sequence[int], candidate_ids: Sequence[Sequence[int]]
) -> list[list[float]]:
    device = next(model.parameters()).device
    prompt = torch.tensor([list(prompt_ids)], device=device)
    out = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
    first_logp = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
    trie = _build_trie(candidate_ids)
    p = len(prompt_ids)
    dtype = next(model.parameters()).dtype
    nodes = torch.tensor([trie.token_ids], device=device)
    positions = torch.tensor([[p + d for d in trie.depths]], device=device)
    out2 = model(
        input_ids=nodes,
        attention_mask=_tree_mask(trie, p, dtype).to(device),
        position_ids=positions,
        past_key_values=_cache_of(out),
        use_cache=False,
    )
    node_logp = torch.log_softmax(out2.logits[0].float(), dim=-1)
    results: list[list[float]] = []
    for seq, path in zip(candidate_ids, trie.paths, strict=True):
        lps = [float(first_logp[seq[0]])]
        for k in range(1, len(seq)):
            lps.append(float(node_logp[path[k - 1], seq[k]]))
        results.append(lps)
    return results


def score_candidates(
    model: Any,
    tokenizer: Any,
    prompt_ids: Sequence[int],
    candidates: Sequence[str],
    *,
    temperature: float = 1.0,
    icd10: dict[str, str] | None = None,
) -> list[ScoredCandidate]:
    """Rank ``candidates`` for a rendered prompt, most probable first.

    Raises :class:`ValueError` for an empty or duplicated candidate list or a non-positive
    temperature.
    """
    if not candidates:
        raise ValueError("candidate list is empty")
    if len(set(candidates)) != len(candidates):
        raise ValueError("candidate list has duplicates")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    seqs = [answer_ids(tokenizer, c) for c in candidates]
    lls = candidate_log_likelihoods(model, prompt_ids, seqs)
    scores = [sum(x) / len(x) for x in lls]
    m = max(scores)
    weights = [math.exp((s - m) / temperature) for s in scores]
    z = sum(weights)
    ranked = sorted(
        (
            ScoredCandidate(c, w / z, s, (icd10 or {}).get(c))
            for c, s, w in zip(candidates, scores, weights, strict=True)
        ),
        key=lambda r: -r.probability,
    )
    return ranked


def fit_temperature(score_rows: Sequence[Sequence[float]], gold: Sequence[int]) -> float:
    """The temperature minimising the negative log-likelihood of the gold candidates.

    ``score_rows[i]`` holds every candidate's raw score for validation case ``i`` and
    ``gold[i]`` the index of the right one. A 1-D search over log-temperature is enough for
    one parameter and needs no optimiser state.
    """
    if not score_rows or len(score_rows) != len(gold):
        raise ValueError("need one gold index per row of scores")
    s = torch.tensor([list(r) for r in score_rows], dtype=torch.float64)
    g = torch.tensor(list(gold))
    best_t, best_nll = 1.0, math.inf
    for log_t in torch.linspace(-4.0, 3.0, 141).tolist():
        t = math.exp(log_t)
        nll = float(-torch.log_softmax(s / t, dim=-1)[torch.arange(len(g)), g].mean())
        if nll < best_nll:
            best_t, best_nll = t, nll
    return best_t
