"""Score a differential: every candidate diagnosis gets a probability from the LM itself.

Design (one forward pass per case):

* The candidates' answer token sequences (:func:`feddx.model.prompt.answer_ids`, closed by the
  end-of-turn token) are laid out once per candidate list as a prefix trie
  (:class:`CandidateSet`): candidates sharing a first word share its tokens.
* The prompt and the trie nodes go through the model in a **single** forward pass. Prompt
  tokens attend causally; each trie node attends to the whole prompt and to its own ancestors
  only (a "tree attention" mask) and sits at position ``len(prompt) + depth``, exactly where it
  would sit in a full ``prompt + candidate`` sequence. The result is therefore the same as one
  full forward per candidate (up to float rounding; ``tests/model/test_scoring.py`` checks it).
* Only nodes that have children are fed: a leaf (each candidate's closing end-of-turn token)
  predicts nothing we need. Vocabulary logits are computed only for the rows that predict a
  candidate token (``logits_to_keep`` with explicit positions), never for prompt positions.

Two scoring rules (``method``):

``"likelihood"``
    A candidate's score is its mean token log-likelihood under the full vocabulary (length
    normalisation, so long names are not penalised for being long). Probabilities are a softmax
    of the scores divided by a temperature (:func:`fit_temperature`, fitted on validation data).
    Exact full-vocabulary normalisation needs the log-sum-exp over all vocabulary logits at
    every trie node, so every node with children costs one token of forward pass plus one row
    of the LM head.
``"constrained"`` (default)
    The probability of generating the candidate when decoding is restricted to the candidate
    trie: at every node the next-token distribution is renormalised over that node's children.
    Scores are then log-probabilities that already sum to one over the candidates (temperature 1
    leaves them unchanged). A node with a single child contributes a factor of exactly 1, so only
    branching nodes need logits, and nothing below a candidate's last branching point needs to
    be run at all: for the 49 DDXPlus names this feeds about a third of the trie tokens.

The one-pass trie needs a model that takes explicit position ids with a 4-D mask; each model
is checked once (:func:`trie_pass_works`), and one that does not (Bloom's ALiBi positions) is
scored one ``prompt + candidate`` sequence per candidate instead: the same numbers, slower.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from feddx.model.prompt import answer_ids

log = logging.getLogger(__name__)

ScoringMethod = Literal["likelihood", "constrained"]
SCORING_METHODS: tuple[ScoringMethod, ...] = ("likelihood", "constrained")
# The default meets the cost target (scoring 49 DDXPlus candidates at ~1.15x the prompt pass,
# against ~2x for exact full-vocabulary likelihoods) with better raw calibration and the same
# top-1 in our measurements (benchmarks/bench_scoring.py).
DEFAULT_METHOD: ScoringMethod = "constrained"


@dataclass(frozen=True)
class ScoredCandidate:
    """One candidate diagnosis with its calibrated probability and raw score.

    ``score`` is the mean token log-likelihood (``"likelihood"``) or the trie-constrained
    log-probability (``"constrained"``); ``probability`` is ``softmax(score / temperature)``
    over the candidate list.
    """

    name: str
    probability: float
    score: float
    icd10: str | None = None


@dataclass(frozen=True)
class _TriePlan:
    """Which trie nodes one scoring rule feeds, and where each needed log-prob comes from.

    Row 0 of the kept logits is the last prompt position; row ``1 + j`` is fed node ``j``.
    """

    node_tokens: torch.Tensor  # (F,) token id of each fed node
    node_depths: torch.Tensor  # (F,) depth below the prompt (0 = first answer token)
    ancestors: torch.Tensor  # (F, F) bool: fed node i may attend to fed node j
    logit_rows: torch.Tensor  # (R,) rows of [prompt end, fed nodes...] whose logits are needed
    # Every (candidate, token) pair that contributes to a score:
    pair_row: torch.Tensor  # (T,) index into logit_rows
    pair_token: torch.Tensor  # (T,) the token predicted at that row
    pair_candidate: torch.Tensor  # (T,) which candidate the pair belongs to
    pair_depth: torch.Tensor  # (T,) the position of the predicted token in its candidate
    # "constrained" only: per kept row, its children's tokens (padded with -1).
    child_tokens: torch.Tensor | None
    sequences: tuple[tuple[int, ...], ...] = ()  # the candidates' token ids


@dataclass(frozen=True)
class CandidateSet:
    """A validated candidate list, tokenised and laid out as a trie once.

    Build it with :func:`prepare_candidates` and reuse it for every case: the tokenisation and
    the trie are the same for all of them. ``icd10`` maps a candidate name to its code.
    """

    names: tuple[str, ...]
    token_ids: tuple[tuple[int, ...], ...]
    icd10: Mapping[str, str]
    plans: Mapping[str, _TriePlan]

    def __len__(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        """Position of ``name`` in the list; :class:`ValueError` naming it if absent."""
        try:
            return self.names.index(name)
        except ValueError:
            raise ValueError(f"{name!r} is not in the candidate list") from None

    def n_fed_tokens(self, method: ScoringMethod = DEFAULT_METHOD) -> int:
        """How many trie tokens one case feeds through the model besides its prompt."""
        return int(self.plans[method].node_tokens.numel())


def validate_candidates(candidates: Sequence[str]) -> None:
    """Raise :class:`ValueError` for an empty list, a blank name or duplicated names."""
    if not candidates:
        raise ValueError("candidate list is empty")
    blank = [i for i, c in enumerate(candidates) if not c or not c.strip()]
    if blank:
        raise ValueError(f"candidate list has blank names at positions {blank}")
    dups = sorted(name for name, n in Counter(candidates).items() if n > 1)
    if dups:
        raise ValueError(f"candidate list has duplicates: {', '.join(map(repr, dups))}")


def _build_trie(
    sequences: Sequence[Sequence[int]],
) -> tuple[list[int], list[int], list[int], list[list[int]]]:
    """Nodes (token, parent, depth) in creation order (parents first) and each sequence's path."""
    tokens: list[int] = []
    parents: list[int] = []
    depths: list[int] = []
    paths: list[list[int]] = []
    children: dict[tuple[int, int], int] = {}
    for seq in sequences:
        parent, path = -1, []
        for depth, tok in enumerate(seq):
            node = children.get((parent, tok))
            if node is None:
                node = len(tokens)
                children[(parent, tok)] = node
                tokens.append(tok)
                parents.append(parent)
                depths.append(depth)
            path.append(node)
            parent = node
        paths.append(path)
    return tokens, parents, depths, paths


