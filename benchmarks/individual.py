"""The individual level, trained both ways: one model trained with and without the patient's
history, each scored with and without it; then few-shot similar past cases against the
institutional retrieval prior against neither (``results/individual.md``, issue 24 items 1-2).

For one dataset: the labeled cases (optionally the ``--top-labels`` most frequent diagnoses),
split by patient (:func:`feddx.data.split.stratified_split`, seed 0: 25% test, then 20% of the
rest validation): no patient has cases on two sides. Two LoRA adapters are trained from the
same seeded initial adapter with the one recipe (:func:`feddx.train.recipe.fit`), identical but
for ``history_dropout``: ``--history-dropout`` (with history; several values: the one with the
best validation top-1, averaged over scoring with and without history, is kept) and 1.0
(without: no training case shows its history). Every test case is scored by each adapter with
its history in the prompt and without it (the renderer's default history lines against none).
The validation split chooses the dropout and the retrieval prior's weight, never the test
split.

Few-shot and prior: the institution's case index holds the training cases only (MiniLM
embeddings, :class:`feddx.personalize.retrieval.CaseIndex`); each test case gets its ``--shots``
nearest training cases (no case of its own patient) as worked examples in the prompt, or the
``--k`` nearest as the retrieval prior mixed into the scores at the validation-chosen weight.
Both on the history-trained adapter, with history.

Every comparison is paired over the same test cases: the paired bootstrap interval of the
top-1 difference and McNemar's p (:func:`feddx.evaluate.stats.compare_correct`), on all test
cases and on those that have a history.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/individual.py \\
        --data eicu:../shared/data/eicu_demo --top-labels 20 --out results/individual_trained_eicu.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from feddx.data.candidates import candidate_list
from feddx.data.schema import Case
from feddx.data.sources import load_cases
from feddx.data.split import stratified_split
from feddx.evaluate.metrics import macro_f1, top_k_accuracy
from feddx.evaluate.stats import compare_correct
from feddx.model.adapter import LoraSpec, adapter_state, load_adapter_state
from feddx.model.predict import Diagnoser, Prediction
from feddx.model.prompt import PromptContext
from feddx.personalize.retrieval import (
    CaseIndex,
    MiniLMEmbedder,
    choose_prior_weight,
    fewshot_context,
    mix_prior,
    neighbours_by_case,
    retrieval_prior,
)
from feddx.train.config import TrainConfig
from feddx.train.recipe import fit, load_diagnoser

Context = Callable[[Case], PromptContext]
WITH: Context = lambda case: PromptContext()  # noqa: E731  (the renderer's default history)
WITHOUT: Context = lambda case: PromptContext(history=())  # noqa: E731


def split(cases: Sequence[Case]) -> tuple[list[Case], list[Case], list[Case]]:
    """Train, validation, test: grouped by patient, stratified by diagnosis, seed 0."""
    rest, test = stratified_split(cases, test_fraction=0.25, seed=0)
    train, val = stratified_split(rest, test_fraction=0.2, seed=0)
    return train, val, test


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The recipe's settings, fixed before any scoring (the top-8 / lr 0.005 setting chosen on
    DDXPlus validation in results/bench-train-grid.txt, the candidate loss of the eICU
    personalization config)."""
    return TrainConfig(
        lora=LoraSpec(
            rank=16,
            alpha=32,
            dropout=0.0,
            target_modules=(
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ),
            top_layers=args.top_layers,
        ),
        learning_rate=args.lr,
        epochs=args.epochs,
        batch_size=8,
        answer_loss="candidates",
        max_prompt_tokens=args.max_prompt_tokens,
        seed=0,
    )


