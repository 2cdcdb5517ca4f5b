"""``feddx evaluate``: score a base model (optionally with a LoRA adapter) on a dataset.

The cases are split exactly as ``feddx train`` splits them
(:func:`feddx.data.split.stratified_split` with the same ``--test-fraction`` and ``--seed``),
and the held-out test split is evaluated by default, so an adapter is never scored on cases it
was trained on. ``--split all`` evaluates every case (e.g. a hospital's own held-out file).
Candidates: the dataset's label space (DDXPlus: its 49 pathologies; UCI Heart: its 5
diagnoses; otherwise the distinct labels of the training split) or ``--candidates FILE``.

The temperature is cross-fitted on the evaluated cases (each half calibrated on the other) so
no training case is used for calibration. The logistic-regression baseline is fitted on the
training split and reported beside the LLM. ``--json`` prints one JSON object and nothing else
on stdout; progress goes to stderr.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from feddx.cli._app import app, console, console_err, quiet_libraries
from feddx.data.schema import Case
from feddx.errors import DataError, ModelError
from feddx.model.loading import DEFAULT_MODEL
from feddx.model.prompt import DEFAULT_MAX_PROMPT_TOKENS


class SplitOption(StrEnum):
    test = "test"
    all = "all"


class ScoringOption(StrEnum):
    likelihood = "likelihood"
    constrained = "constrained"


def load_cases(spec: str) -> tuple[str, Path | None, list[Case], dict[str, Any]]:
    """Load ``SOURCE:PATH``; :class:`DataError` if nothing usable was loaded."""
    from feddx.data.report import LoadReport
    from feddx.data.sources import load_source, parse_data_spec

    source, path = parse_data_spec(spec)
    report = LoadReport(source)
    cases = list(load_source(source, path, report))
    info = {
        "n_loaded": len(cases),
        "n_skipped": report.n_skipped,
        "skipped_reasons": report.skipped_reasons(),
    }
    if not cases:
        reasons = ", ".join(f"{k}: {v}" for k, v in report.skipped_reasons().items())
        raise DataError(
            f"{spec}: the dataset is empty (no cases loaded"
            + (f"; {report.n_skipped} skipped: {reasons})" if reasons else ")")
        )
    unlabeled = sum(c.label is None for c in cases)
    if unlabeled == len(cases):
        raise DataError(f"{spec}: no case has a label, so there is nothing to evaluate against")
    return source, path, cases, info


def dataset_candidates(
    source: str, path: Path | None, train: list[Case], candidates_file: Path | None
) -> tuple[list[str], dict[str, str]]:
    """The candidate list and ICD-10 map for a dataset (see the module docstring)."""
    icd10: dict[str, str] = {}
    for c in train:
        if c.label and c.label.icd10:
            icd10.setdefault(c.label.diagnosis, c.label.icd10)
    if candidates_file is not None:
        try:
            lines = candidates_file.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise DataError(f"cannot read candidates file {candidates_file}: {e.strerror}") from e
        names = [x.strip() for x in lines if x.strip() and not x.lstrip().startswith("#")]
        if not names:
            raise DataError(f"candidates file {candidates_file} lists no candidates")
    elif source in ("ddxplus", "ddxplus-v0") and path is not None:
        from feddx.data.ddxplus import ddxplus_candidates, ddxplus_icd10

        names = ddxplus_candidates(path)
        icd10.update(ddxplus_icd10(path))
    elif source == "uci-heart":
        from feddx.data.uci_heart import DIAGNOSES, ICD10

        names = list(DIAGNOSES.values())
        icd10.update(ICD10)
    else:
        names = sorted({c.label.diagnosis for c in train if c.label})
    if len(names) < 2:
        raise DataError(f"need at least 2 candidate diagnoses, found {len(names)}")
    try:
        from feddx.data.icd10 import lookup_icd10

        for name in names:
            if name not in icd10 and (code := lookup_icd10(name)):
                icd10[name] = code
    except ImportError:  # pragma: no cover - terminology module ships with feddx
        pass
    return names, icd10


def load_model(
    model: str, adapters: Sequence[Path] = ()
) -> tuple[Any, Any, dict[str, Any], list[dict[str, Any]]]:
    """The base model (and adapter, if given) ready to score, with provenance for the report.

    Several adapters form an ensemble: the model holds the first, and the LoRA states of all
    of them are returned for :func:`~feddx.evaluate.harness.evaluate_cases` to average (one
    state for a single adapter is returned as an empty list). They must share one LoRA layout
    and prompt budget. The adapters' own files are checked before the base model is loaded,
    so a corrupt adapter fails fast; :class:`~feddx.errors.ModelError` if one was trained for
    another base model.
    """
    from feddx.model.loading import load_base_model

    dirs: list[Path] = []
    specs = []
    if adapters:
        from feddx.train.adapter import adapter_lora_spec, resolve_adapter_dir

        for a in adapters:
            dirs.append(resolve_adapter_dir(a))  # 'feddx train --out OUT' folder or OUT/adapter
            specs.append(adapter_lora_spec(dirs[-1]))  # ModelError if missing or corrupt
        for d, spec in zip(dirs[1:], specs[1:], strict=True):
            if spec != specs[0]:
                raise ModelError(
                    f"adapters of one ensemble must share their LoRA layout: {dirs[0]} has "
                    f"{specs[0]}, {d} has {spec}"
                )
    loaded = load_base_model(model)
    meta: dict[str, Any] = {"model": loaded.source.name, "base_fingerprint": loaded.fingerprint}
    net = loaded.model
    members: list[dict[str, Any]] = []
    if dirs:
        from feddx.train.adapter import adapter_state, attach_lora, load_adapter

        net = attach_lora(net, specs[0])
        budgets = []
        for d in reversed(dirs):  # the first adapter is loaded last: the model keeps it
            adapter_meta = load_adapter(net, d, base_fingerprint=loaded.fingerprint)
            mpt = adapter_meta.get("max_prompt_tokens")
            budgets.append(mpt if isinstance(mpt, int) and mpt > 0 else None)
            if len(dirs) > 1:
                members.insert(0, adapter_state(net))
        if len(set(budgets)) > 1:
            raise ModelError(
                "adapters of one ensemble must share their prompt budget (max_prompt_tokens); "
                f"got {sorted({b or 0 for b in budgets})} (0: not recorded)"
            )
        net.eval()
        meta["adapter"] = str(dirs[0])
        if len(dirs) > 1:
            meta["adapters"] = [str(d) for d in dirs]
        if budgets[-1] is not None:
            meta["adapter_max_prompt_tokens"] = budgets[-1]
    return net, loaded.tokenizer, meta, members


def _results_table(result: Any) -> Table:
    table = Table(title=f"Evaluation ({result.n} cases, {len(result.candidates)} candidates)")
    table.add_column("metric")
    table.add_column("LLM", justify="right")
    if result.baseline:
        table.add_column("baseline", justify="right")
    rows = [
        ("summary", "top1", "top-1"),
        ("summary", "top3", "top-3"),
        ("summary", "top5", "top-5"),
        ("summary", "macro_f1", "macro-F1"),
        ("summary", "balanced_accuracy", "balanced accuracy"),
        ("calibration", "ece", "ECE"),
        ("differential", "gtpa@1", "GTPA@1"),
        ("differential", "ddf1", "DDF1"),
        ("hierarchy", "chapter_f1", "ICD-10 chapter F1"),
        ("hierarchy", "category_f1", "ICD-10 category F1"),
        ("summary", "latency_ms_p50", "latency p50 ms"),
    ]
    for section, key, label in rows:
        cells = []
        for m in (result.llm, result.baseline):
            if m is None:
                continue
            value = (getattr(m, section) or {}).get(key)
            cells.append("—" if value is None else f"{value:.3f}" if value < 10 else f"{value:.0f}")
        if any(c != "—" for c in cells):
            table.add_row(label, *cells)
    return table


@app.command()
def evaluate(
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help="SOURCE:PATH of the cases (SOURCE as in 'feddx data stats'; uci-heart alone).",
        ),
    ],
    adapter: Annotated[
        list[Path] | None,
        typer.Option(
            help="LoRA adapter written by 'feddx train' (its --out folder or OUT/adapter). "
            "Repeat it for an ensemble: candidates are ranked by the adapters' mean probability."
        ),
    ] = None,
    model: Annotated[
        str, typer.Option(help="Base model: alias, .gguf file, directory or hub id.")
    ] = DEFAULT_MODEL,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object (and nothing else) on stdout.")
    ] = False,
    report: Annotated[
        Path | None, typer.Option(help="Write a self-contained HTML report to this file.")
    ] = None,
    result_file: Annotated[
        Path | None, typer.Option("--result", help="Also write the JSON result to this file.")
    ] = None,
    predictions: Annotated[
        Path | None,
        typer.Option(
            help="Write one JSON line per case (id, reference, every candidate's probability)."
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option(min=0, help="Evaluate at most this many cases of the split (0: all).")
    ] = 0,
    split: Annotated[
        SplitOption, typer.Option(help="Evaluate the held-out test split, or every case.")
    ] = SplitOption.test,
    test_fraction: Annotated[
        float, typer.Option(min=0.01, max=0.99, help="Held-out share (as in 'feddx train').")
    ] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of the train/test split.")] = 0,
    scoring: Annotated[
        ScoringOption,
        typer.Option(help="likelihood: mean token log-likelihood; constrained: trie decoding."),
    ] = ScoringOption.constrained,
    candidates: Annotated[
        Path | None, typer.Option(help="File with one candidate diagnosis per line.")
    ] = None,
    baseline: Annotated[
        bool, typer.Option(help="Fit the logistic-regression baseline on the training split.")
    ] = True,
    generate: Annotated[
        int, typer.Option(min=0, help="Also generate free answers for this many cases (BLEU).")
    ] = 0,
    max_prompt_tokens: Annotated[
        int | None,
        typer.Option(min=16, help="Prompt token budget (default: the adapter's, else 320)."),
    ] = None,
) -> None:
    """Evaluate a model (and adapter) on a dataset: accuracy, differential, calibration,
    per-group results and the classical baseline."""
    quiet_libraries()
    from feddx.data.split import stratified_split
    from feddx.evaluate.harness import evaluate_cases
    from feddx.evaluate.report import write_html, write_json, write_predictions

    source, path, cases, load_info = load_cases(data)
    labeled = [c for c in cases if c.label is not None]
    if split is SplitOption.test:
        train, test = stratified_split(labeled, test_fraction=test_fraction, seed=seed)
    else:
        train, test = [], labeled
    if limit:
        test = test[:limit]
    if not test:
        raise DataError(f"{data}: the {split.value} split is empty")
    names, icd10 = dataset_candidates(source, path, train or labeled, candidates)
    from feddx.evaluate.predict import check_labels
    from feddx.model.scoring import validate_candidates

    try:  # before the model loads: bad input fails in a second, not after a minute
        validate_candidates(names)
        check_labels(test, names, f"{split.value} split")
    except ValueError as e:
        raise DataError(f"{data}: {e}") from None

    net, tokenizer, model_meta, members = load_model(model, adapter or [])
    budget = max_prompt_tokens or model_meta.get(
        "adapter_max_prompt_tokens", DEFAULT_MAX_PROMPT_TOKENS
    )
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console_err,
        transient=True,
        disable=not console_err.is_terminal,
    ) as progress:
        tasks: dict[str, Any] = {}

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            progress.update(tasks[stage], completed=done)

        result = evaluate_cases(
            net,
            tokenizer,
            test,
            names,
            icd10=icd10,
            max_prompt_tokens=budget,
            train_cases_for_baseline=train if baseline and train else None,
            generate_n=generate,
            method=scoring.value,
            seed=seed,
            on_progress=on_progress,
            members=members,
        )
    result.meta = {
        "data": data,
        "split": split.value,
        "test_fraction": test_fraction if split is SplitOption.test else None,
        "seed": seed,
        "n_train": len(train),
        "max_prompt_tokens": budget,
        **load_info,
        **model_meta,
    }
    if result_file:
        write_json(result, result_file)
    if predictions:
        write_predictions(result, predictions)
    if report:
        write_html(result, report, title=f"feddx evaluation: {source}")
    if as_json:
        typer.echo(json.dumps(result.to_dict(), allow_nan=False))
        return
    console.print(_results_table(result))
    t = result.temperature
    console.print(
        f"temperature {t.get('value', 1.0):.3f} ({t['method']}): "
        f"ECE {t['ece_before']:.3f} -> {t['ece_after']:.3f}"
    )
    if report:
        console.print(f"report: {report}")