def trie_choices(sequences: Sequence[Sequence[int]]) -> list[tuple[tuple[int, ...], ...]]:
    """For every sequence and position, the tokens that may come next after that prefix in
    some sequence (sorted; the sequence's own token among them).

    These are the supports of the renormalised next-token distributions of ``"constrained"``
    scoring: training with a softmax over exactly these tokens (``answer_loss="candidates"``)
    optimises the probabilities that this scoring ranks by.
    """
    following: dict[tuple[int, ...], set[int]] = {}
    for seq in sequences:
        for k, tok in enumerate(seq):
            following.setdefault(tuple(seq[:k]), set()).add(int(tok))
    return [
        tuple(tuple(sorted(following[tuple(seq[:k])])) for k in range(len(seq)))
        for seq in sequences
    ]


def _plan(sequences: Sequence[Sequence[int]], method: ScoringMethod) -> _TriePlan:
    tokens, parents, depths, paths = _build_trie(sequences)
    n = len(tokens)
    kids: list[list[int]] = [[] for _ in range(n + 1)]  # index n: the root (prompt end)
    for node, parent in enumerate(parents):
        kids[parent if parent >= 0 else n].append(node)

    # Rows whose next-token distribution a score needs (a node id, or -1 for the prompt end).
    if method == "likelihood":
        needed = [-1] + [v for v in range(n) if kids[v]]
    else:
        needed = [v for v in [-1, *range(n)] if len(kids[v if v >= 0 else n]) >= 2]
    # Fed nodes: every needed node and its ancestors, in creation (topological) order.
    fed_flags = [False] * n
    for v in needed:
        while v >= 0 and not fed_flags[v]:
            fed_flags[v] = True
            v = parents[v]
    fed = [v for v in range(n) if fed_flags[v]]
    slot = {v: j for j, v in enumerate(fed)}

    ancestors = torch.zeros(len(fed), len(fed), dtype=torch.bool)
    for j, v in enumerate(fed):  # parents come first, so their rows are complete
        p = parents[v]
        if p >= 0:
            ancestors[j] = ancestors[slot[p]]
        ancestors[j, j] = True

    row_of = {v: r for r, v in enumerate(needed)}
    pair_row: list[int] = []
    pair_token: list[int] = []
    pair_candidate: list[int] = []
    pair_depth: list[int] = []
    for c, (seq, path) in enumerate(zip(sequences, paths, strict=True)):
        for k, tok in enumerate(seq):
            prev = path[k - 1] if k else -1
            if prev in row_of:  # absent only for single-child nodes under "constrained"
                pair_row.append(row_of[prev])
                pair_token.append(tok)
                pair_candidate.append(c)
                pair_depth.append(k)

    child_tokens = None
    if method == "constrained":
        width = max(len(kids[v if v >= 0 else n]) for v in needed) if needed else 1
        child_tokens = torch.full((len(needed), width), -1, dtype=torch.long)
        for r, v in enumerate(needed):
            ks = [tokens[k] for k in kids[v if v >= 0 else n]]
            child_tokens[r, : len(ks)] = torch.tensor(ks)

    return _TriePlan(
        node_tokens=torch.tensor([tokens[v] for v in fed], dtype=torch.long),
        node_depths=torch.tensor([depths[v] for v in fed], dtype=torch.long),
        ancestors=ancestors,
        logit_rows=torch.tensor([0 if v < 0 else 1 + slot[v] for v in needed], dtype=torch.long),
        pair_row=torch.tensor(pair_row, dtype=torch.long),
        pair_token=torch.tensor(pair_token, dtype=torch.long),
        pair_candidate=torch.tensor(pair_candidate, dtype=torch.long),
        pair_depth=torch.tensor(pair_depth, dtype=torch.long),
        child_tokens=child_tokens,
        sequences=tuple(tuple(int(t) for t in seq) for seq in sequences),
    )