def train_adapters(
    diagnoser: Diagnoser,
    train: Sequence[Case],
    config: TrainConfig,
    dropouts: Mapping[str, float],
    names: Sequence[str],
    cache: Path,
) -> dict[str, float]:
    """Train one adapter per ``dropouts`` entry from the same initial weights and hold it in
    ``diagnoser`` under its name; returns each one's training seconds."""
    start = adapter_state(diagnoser.model)
    seconds = {}
    for name, dropout in dropouts.items():
        t = time.perf_counter()
        load_adapter_state(diagnoser.model, start)
        diagnoser.model.train()
        result = fit(
            diagnoser.model,
            diagnoser.tokenizer,
            train,
            config.replace(history_dropout=dropout),
            feature_cache_dir=cache,
            candidates=names,
        )
        diagnoser.model.eval()
        diagnoser.add_state(
            name, adapter_state(diagnoser.model), max_prompt_tokens=config.max_prompt_tokens
        )
        seconds[name] = round(time.perf_counter() - t, 1)
        print(
            f"trained {name} (history dropout {dropout}): {result.steps} steps, "
            f"loss {result.mean_loss:.4f}, {seconds[name]} s",
            flush=True,
        )
    return seconds


def metrics(preds: Sequence[Prediction]) -> dict[str, float]:
    return {
        "n": len(preds),
        "top1": round(top_k_accuracy(preds, 1), 4),
        "top3": round(top_k_accuracy(preds, 3), 4),
        "macro_f1": round(macro_f1(preds), 4),
    }


def correct(preds: Sequence[Prediction]) -> list[bool]:
    return [p.top == p.gold for p in preds]


def compare(
    a: Sequence[Prediction], b: Sequence[Prediction], subset: Sequence[bool]
) -> dict[str, Any]:
    """A - B in top-1 over the cases where ``subset`` is true: paired bootstrap and McNemar."""
    ca = [x for x, keep in zip(correct(a), subset, strict=True) if keep]
    cb = [x for x, keep in zip(correct(b), subset, strict=True) if keep]
    return compare_correct(ca, cb).to_dict()


def subsets(test: Sequence[Case]) -> dict[str, list[bool]]:
    """The test subsets every figure is reported on."""
    return {
        "all": [True] * len(test),
        "with_history": [not c.history.is_empty() for c in test],
        "with_earlier_encounters": [bool(c.history.encounters) for c in test],
    }


