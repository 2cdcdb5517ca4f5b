"""Scoring cost: 49 DDXPlus candidates against the prompt's forward pass alone, and against one
full forward per candidate.

    .venv/bin/python benchmarks/bench_scoring.py [--prompts 20] [--naive-prompts 5] [--repeats 3]

For each real DDXPlus prompt (from ``../shared/data/ddxplus`` via the feddx loader), measured
in the same process, interleaved prompt by prompt, each the minimum of ``--repeats`` runs (the
minimum is the least noisy estimate on a shared machine):

* ``prompt``: the prompt's forward pass alone (``logits_to_keep=1``, no cache): the floor any
  scorer pays to read the case;
* ``likelihood``: :func:`feddx.model.scoring.candidate_scores`, mean full-vocabulary token
  log-likelihood of all 49 candidates (one pass over prompt + candidate trie);
* ``constrained``: the same with trie-constrained decoding probabilities;
* ``naive``: one full forward of prompt + candidate per candidate (logits only at the
  candidate's positions), on the first ``--naive-prompts`` prompts (it is ~50x slower).

With ``--ensemble K`` (default 2; 0 skips it), the model then gets LoRA adapters on every
linear module of its top ``--top-layers`` layers (how feddx trains on CPU) and ``K`` random
adapter states, and three more rows are measured the same way (constrained scoring):

* ``adapter``: one adapter, the ordinary single-model path;
* ``ens-shared``: the ``K``-adapter ensemble of :class:`feddx.model.ensemble.EnsembleScorer`
  (the frozen layers below the adapters run once per case);
* ``ens-naive``: ``K`` full passes, one per adapter (what an ensemble costs without sharing);

with the largest difference between the shared and the naive members' scores.

Prints times, the ratios to the prompt pass (sum over prompts, and the median per-prompt
ratio), the number of trie tokens each rule feeds, and the largest difference between the
one-pass scores and the naive ones (exactness). Never asserts: figures only.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "ddxplus"


def _min_time(fn: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _candidates(path: Path) -> tuple[list[str], dict[str, str]]:
    try:
        from feddx.data.ddxplus import ddxplus_candidates, ddxplus_icd10

        return ddxplus_candidates(path), ddxplus_icd10(path)
    except ImportError:
        conditions = json.loads((path / "release_conditions.json").read_text())
        return list(conditions), {k: v.get("icd10-id", "") for k, v in conditions.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=SHARED, help="DDXPlus release directory")
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--naive-prompts", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ensemble", type=int, default=2, help="adapters in the ensemble rows")
    ap.add_argument("--top-layers", type=int, default=4, help="adapted layers (ensemble rows)")
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"skipped: DDXPlus data not found at {args.data}")
        return 0

    import torch

    from feddx.data.sources import load_source
    from feddx.model.loading import load_base_model
    from feddx.model.prompt import render_prompt
    from feddx.model.scoring import candidate_scores, prepare_candidates

    loaded = load_base_model()
    model, tok = loaded.model, loaded.tokenizer
    names, icd10 = _candidates(args.data)
    cset = prepare_candidates(tok, names, icd10)
    cases = list(itertools.islice(load_source("ddxplus", args.data), args.prompts))
    prompts = [render_prompt(c, tok).input_ids for c in cases]
    lengths = [len(p) for p in prompts]
    print(
        f"model {loaded.source.name}, torch threads {torch.get_num_threads()}, "
        f"{len(names)} candidates ({sum(map(len, cset.token_ids))} answer tokens), "
        f"{len(prompts)} prompts of {min(lengths)}-{max(lengths)} tokens "
        f"(median {statistics.median(lengths):.0f})"
    )
    print(
        f"trie tokens fed per case: likelihood {cset.n_fed_tokens('likelihood')}, "
        f"constrained {cset.n_fed_tokens('constrained')}"
    )

    def prompt_pass(ids: list[int]) -> None:
        model(input_ids=torch.tensor([ids]), use_cache=False, logits_to_keep=1)

    def naive(ids: list[int]) -> list[float]:
        scores = []
        for seq in cset.token_ids:
            logits = (
                model(
                    input_ids=torch.tensor([ids + list(seq)]),
                    use_cache=False,
                    logits_to_keep=len(seq) + 1,
                )
                .logits[0, :-1]
                .float()
            )
            lp = torch.log_softmax(logits, dim=-1)[torch.arange(len(seq)), torch.tensor(seq)]
            scores.append(float(lp.mean()))
        return scores

    times: dict[str, list[float]] = {"prompt": [], "likelihood": [], "constrained": [], "naive": []}
    worst_diff = 0.0
    with torch.inference_mode():
        prompt_pass(prompts[0])  # warm-up (allocator, kernels)
        candidate_scores(model, prompts[0], cset, method="likelihood")
        for i, ids in enumerate(prompts):
            runs = {
                "prompt": partial(prompt_pass, ids),
                "likelihood": partial(candidate_scores, model, ids, cset, method="likelihood"),
                "constrained": partial(candidate_scores, model, ids, cset, method="constrained"),
            }
            for name, run in runs.items():
                times[name].append(_min_time(run, args.repeats))
            if i < args.naive_prompts:
                start = time.perf_counter()
                ref = naive(ids)
                times["naive"].append(time.perf_counter() - start)
                ours = candidate_scores(model, ids, cset, method="likelihood")
                worst_diff = max(
                    worst_diff, max(abs(a - b) for a, b in zip(ours, ref, strict=True))
                )
            print(f"  prompt {i + 1}/{len(prompts)} ({len(ids)} tokens) done", file=sys.stderr)

    ens_diff = _ensemble_rows(model, prompts, cset, times, args) if args.ensemble > 0 else None

    base = times["prompt"]
    print(f"\n{'method':<12} {'median s':>9} {'sum/sum(prompt)':>16} {'median ratio':>13}")
    for name, ts in times.items():
        if not ts:
            continue
        ref = base[: len(ts)]
        ratio_sum = sum(ts) / sum(ref)
        ratio_med = statistics.median(t / b for t, b in zip(ts, ref, strict=True))
        print(f"{name:<12} {statistics.median(ts):>9.3f} {ratio_sum:>16.2f} {ratio_med:>13.2f}")
    n = len(times["naive"])
    if n:
        lik = sum(times["likelihood"][:n])
        print(
            f"\nnaive (one forward per candidate) / one-pass likelihood: "
            f"{sum(times['naive']) / lik:.1f}x on {n} prompts; "
            f"largest |score difference|: {worst_diff:.2e}"
        )
    if ens_diff is not None:
        k = args.ensemble
        shared, naive_k, one = (sum(times[n]) for n in ("ens-shared", "ens-naive", "adapter"))
        print(
            f"\n{k}-adapter ensemble (top {args.top_layers} layers adapted): shared trunk "
            f"{shared / one:.2f}x one adapter, naive {naive_k / one:.2f}x; "
            f"naive / shared {naive_k / shared:.2f}x; largest |member score difference| "
            f"{ens_diff:.2e}"
        )
    return 0


def _ensemble_rows(
    model: Any, prompts: list[list[int]], cset: Any, times: dict[str, list[float]], args: Any
) -> float:
    """Time one adapter, the shared-trunk ensemble and the naive ensemble (see the module
    docstring); returns the largest difference between shared and naive member scores."""
    import torch

    from feddx.model.adapter import LoraSpec, adapter_state, attach_lora, load_adapter_state
    from feddx.model.ensemble import EnsembleScorer
    from feddx.model.scoring import candidate_scores

    modules = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    net = attach_lora(model, LoraSpec(top_layers=args.top_layers, target_modules=modules))
    net.eval()
    members = []
    for seed in range(args.ensemble):
        torch.manual_seed(seed)
        with torch.no_grad():
            for name, p in net.named_parameters():
                if "lora_" in name:
                    p.normal_(0.0, 0.02)
        members.append(adapter_state(net))
    scorer = EnsembleScorer(net, members)

    def naive_members(ids: list[int]) -> list[list[float]]:
        out = []
        for state in members:
            load_adapter_state(net, state)
            out.append(candidate_scores(net, ids, cset, method="constrained"))
        load_adapter_state(net, members[0])
        return out

    for name in ("adapter", "ens-shared", "ens-naive"):
        times[name] = []
    worst = 0.0
    with torch.inference_mode():
        scorer.member_scores(prompts[0], cset, "constrained")  # warm-up
        for ids in prompts:
            runs = {
                "adapter": partial(candidate_scores, net, ids, cset, method="constrained"),
                "ens-shared": partial(scorer.scores, ids, cset, "constrained"),
                "ens-naive": partial(naive_members, ids),
            }
            for name, run in runs.items():
                times[name].append(_min_time(run, args.repeats))
            shared = scorer.member_scores(ids, cset, "constrained")
            for a, b in zip(shared, naive_members(ids), strict=True):
                worst = max(worst, max(abs(x - y) for x, y in zip(a, b, strict=True)))
    return worst


if __name__ == "__main__":
    sys.exit(main())