def prepare_candidate_ids(
    names: Sequence[str],
    token_ids: Sequence[Sequence[int]],
    icd10: Mapping[str, str] | None = None,
) -> CandidateSet:
    """A :class:`CandidateSet` from already tokenised answers (no tokenizer needed)."""
    validate_candidates(names)
    if len(token_ids) != len(names):
        raise ValueError("need one token sequence per candidate")
    seqs = tuple(tuple(int(t) for t in s) for s in token_ids)
    empty = [names[i] for i, s in enumerate(seqs) if not s]
    if empty:
        raise ValueError(f"candidates with no answer tokens: {', '.join(map(repr, empty))}")
    by_ids: dict[tuple[int, ...], str] = {}
    for name, s in zip(names, seqs, strict=True):
        if s in by_ids:
            raise ValueError(f"candidates {by_ids[s]!r} and {name!r} tokenise identically")
        by_ids[s] = name
    return CandidateSet(
        names=tuple(names),
        token_ids=seqs,
        icd10=dict(icd10 or {}),
        plans={m: _plan(seqs, m) for m in SCORING_METHODS},
    )


def prepare_candidates(
    tokenizer: Any, candidates: Sequence[str], icd10: Mapping[str, str] | None = None
) -> CandidateSet:
    """Validate, tokenise (with :func:`answer_ids`) and lay out ``candidates`` as a trie.

    Raises :class:`ValueError` for an empty list, blank or duplicated names, or two names that
    tokenise identically.
    """
    validate_candidates(candidates)
    return prepare_candidate_ids(candidates, [answer_ids(tokenizer, c) for c in candidates], icd10)


def _model_device_dtype(model: Any) -> tuple[torch.device, torch.dtype]:
    """Where the model's hidden states live: its input embeddings' device and dtype (a
    quantized model's first parameter may be an integer tensor; its embeddings are not)."""
    weight = model.get_input_embeddings().weight
    dtype = weight.dtype if weight.dtype.is_floating_point else torch.float32
    return weight.device, dtype