def counts(train: Sequence[Case], val: Sequence[Case], test: Sequence[Case]) -> dict[str, Any]:
    def one(cases: Sequence[Case]) -> dict[str, int]:
        return {
            "cases": len(cases),
            "patients": len({c.patient_id or c.case_id for c in cases}),
            "with_history": sum(1 for c in cases if not c.history.is_empty()),
            "with_earlier_encounters": sum(1 for c in cases if c.history.encounters),
            "with_medications": sum(1 for c in cases if c.history.medications),
        }

    shared = {c.patient_id for c in test} & {c.patient_id for c in [*train, *val]} - {None}
    return {
        "train": one(train),
        "val": one(val),
        "test": one(test),
        "test_patients_also_in_train_or_val": len(shared),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="SOURCE:PATH")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--top-labels", type=int, default=0)
    ap.add_argument("--history-dropout", default="0.5", help="comma-separated; best on val")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--top-layers", type=int, default=8)
    ap.add_argument("--lr", type=float, default=0.005)
    ap.add_argument("--max-prompt-tokens", type=int, default=320)
    ap.add_argument("--shots", type=int, default=3)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--limit-test", type=int, default=0, help="score at most N test cases")
    ap.add_argument("--cache", type=Path, default=Path("runs/individual-cache"))
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    started = time.perf_counter()

    loaded = load_cases(args.data, top_labels=args.top_labels)
    train, val, test = split(loaded.cases)
    if args.limit_test:
        test = sorted(test, key=lambda c: c.case_id)[: args.limit_test]
    names = candidate_list(loaded.source, loaded.path, loaded.cases).names
    icd10 = candidate_list(loaded.source, loaded.path, loaded.cases).icd10
    n = counts(train, val, test)
    print(json.dumps(n), f"{len(names)} candidates", flush=True)

    config = train_config(args)
    diagnoser = load_diagnoser(args.model, lora=config.lora, seed=config.seed)
    dropouts = {f"with history (dropout {d})": float(d) for d in args.history_dropout.split(",")}
    dropouts["without history"] = 1.0
    train_s = train_adapters(diagnoser, train, config, dropouts, names, args.cache)

    def score(cases: Sequence[Case], adapter: str, context: Context) -> list[Prediction]:
        return diagnoser.diagnose(cases, names, adapter=adapter, icd10=icd10, context=context)

    # The history-dropout value: best validation top-1, mean of scoring with and without.
    val_scores: dict[str, dict[str, list[Prediction]]] = {}
    for name in dropouts:
        if name == "without history":
            continue
        val_scores[name] = {"with": score(val, name, WITH)}
        if len(dropouts) > 2:  # a choice to make: how it answers without history counts too
            val_scores[name]["without"] = score(val, name, WITHOUT)
    val_top1 = {
        name: {k: top_k_accuracy(v, 1) for k, v in arms.items()}
        for name, arms in val_scores.items()
    }
    candidates_with = [n_ for n_ in dropouts if n_ != "without history"]
    chosen = max(candidates_with, key=lambda x: sum(val_top1[x].values()))
    print("validation top-1", val_top1, "chosen:", chosen, flush=True)

    preds: dict[str, list[Prediction]] = {}
    for name in (chosen, "without history"):
        for ev, ctx in (("with", WITH), ("without", WITHOUT)):
            preds[f"trained {name}, scored {ev} history"] = score(test, name, ctx)
            print(
                f"trained {name}, scored {ev} history",
                metrics(preds[f"trained {name}, scored {ev} history"]),
                flush=True,
            )

    # Few-shot vs the retrieval prior vs neither, on the history-trained adapter with history.
    embedder = MiniLMEmbedder()
    index = CaseIndex.build(train, embedder)
    nb_test = neighbours_by_case(index, test, embedder, args.k)
    nb_val = neighbours_by_case(index, val, embedder, args.k)
    neither = preds[f"trained {chosen}, scored with history"]
    fewshot = score(test, chosen, fewshot_context(nb_test, args.shots))
    val_neither = val_scores[chosen]["with"]
    weight = choose_prior_weight(
        val_neither, [retrieval_prior(nb_val[c.case_id], names) for c in val]
    )
    priors = [retrieval_prior(nb_test[c.case_id], names) for c in test]
    prior = [mix_prior(p, q, weight) for p, q in zip(neither, priors, strict=True)]
    print("few-shot", metrics(fewshot), "prior", weight, metrics(prior), flush=True)

    key = lambda tr, ev: f"trained {tr}, scored {ev} history"  # noqa: E731
    arms = {
        **preds,
        "few-shot (history-trained, with history)": fewshot,
        f"retrieval prior w={weight} (history-trained, with history)": prior,
    }
    pairs = {
        "history training (with/with) - no-history training (without/without)": (
            key(chosen, "with"),
            key("without history", "without"),
        ),
        "history-trained: scored with - without history": (
            key(chosen, "with"),
            key(chosen, "without"),
        ),
        "no-history-trained: scored with - without history": (
            key("without history", "with"),
            key("without history", "without"),
        ),
        "scored with history: history-trained - no-history-trained": (
            key(chosen, "with"),
            key("without history", "with"),
        ),
        "scored without history: history-trained - no-history-trained": (
            key(chosen, "without"),
            key("without history", "without"),
        ),
    }
    subs = subsets(test)
    comparisons = {
        label: {s: compare(arms[a], arms[b], mask) for s, mask in subs.items() if any(mask)}
        for label, (a, b) in pairs.items()
    }
    for label, other in (
        ("few-shot - neither", fewshot),
        ("retrieval prior - neither", prior),
        ("few-shot - retrieval prior", None),
    ):
        a, b = (fewshot, prior) if other is None else (other, neither)
        comparisons[label] = {s: compare(a, b, mask) for s, mask in subs.items() if any(mask)}
    table = {
        arm: {
            s: metrics([p for p, keep in zip(ps, mask, strict=True) if keep])
            for s, mask in subs.items()
            if any(mask)
        }
        for arm, ps in arms.items()
    }
    out = {
        "data": args.data,
        "model": args.model,
        "top_labels": args.top_labels,
        "candidates": len(names),
        "counts": n,
        "config": config.to_dict(),
        "history_dropout_tried": dropouts,
        "validation_top1": val_top1,
        "chosen": chosen,
        "prior_weight": weight,
        "shots": args.shots,
        "k": args.k,
        "train_s": train_s,
        "table": table,
        "comparisons": comparisons,
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(comparisons, indent=1), flush=True)


if __name__ == "__main__":
    main()
