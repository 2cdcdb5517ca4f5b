"""Individual-level context, measured with and without: the patient's history in the prompt
(none / default order / relevance order), the institutional retrieval prior (formerly "kNN
prior") from the institution's own similar past cases, and those cases as few-shot examples.

For one dataset: a stratified train / validation / test split (seed 0). The case index holds
the training cases only; validation chooses the prior's mixing weight; test cases are scored once
per prompt arm, and the prior is mixed onto the default-history arm. Every figure is on the
same test cases. Zero-shot SmolLM2 unless ``--adapter`` is given.

    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/bench_individual.py \
        --data ddxplus-history:../shared/data/ddxplus --test 100 --val 60 \
        --out results/individual_ddxplus.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from feddx.data.candidates import candidate_list
from feddx.data.schema import Case
from feddx.data.sources import load_cases
from feddx.data.split import stratified_split
from feddx.evaluate.metrics import macro_f1, top_k_accuracy
from feddx.model.predict import Diagnoser, Prediction
from feddx.personalize.history import history_context
from feddx.personalize.retrieval import (
    CaseIndex,
    MiniLMEmbedder,
    choose_prior_weight,
    fewshot_context,
    mix_prior,
    neighbours_by_case,
    retrieval_prior,
)


def _metrics(preds: list[Prediction]) -> dict[str, float]:
    return {
        "top1": round(top_k_accuracy(preds, 1), 4),
        "top3": round(top_k_accuracy(preds, 3), 4),
        "macro_f1": round(macro_f1(preds), 4),
    }


def _sample(cases: list[Case], n: int, seed: int) -> list[Case]:
    if n >= len(cases):
        return cases
    _, sample = stratified_split(cases, test_fraction=n / len(cases), seed=seed)
    return sorted(sample, key=lambda c: c.case_id)[:n]


def _train(args: argparse.Namespace, train: list[Case], names: list[str]) -> Path:
    """A quick adapter on the training split (default prompts: history in the default order),
    without finding-dropout copies, for ``--train-epochs`` epochs."""
    import torch

    from feddx.model.adapter import attach_lora, save_adapter
    from feddx.model.loading import load_base_model
    from feddx.train.config import TrainConfig
    from feddx.train.trainer import train_adapter

    cfg = TrainConfig.from_file(args.train_config)
    cfg = cfg.replace(epochs=args.train_epochs, augment=cfg.augment.replace(copies=0))
    loaded = load_base_model(args.model)
    torch.manual_seed(cfg.seed)
    net = attach_lora(loaded.model, cfg.lora)
    result = train_adapter(net, loaded.tokenizer, train, cfg, candidates=names)
    print("trained", result.steps, "steps, mean loss", round(result.mean_loss, 4), flush=True)
    out: Path = args.adapter_out / "adapter"
    save_adapter(
        net,
        out,
        base_fingerprint=loaded.fingerprint,
        max_prompt_tokens=cfg.max_prompt_tokens,
        metadata={"data": args.data, "n_train": len(train), "config": cfg.to_dict()},
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="SOURCE:PATH")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--adapter", type=Path, default=None)
    ap.add_argument("--top-labels", type=int, default=0, help="keep the N most frequent labels")
    ap.add_argument("--test", type=int, default=100, help="test cases scored (stratified)")
    ap.add_argument("--val", type=int, default=60, help="validation cases for the prior weight")
    ap.add_argument("--k", type=int, default=10, help="neighbours for the prior")
    ap.add_argument("--shots", type=int, default=3, help="few-shot examples")
    ap.add_argument("--max-prompt-tokens", type=int, default=None)
    ap.add_argument("--arms", default="none,recent,relevance,fewshot")
    ap.add_argument(
        "--same-patient",
        action="store_true",
        help="let a case retrieve other records of its own patient (excluded by default)",
    )
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--train-config",
        type=Path,
        default=None,
        help="train an adapter on the training split first (a feddx train config)",
    )
    ap.add_argument("--train-epochs", type=int, default=1)
    ap.add_argument("--adapter-out", type=Path, default=Path("runs/individual-adapter"))
    args = ap.parse_args()

    loaded = load_cases(args.data)
    cases = [c for c in loaded.cases if not c.history.is_empty()]
    if args.top_labels:
        keep = {
            d
            for d, _ in Counter(c.require_label().diagnosis for c in cases).most_common(
                args.top_labels
            )
        }
        cases = [c for c in cases if c.require_label().diagnosis in keep]
    rest, test = stratified_split(cases, test_fraction=0.25, seed=0)
    train, val = stratified_split(rest, test_fraction=0.2, seed=0)
    test, val = _sample(test, args.test, 1), _sample(val, args.val, 2)
    clist = candidate_list(loaded.source, loaded.path, cases)
    names = [n for n in clist.names if n in {c.require_label().diagnosis for c in cases}]
    print(
        f"{len(cases)} cases with history; train {len(train)} val {len(val)} test {len(test)}; "
        f"{len(names)} candidates",
        flush=True,
    )

    t0 = time.perf_counter()
    embedder = MiniLMEmbedder()
    index = CaseIndex.build(train, embedder)
    nb_test = neighbours_by_case(index, test, embedder, args.k, same_patient=args.same_patient)
    nb_val = neighbours_by_case(index, val, embedder, args.k, same_patient=args.same_patient)
    index_s = time.perf_counter() - t0

    train_s = None
    if args.train_config:
        t = time.perf_counter()
        args.adapter = _train(args, train, names)
        train_s = round(time.perf_counter() - t, 1)
    diagnoser = Diagnoser.load(args.model, [args.adapter] if args.adapter else [])
    adapter = next(iter(diagnoser.adapters), None)
    arms = args.arms.split(",")
    contexts: dict[str, Any] = {
        "none": history_context("none"),
        "recent": history_context("recent"),
        "relevance": history_context("relevance"),
        "fewshot": fewshot_context(nb_test, args.shots),
    }
    results: dict[str, Any] = {}
    preds: dict[str, list[Prediction]] = {}
    for arm in arms:
        t = time.perf_counter()
        preds[arm] = diagnoser.diagnose(
            test,
            names,
            adapter=adapter,
            icd10=clist.icd10,
            context=contexts[arm],
            max_prompt_tokens=args.max_prompt_tokens,
        )
        results[arm] = {**_metrics(preds[arm]), "seconds": round(time.perf_counter() - t, 1)}
        print(arm, results[arm], flush=True)

    # The retrieval prior on the default prompt: the weight is chosen on validation cases only.
    # (Its JSON keys stay "knn_*", as in the committed results/individual_*.json.)
    val_preds = diagnoser.diagnose(
        val, names, adapter=adapter, icd10=clist.icd10, max_prompt_tokens=args.max_prompt_tokens
    )
    val_priors = [retrieval_prior(nb_val[c.case_id], names) for c in val]
    weight = choose_prior_weight(val_preds, val_priors)
    base = preds.get("recent") or diagnoser.diagnose(
        test, names, adapter=adapter, icd10=clist.icd10
    )
    priors = [retrieval_prior(nb_test[p.case.case_id], names) for p in base]
    results["knn_prior"] = {
        **_metrics([mix_prior(p, q, weight) for p, q in zip(base, priors, strict=True)]),
        "weight": weight,
    }
    results["knn_alone"] = _metrics(
        [mix_prior(p, q, 1.0) for p, q in zip(base, priors, strict=True)]
    )
    results["val_recent"] = _metrics(val_preds)
    print("retrieval prior", results["knn_prior"], results["knn_alone"], flush=True)
    out = {
        "data": args.data,
        "model": args.model,
        "adapter": str(args.adapter) if args.adapter else None,
        "n_cases_with_history": len(cases),
        "n_train": len(train),
        "n_val": len(val),
        "n_test": len(test),
        "n_candidates": len(names),
        "top_labels": args.top_labels,
        "k": args.k,
        "shots": args.shots,
        "index_and_query_s": round(index_s, 1),
        "max_prompt_tokens": args.max_prompt_tokens,
        "same_patient": args.same_patient,
        "n_test_with_patient_in_train": sum(
            1 for c in test if c.patient_id and c.patient_id in {t.patient_id for t in train}
        ),
        "train_config": str(args.train_config) if args.train_config else None,
        "train_epochs": args.train_epochs if args.train_config else None,
        "train_s": train_s,
        "results": results,
    }
    args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