def trie_forward_inputs(
    prompt_ids: Sequence[int], plan: _TriePlan, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The one forward pass that scores ``plan`` after ``prompt_ids``: token ids ``[T]``,
    position ids ``[T]``, the additive tree attention mask ``[T, T]`` and the rows ``[R]`` whose
    logits are needed (the prompt's last position and the trie's branching nodes)."""
    p = len(prompt_ids)
    if p == 0:
        raise ValueError("prompt is empty")
    f = int(plan.node_tokens.numel())
    ids = torch.cat([torch.as_tensor(list(prompt_ids), dtype=torch.long), plan.node_tokens])
    positions = torch.cat(
        [torch.arange(p, dtype=torch.long), p + plan.node_depths]
    )  # a node sits where it would in the full prompt + candidate sequence
    allowed = torch.zeros(p + f, p + f, dtype=torch.bool)
    allowed[:p, :p] = torch.ones(p, p, dtype=torch.bool).tril_()
    allowed[p:, :p] = True
    allowed[p:, p:] = plan.ancestors
    mask = torch.zeros(p + f, p + f, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    # Logits only where a candidate token is predicted: the prompt's last position and the
    # needed trie nodes. Prompt positions never touch the LM head.
    keep = torch.where(plan.logit_rows == 0, p - 1, p - 1 + plan.logit_rows)
    return ids, positions, mask, keep


def pair_log_probs(logits: torch.Tensor, plan: _TriePlan, method: ScoringMethod) -> torch.Tensor:
    """Log-probability of every (candidate, token) pair of ``plan`` (float64) from the logits
    ``[R, V]`` of the rows :func:`trie_forward_inputs` keeps."""
    logits = logits.float()
    if method == "likelihood":
        lse = torch.logsumexp(logits, dim=-1)
    else:
        assert plan.child_tokens is not None
        child = plan.child_tokens.to(logits.device)
        child_logits = logits.gather(1, child.clamp(min=0))
        child_logits = child_logits.masked_fill(child < 0, -math.inf)
        lse = torch.logsumexp(child_logits, dim=-1)
    rows = plan.pair_row.to(logits.device)
    tok = plan.pair_token.to(logits.device)
    return (logits[rows, tok] - lse[rows]).double().cpu()


def scores_from_pair_log_probs(
    lps: torch.Tensor, candidates: CandidateSet, method: ScoringMethod
) -> list[float]:
    """Each candidate's raw score (in ``candidates.names`` order) from its pairs' log-probs:
    the sum (``constrained``) or the per-token mean (``likelihood``)."""
    plan = candidates.plans[method]
    n = len(candidates)
    sums = torch.zeros(n, dtype=torch.float64).index_add_(0, plan.pair_candidate, lps)
    if method == "constrained":
        return [float(x) for x in sums]
    lengths = torch.tensor([len(s) for s in candidates.token_ids], dtype=torch.float64)
    return [float(x) for x in sums / lengths]


def _plan_token_log_probs(
    model: Any, prompt_ids: Sequence[int], plan: _TriePlan, method: ScoringMethod
) -> torch.Tensor:
    """Log-probability of every (candidate, token) pair of ``plan`` for one prompt (float64):
    in the one trie pass where the model reproduces full sequences that way, else from one
    sequence per candidate (:func:`trie_pass_works`)."""
    if not prompt_ids:
        raise ValueError("prompt is empty")
    if not trie_pass_works(model, prompt_ids):
        return _sequence_pair_log_probs(model, prompt_ids, plan, method)
    return _trie_pair_log_probs(model, prompt_ids, plan, method)


def _trie_pair_log_probs(
    model: Any, prompt_ids: Sequence[int], plan: _TriePlan, method: ScoringMethod
) -> torch.Tensor:
    device, dtype = _model_device_dtype(model)
    ids, positions, mask, keep = trie_forward_inputs(prompt_ids, plan, dtype)
    out = model(
        input_ids=ids[None].to(device),
        attention_mask=mask[None, None].to(device),
        position_ids=positions[None].to(device),
        logits_to_keep=keep.to(device),
        use_cache=False,
    )
    return pair_log_probs(out.logits[0], plan, method)


_TRIE_CHECKED = "_feddx_trie_pass_works"


def trie_pass_works(model: Any, prompt_ids: Sequence[int]) -> bool:
    """Whether the one-pass trie (tree mask, explicit positions) gives ``model`` the same
    log-probabilities as full sequences, checked once per model on a short probe cut from
    ``prompt_ids``. Models whose positions come from the mask rather than position ids
    (Bloom's ALiBi) or that refuse a 4-D mask fail it and are scored one sequence per
    candidate instead (logged once)."""
    from feddx.model.adapter import unwrap_peft
    from feddx.model.decoder import split_tolerance

    base = unwrap_peft(model)
    verdict = base.__dict__.get(_TRIE_CHECKED)
    if verdict is None:
        probe = list(prompt_ids[:12])
        plan = _plan([[1, 2], [1, 3, 4], [5]], "likelihood")
        try:
            with torch.inference_mode():
                trie = _trie_pair_log_probs(model, probe, plan, "likelihood")
                full = _sequence_pair_log_probs(model, probe, plan, "likelihood")
            _, dtype = _model_device_dtype(model)
            diff = float((trie - full).abs().max()) / (float(full.abs().max()) + 1.0)
            verdict = diff <= split_tolerance(dtype)
            reason = f"it differs from full sequences by {diff:.1e}"
        except (RuntimeError, ValueError, TypeError, IndexError) as e:
            verdict, reason = False, f"{type(e).__name__}: {(str(e).splitlines() or ['?'])[0]}"
        if not verdict:
            log.info(
                "%s: scoring one sequence per candidate (the one-pass trie does not apply: %s)",
                type(base).__name__,
                reason,
            )
        base.__dict__[_TRIE_CHECKED] = verdict
    return bool(verdict)


def _sequence_pair_log_probs(
    model: Any, prompt_ids: Sequence[int], plan: _TriePlan, method: ScoringMethod
) -> torch.Tensor:
    """What :func:`_trie_pair_log_probs` computes, from one right-padded ``prompt +
    candidate`` sequence per candidate through the model's own backbone: correct for any
    causal LM, at one prompt pass per candidate."""
    from feddx.model.decoder import BackboneRunner

    runner = BackboneRunner(model)
    p = len(prompt_ids)
    # Each needed row's (candidate, depth): the first candidate whose path passes through it.
    source: dict[int, tuple[int, int]] = {}
    for r, c, k in zip(
        plan.pair_row.tolist(), plan.pair_candidate.tolist(), plan.pair_depth.tolist(), strict=True
    ):
        source.setdefault(r, (c, k))
    depth = {c: max(k for c2, k in source.values() if c2 == c) for c, _ in source.values()}
    order = sorted(depth)
    width = p + max(depth.values())
    ids = torch.zeros(len(order), width, dtype=torch.long)
    for i, c in enumerate(order):
        seq = list(prompt_ids) + list(plan.sequences[c][: depth[c]])
        ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    n_rows = int(plan.logit_rows.numel())
    rows = torch.tensor([order.index(source[r][0]) for r in range(n_rows)])
    cols = torch.tensor([p - 1 + source[r][1] for r in range(n_rows)])
    states = runner.final_states(runner.embed(ids))
    logits = runner.logits(states[rows.to(states.device), cols.to(states.device)])
    return pair_log_probs(logits, plan, method)


def candidate_scores(
    model: Any,
    prompt_ids: Sequence[int],
    candidates: CandidateSet,
    *,
    method: ScoringMethod = DEFAULT_METHOD,
) -> list[float]:
    """Raw score of every candidate (in ``candidates.names`` order) for one rendered prompt."""
    if method not in SCORING_METHODS:
        raise ValueError(f"unknown scoring method {method!r}; choose one of {SCORING_METHODS}")
    plan = candidates.plans[method]
    with torch.inference_mode():
        lps = _plan_token_log_probs(model, prompt_ids, plan, method)
    return scores_from_pair_log_probs(lps, candidates, method)


@dataclass(frozen=True)
class PrefixKV:
    """The keys and values a model state computed for a prompt prefix many prompts share (the
    chat template and system prompt), kept so that each prompt's pass starts after it.

    Position ``i``'s keys and values depend on tokens ``0..i`` only, so a prompt may reuse the
    first ``n`` of them whenever its first ``n`` tokens equal ``ids[:n]``: the reuse is exact,
    not an approximation. Valid only for the weights it was computed with (an adapter swap
    needs another one; :class:`~feddx.model.predict.Diagnoser` keeps one per adapter).
    """

    ids: tuple[int, ...]
    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]  # per layer (keys, values) [1,H,P,D]

    def shared_with(self, prompt_ids: Sequence[int]) -> int:
        """How many leading tokens ``prompt_ids`` shares with this prefix."""
        n = 0
        for a, b in zip(self.ids, prompt_ids, strict=False):
            if a != b:
                break
            n += 1
        return n

    def crop(self, n: int) -> PrefixKV:
        """The first ``n`` positions only."""
        return PrefixKV(self.ids[:n], tuple((k[:, :, :n], v[:, :, :n]) for k, v in self.layers))


def prefix_kv(model: Any, prefix_ids: Sequence[int]) -> PrefixKV | None:
    """The keys and values of ``prefix_ids`` under ``model``'s current weights, or ``None``
    when the model's cache is not the per-layer key/value kind (then prompts run whole)."""
    if not prefix_ids:
        return None
    device, _ = _model_device_dtype(model)
    with torch.inference_mode():
        out = model(
            input_ids=torch.tensor([list(prefix_ids)], device=device),
            use_cache=True,
            logits_to_keep=1,
        )
    layers = getattr(getattr(out, "cache", None), "layers", None)
    if not layers or any(getattr(layer, "keys", None) is None for layer in layers):
        return None
    return PrefixKV(tuple(int(t) for t in prefix_ids), tuple((x.keys, x.values) for x in layers))


def _past_for_batch(model: Any, prefix: PrefixKV, rows: int) -> Any:
    """A fresh cache holding ``prefix`` once per batch row (the forward appends to it)."""
    from transformers import DynamicCache

    from feddx.model.adapter import unwrap_peft

    cache = DynamicCache(config=unwrap_peft(model).config)
    for i, (k, v) in enumerate(prefix.layers):
        cache.update(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1), i)
    return cache


def batch_forward_inputs(
    suffixes: Sequence[Sequence[int]], plan: _TriePlan, dtype: torch.dtype, offset: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward pass scoring ``plan`` after each of several prompts: token ids ``[B, W]``,
    position ids ``[B, W]``, the additive mask ``[B, 1, W, offset + W]`` and the columns
    ``[R]`` whose logits are needed, the same for every row.

    Each row is one prompt (after ``offset`` tokens of cached prefix, which every real token
    sees) **left-padded** so that all prompts end in the same column, followed by the trie
    nodes: the rows needing logits then sit in the same columns of every row and the LM head
    runs on ``B * R`` rows only. Padding is masked out of every key axis and attends to itself
    (and its row's prompt: its outputs are never read); positions are explicit (``offset + j`` for prompt token ``j``, then the trie's
    depths), so absolute (GPT-2, GPT-Neo) and rotary (Llama, Qwen2, Mistral, Gemma 3, Phi-3)
    positions both come out as in a one-prompt pass."""
    if not suffixes or any(len(s) == 0 for s in suffixes):
        raise ValueError("prompt is empty")
    f = int(plan.node_tokens.numel())
    m = max(len(s) for s in suffixes)
    w, b = m + f, len(suffixes)
    tree = torch.zeros(w, w, dtype=torch.bool)
    tree[:m, :m] = torch.ones(m, m, dtype=torch.bool).tril_()
    tree[m:, :m] = True
    tree[m:, m:] = plan.ancestors
    ids = torch.zeros(b, w, dtype=torch.long)
    positions = torch.full((b, w), offset, dtype=torch.long)
    allowed = torch.zeros(b, w, offset + w, dtype=torch.bool)
    allowed[:, :, :offset] = True
    for r, suffix in enumerate(suffixes):
        pad, n = m - len(suffix), len(suffix)
        ids[r, pad:m] = torch.as_tensor(list(suffix), dtype=torch.long)
        ids[r, m:] = plan.node_tokens
        positions[r, pad:m] = torch.arange(offset, offset + n)
        positions[r, m:] = offset + n + plan.node_depths
        row = tree.clone()
        row[:, :pad] = False  # no real token sees padding
        # Padding's own outputs are never read; it sees its row's prompt and itself, so that it
        # does not act as a sequence's first token (whose outsized activations would widen an
        # int8 path's per-batch activation range for every row).
        row[:pad] = False
        row[:pad, pad:m] = True
        row[torch.arange(pad), torch.arange(pad)] = True
        allowed[r, :, offset:] = row
    mask = torch.zeros(b, 1, w, offset + w, dtype=dtype)
    mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
    keep = torch.where(plan.logit_rows == 0, m - 1, m - 1 + plan.logit_rows)
    return ids, positions, mask, keep


def _batch_pair_log_probs(
    model: Any,
    prompts: Sequence[Sequence[int]],
    plan: _TriePlan,
    method: ScoringMethod,
    prefix: PrefixKV | None,
) -> list[torch.Tensor]:
    """:func:`_trie_pair_log_probs` for several prompts in one forward pass, over the part
    of ``prefix`` they all share (each keeping at least one token of its own)."""
    device, dtype = _model_device_dtype(model)
    shared = 0
    if prefix is not None:
        shared = min(min(prefix.shared_with(p), len(p) - 1) for p in prompts)
    ids, positions, mask, keep = batch_forward_inputs(
        [p[shared:] for p in prompts], plan, dtype, shared
    )
    past = _past_for_batch(model, prefix.crop(shared), len(prompts)) if prefix and shared else None
    out = model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        cache=past,
        logits_to_keep=keep.to(device),
        use_cache=past is not None,
    )
    return [pair_log_probs(out.logits[r], plan, method) for r in range(len(prompts))]


_BATCH_CHECKED = "_feddx_batch_pass_works"


def batch_pass_works(model: Any, prompt_ids: Sequence[int]) -> bool:
    """Whether the batched pass (left padding, explicit positions, a cached prefix) gives
    ``model`` the one-prompt trie pass's log-probabilities, checked once per model on two
    probes of different lengths cut from ``prompt_ids``; if not, prompts are scored one by
    one (logged once)."""
    from feddx.model.adapter import unwrap_peft
    from feddx.model.decoder import split_tolerance

    base = unwrap_peft(model)
    verdict = base.__dict__.get(_BATCH_CHECKED)
    if verdict is None:
        probe = list(prompt_ids[:12])
        half = max(1, len(probe) // 2)
        probes = [probe + probe[:1], probe[:half] + probe[-1:]]
        plan = _plan([[1, 2], [1, 3, 4], [5]], "likelihood")
        try:
            with torch.inference_mode():
                one = [_trie_pair_log_probs(model, p, plan, "likelihood") for p in probes]
                cached = _batch_pair_log_probs(
                    model, probes, plan, "likelihood", prefix_kv(model, probe[:half])
                )
                plain = _batch_pair_log_probs(model, probes, plan, "likelihood", None)
            _, dtype = _model_device_dtype(model)
            diff = max(
                float((x - y).abs().max()) / (float(y.abs().max()) + 1.0)
                for got in (cached, plain)
                for x, y in zip(got, one, strict=True)
            )
            verdict = diff <= split_tolerance(dtype)
            reason = f"it differs from one prompt at a time by {diff:.1e}"
        except (RuntimeError, ValueError, TypeError, IndexError, AttributeError) as e:
            verdict, reason = False, f"{type(e).__name__}: {(str(e).splitlines() or ['?'])[0]}"
        if not verdict:
            log.info("%s: scoring prompts one at a time (%s)", type(base).__name__, reason)
        base.__dict__[_BATCH_CHECKED] = verdict
    return bool(verdict)


def batch_candidate_scores(
    model: Any,
    prompts: Sequence[Sequence[int]],
    candidates: CandidateSet,
    *,
    method: ScoringMethod = DEFAULT_METHOD,
    prefix: PrefixKV | None = None,
    max_rows: int = 16,
) -> list[list[float]]:
    """:func:`candidate_scores` for several prompts at once: up to ``max_rows`` prompts per
    forward pass (grouped by length, so little is padded), one candidate trie for all, and
    the keys and values of ``prefix`` reused where the prompts start with it. Equal to
    scoring each prompt alone up to float rounding; a model on which the batched pass does
    not reproduce that (:func:`batch_pass_works`, :func:`trie_pass_works`) is scored one
    prompt at a time."""
    if method not in SCORING_METHODS:
        raise ValueError(f"unknown scoring method {method!r}; choose one of {SCORING_METHODS}")
    if any(not p for p in prompts):
        raise ValueError("prompt is empty")
    if not prompts:
        return []
    plan = candidates.plans[method]
    out: list[list[float]] = [[] for _ in prompts]
    with torch.inference_mode():
        if not (trie_pass_works(model, prompts[0]) and batch_pass_works(model, prompts[0])):
            return [candidate_scores(model, p, candidates, method=method) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        for start in range(0, len(order), max(1, max_rows)):
            chunk = order[start : start + max(1, max_rows)]
            lps = _batch_pair_log_probs(model, [prompts[i] for i in chunk], plan, method, prefix)
            for i, lp in zip(chunk, lps, strict=True):
                out[i] = scores_from_pair_log_probs(lp, candidates, method)
    return out


def candidate_log_likelihoods(
    model: Any, prompt_ids: Sequence[int], candidate_ids: Sequence[Sequence[int]]
) -> list[list[float]]:
    """Per-token log-likelihoods (full vocabulary) of each candidate continuation of
    ``prompt_ids``, computed with the one-pass trie; token ``k`` of candidate ``i`` is
    ``log p(candidate_ids[i][k] | prompt, candidate_ids[i][:k])``."""
    if not candidate_ids or any(len(c) == 0 for c in candidate_ids):
        raise ValueError("every candidate needs at least one token")
    if len({tuple(c) for c in candidate_ids}) != len(candidate_ids):
        raise ValueError("candidate token sequences must be distinct")
    names = [f"#{i}" for i in range(len(candidate_ids))]
    plan = prepare_candidate_ids(names, candidate_ids).plans["likelihood"]
    with torch.inference_mode():
        lps = _plan_token_log_probs(model, prompt_ids, plan, "likelihood").tolist()
    out: list[list[float]] = [[] for _ in candidate_ids]
    for c, lp in zip(plan.pair_candidate.tolist(), lps, strict=True):
        out[c].append(lp)  # pairs are emitted candidate by candidate, token by token
    return out


def probabilities(scores: Sequence[float], temperature: float = 1.0) -> list[float]:
    """``softmax(scores / temperature)``; :class:`ValueError` for a non-positive temperature."""
    if not temperature > 0 or math.isinf(temperature):
        raise ValueError(f"temperature must be a positive finite number, got {temperature}")
    m = max(scores)
    weights = [math.exp((s - m) / temperature) for s in scores]
    z = sum(weights)
    return [w / z for w in weights]


def mixture_scores(member_scores: Sequence[Sequence[float]]) -> list[float]:
    """The scores of an ensemble: ``log`` of the mean of each member's probabilities
    (``softmax`` at temperature 1).

    Returned as scores, not probabilities, so everything downstream treats an ensemble like
    one model: at temperature 1 :func:`probabilities` gives back exactly the mean of the
    members' probabilities, and a temperature fitted on validation data calibrates the mixture.
    Averaging probabilities (not raw scores) keeps one over-confident member from outvoting
    the others.
    """
    if not member_scores:
        raise ValueError("an ensemble needs at least one member")
    n = len(member_scores[0])
    if any(len(m) != n for m in member_scores):
        raise ValueError("every member must score the same candidates")
    probs = [probabilities(m, 1.0) for m in member_scores]
    mean = [sum(p[i] for p in probs) / len(probs) for i in range(n)]
    return [math.log(max(x, 1e-300)) for x in mean]


def rank_scores(
    candidates: CandidateSet, scores: Sequence[float], temperature: float = 1.0
) -> list[ScoredCandidate]:
    """Turn raw scores into ranked :class:`ScoredCandidate` (most probable first; ties keep
    the candidate-list order, so a ranking is deterministic)."""
    probs = probabilities(scores, temperature)
    ranked = [
        ScoredCandidate(name, pr, s, candidates.icd10.get(name))
        for name, s, pr in zip(candidates.names, scores, probs, strict=True)
    ]
    order = sorted(range(len(ranked)), key=lambda i: (-scores[i], i))
    return [ranked[i] for i in order]


def score_candidates(
    model: Any,
    tokenizer: Any,
    prompt_ids: Sequence[int],
    candidates: Sequence[str] | CandidateSet,
    *,
    temperature: float = 1.0,
    icd10: Mapping[str, str] | None = None,
    method: ScoringMethod = DEFAULT_METHOD,
) -> list[ScoredCandidate]:
    """Rank ``candidates`` for a rendered prompt, most probable first, with ICD-10 codes.

    ``candidates`` is a list of names or a :class:`CandidateSet` (prepare it once when scoring
    many cases; ``icd10`` then adds to its codes). Raises :class:`ValueError` for an empty,
    blank or duplicated candidate list, an empty prompt, or a non-positive temperature.
    """
    probabilities([0.0], temperature)  # validate before the forward pass
    if not isinstance(candidates, CandidateSet):
        candidates = prepare_candidates(tokenizer, candidates, icd10)
    elif icd10:
        candidates = CandidateSet(
            candidates.names, candidates.token_ids, {**candidates.icd10, **icd10}, candidates.plans
        )
    scores = candidate_scores(model, prompt_ids, candidates, method=method)
    return rank_scores(candidates, scores, temperature)


def fit_temperature(score_rows: Sequence[Sequence[float]], gold: Sequence[int]) -> float:
    """The temperature minimising the negative log-likelihood of the gold candidates.

    ``score_rows[i]`` holds every candidate's raw score for validation case ``i`` and
    ``gold[i]`` the index of the right one. The NLL is convex in ``1/T`` (so unimodal in ``log T``): a
    coarse grid over ``log T`` in [-6, 4] brackets the optimum and a golden-section search
    refines it to about 1e-6 relative, with no optimiser state. Raises :class:`ValueError` for mismatched or
    empty inputs or a gold index out of range.
    """
    if not score_rows or len(score_rows) != len(gold):
        raise ValueError("need one gold index per row of scores")
    width = len(score_rows[0])
    if width == 0 or any(len(r) != width for r in score_rows):
        raise ValueError("every row of scores needs the same, non-zero number of candidates")
    if any(not 0 <= g < width for g in gold):
        raise ValueError(f"gold indices must be in [0, {width})")
    s = torch.tensor([list(r) for r in score_rows], dtype=torch.float64)
    g = torch.tensor(list(gold))
    rows = torch.arange(len(g))

    def nll(log_t: float) -> float:
        return float(-torch.log_softmax(s / math.exp(log_t), dim=-1)[rows, g].mean())

    grid = torch.linspace(-6.0, 4.0, 61).tolist()
    values = [nll(x) for x in grid]
    best = min(range(len(grid)), key=values.__getitem__)
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(40):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(b)
    return math.exp((lo + hi) / 2)
