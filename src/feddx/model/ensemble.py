"""Scoring with an ensemble of LoRA adapters that share one base model.

Adapters trained with different seeds make different mistakes, so averaging their candidate
probabilities is more accurate than any one of them (results/training.md). Run naively, an
ensemble of ``K`` adapters costs ``K`` forward passes per case. But when the adapters sit on
the top layers only (``lora.top_layers``, how feddx trains on CPU), every layer below them is
the frozen base model for all members: the prompt-plus-trie pass runs through those layers
once, and only the top layers, the final norm and the kept LM-head rows run once per member.
With SmolLM2 and adapters on 4 of 30 layers, two members cost 1.21x one adapter
(``benchmarks/bench_scoring.py``; 2.02x as two full passes).

Models the split forward does not reproduce (see :func:`feddx.model.decoder.choose_runner`:
other layouts, prompts beyond a sliding window) fall back to one full pass per member, with
the same result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from feddx.errors import ModelError
from feddx.model.adapter import first_adapted_layer, load_adapter_state, validate_state
from feddx.model.decoder import DecoderRunner, choose_runner
from feddx.model.scoring import (
    CandidateSet,
    ScoringMethod,
    candidate_scores,
    mixture_scores,
    pair_log_probs,
    scores_from_pair_log_probs,
    trie_forward_inputs,
)


class EnsembleScorer:
    """Candidate scores of an adapter ensemble for one prompt at a time.

    ``model`` is a LoRA-attached model; ``members`` are LoRA states of its layout
    (:func:`~feddx.model.adapter.adapter_state`), checked here once
    (:func:`~feddx.model.adapter.validate_state`) unless the caller already did
    (``validated=True``), so the per-case swaps only copy tensors. Each call swaps every
    member's tensors into ``model`` in turn and leaves the first one loaded.
    """

    def __init__(
        self,
        model: Any,
        members: Sequence[Mapping[str, torch.Tensor]],
        *,
        validated: bool = False,
    ) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.model = model
        self.members = [dict(m) for m in members]
        if not validated:
            for state in self.members:
                validate_state(model, state)
        self.runner: DecoderRunner | None = None
        self.split = 0
        try:
            self.runner = DecoderRunner(model)
            self.split = first_adapted_layer(model)
        except ModelError:
            self.runner = None  # not Llama-style: one full pass per member

    def member_scores(
        self, prompt_ids: Sequence[int], candidates: CandidateSet, method: ScoringMethod
    ) -> list[list[float]]:
        """Every member's raw candidate scores, in member order."""
        plan = candidates.plans[method]
        length = len(prompt_ids) + int(plan.node_tokens.numel())
        if (
            self.runner is None
            or self.split == 0
            or choose_runner(self.model, prompt_ids[:24], length).path != "split"
        ):
            out = []
            for state in self.members:
                load_adapter_state(self.model, state, validated=True)
                out.append(candidate_scores(self.model, prompt_ids, candidates, method=method))
            self._restore()
            return out
        runner = self.runner
        with torch.inference_mode():
            ids, positions, mask, keep = trie_forward_inputs(prompt_ids, plan, runner.dtype)
            device = runner.device
            hidden = runner.embed(ids[None])
            rotary = runner.rotary(hidden, positions[None].to(device))
            attn = mask[None, None].to(device)
            trunk = runner.run_layers(hidden, 0, self.split, rotary=rotary, attention_mask=attn)
            out = []
            for state in self.members:
                load_adapter_state(self.model, state, validated=True)
                top = runner.run_layers(
                    trunk, self.split, runner.n_layers, rotary=rotary, attention_mask=attn
                )
                logits = runner.logits(top[0, keep.to(device)])
                lps = pair_log_probs(logits, plan, method)
                out.append(scores_from_pair_log_probs(lps, candidates, method))
        self._restore()
        return out

    def scores(
        self, prompt_ids: Sequence[int], candidates: CandidateSet, method: ScoringMethod
    ) -> list[float]:
        """The ensemble's scores: the log of the members' mean probability per candidate."""
        return mixture_scores(self.member_scores(prompt_ids, candidates, method))

    def _restore(self) -> None:
        if len(self.members) > 1:
            load_adapter_state(self.model, self.members[0], validated=True)


__all__ = ["EnsembleScorer"]
