"""``feddx evaluate``: score a base model (optionally with LoRA adapters) on a dataset.

A thin command over :func:`feddx.evaluate.dataset.evaluate_dataset`, which owns the policy
(the split shared with ``feddx train``, the candidate list, fail-fast checks). The temperature
is cross-fitted on the evaluated cases (each half calibrated on the other) so no training case
is used for calibration. The logistic-regression baseline is fitted on the training split and
reported beside the LLM; with ``--extra-data`` (what the adapter also trained on) a second
baseline is fitted on the same cases the adapter saw. ``--json`` prints one JSON object and
nothing else on stdout; progress goes to stderr.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from feddx.cli._app import app, console, console_err, quiet_libraries
from feddx.cli._hardware import Device, Dtype, Quantize, hardware_spec
from feddx.model.loading import DEFAULT_MODEL


class SplitOption(StrEnum):
    test = "test"
    all = "all"


class ScoringOption(StrEnum):
    likelihood = "likelihood"
    constrained = "constrained"


class ProtocolOption(StrEnum):
    likelihood = "likelihood"
    flowertune = "flowertune"


def _results_table(result: Any) -> Table:
    table = Table(title=f"Evaluation ({result.n} cases, {len(result.candidates)} candidates)")
    table.add_column("metric")
    table.add_column("LLM", justify="right")
    if result.baseline:
        table.add_column("baseline", justify="right")
    if result.baseline_extra:
        table.add_column("baseline + extra data", justify="right")
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
        for m in (result.llm, result.baseline, result.baseline_extra):
            if m is None:
                continue
            value = (getattr(m, section) or {}).get(key)
            cells.append("—" if value is None else f"{value:.3f}" if value < 10 else f"{value:.0f}")
        if any(c != "—" for c in cells):
            table.add_row(label, *cells)
    return table


def _compare(
    systems: tuple[str, str],
    request: Any,
    *,
    resamples: int,
    as_json: bool,
    result_file: Path | None,
) -> None:
    from feddx.cli.progress import progress_for
    from feddx.evaluate.comparison import compare_systems

    with progress_for("evaluate", console_err, transient=True) as progress:
        done = compare_systems(
            *systems,
            request,
            resamples=resamples,
            seed=request.seed or 0,
            on_progress=progress.update,
        )
    body = done.to_dict()
    if result_file:
        from feddx.io import atomic_write_json

        atomic_write_json(result_file, body, allow_nan=False)
    if as_json:
        typer.echo(json.dumps(body, allow_nan=False))
        return
    c = done.comparison
    where = done.meta.get("data") or "predictions files"
    table = Table(title=f"Comparison on {c.n} cases ({where})")
    table.add_column("system")
    table.add_column("top-1", justify="right")
    table.add_row(f"A: {done.a}", f"{c.top1_a:.3f}")
    table.add_row(f"B: {done.b}", f"{c.top1_b:.3f}")
    console.print(table)
    console.print(f"A - B: {c.describe()}", highlight=False)
    for note in done.notes:
        console.print(f"[yellow]note:[/yellow] {note}", markup=True, highlight=False)


@app.command()
def evaluate(
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            help="SOURCE:PATH of the cases (SOURCE as in 'feddx data stats'; uci-heart alone). "
            "Default: the data the adapter was trained on.",
        ),
    ] = None,
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
    device: Device = None,
    dtype: Dtype = None,
    quantize: Quantize = None,
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
        float | None,
        typer.Option(
            min=0.01,
            max=0.99,
            help="Held-out share. Default: the adapter's own (as 'feddx train' recorded it), "
            "else 0.2.",
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(help="Seed of the train/test split. Default: the adapter's own, else 0."),
    ] = None,
    allow_other_split: Annotated[
        bool,
        typer.Option(
            "--allow-other-split",
            help="Score an adapter on another split of its own data (--seed/--test-fraction "
            "other than its own, --split all, or an adapter trained on every case): such a "
            "split holds cases it trained on. Refused without this flag; the output says so.",
        ),
    ] = False,
    allow_other_data: Annotated[
        bool,
        typer.Option(
            "--allow-other-data",
            help="Score an adapter on data it was not trained on (another source or path) or "
            "with another candidate list. Refused without this flag; the output says so.",
        ),
    ] = False,
    compare: Annotated[
        tuple[str, str] | None,
        typer.Option(
            "--compare",
            metavar="A B",
            help="Compare two systems on the same cases: each an adapter folder, 'base' (the "
            "base model alone) or a --predictions file. Prints both top-1, the difference "
            "A - B with its 95% paired-bootstrap interval and McNemar's exact p.",
        ),
    ] = None,
    resamples: Annotated[
        int, typer.Option(min=100, help="Bootstrap resamples for --compare (seeded by --seed).")
    ] = 10_000,
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
    extra_data: Annotated[
        list[str] | None,
        typer.Option(
            "--extra-data",
            help="SOURCE:PATH the adapter also trained on ('feddx train --extra-data'; "
            "repeatable): a second baseline is fitted on the training split plus these cases.",
        ),
    ] = None,
    extra_per_label: Annotated[
        int | None,
        typer.Option(min=1, help="As in 'feddx train': cap the pooled --extra-data per label."),
    ] = None,
    drop_overlapping_extra: Annotated[
        bool,
        typer.Option(
            "--drop-overlapping-extra",
            help="As in 'feddx train': leave out --extra-data cases identical to held-out ones.",
        ),
    ] = False,
    generate: Annotated[
        int, typer.Option(min=0, help="Also generate free answers for this many cases (BLEU).")
    ] = 0,
    max_prompt_tokens: Annotated[
        int | None,
        typer.Option(min=16, help="Prompt token budget (default: the adapter's, else 320)."),
    ] = None,
    assume_deidentified: Annotated[
        bool,
        typer.Option(
            "--assume-deidentified",
            help="Write --predictions with the case ids as they are (the data is already "
            "de-identified; recorded as 'assumed', with a warning) instead of keyed pseudonyms.",
        ),
    ] = False,
    protocol: Annotated[
        list[ProtocolOption] | None,
        typer.Option(
            help="With --data mcq:FILE (multiple-choice questions): likelihood (each option's "
            "text scored, length-normalised) or flowertune (FlowerTune's generation and answer "
            "parsing). Repeat it to run both on the same questions. Default: likelihood.",
        ),
    ] = None,
) -> None:
    """Evaluate a model (and adapter) on a dataset: accuracy, differential, calibration,
    per-group results and the classical baseline.

    An adapter is scored on the held-out split it records ('feddx train' writes its data,
    --seed and --test-fraction): --data, --seed and --test-fraction may be left out. Another
    split of its data needs --allow-other-split, other data or another candidate list
    --allow-other-data; the output then says so. --compare A B compares two systems (adapter
    folders, 'base', or --predictions files) on the same cases. --data mcq:FILE evaluates
    multiple-choice questions (MedQA, MedMCQA, PubMedQA JSONL) under --protocol."""
    quiet_libraries()
    from feddx.cli._mcq import is_mcq, run_mcq_evaluation

    if is_mcq(data):
        run_mcq_evaluation(
            str(data),
            model=model,
            adapters=list(adapter or ()),
            hardware=hardware_spec(device, dtype, quantize),
            protocols=[p.value for p in protocol or [ProtocolOption.likelihood]],
            limit=limit,
            seed=seed or 0,
            resamples=resamples,
            as_json=as_json,
            result_file=result_file,
            predictions=predictions,
        )
        return
    if protocol:
        from feddx.errors import ConfigError

        raise ConfigError("--protocol applies to multiple-choice questions (--data mcq:FILE)")
    from feddx.evaluate.dataset import DatasetEvaluation, evaluate_dataset
    from feddx.evaluate.harness import EvaluationOptions
    from feddx.evaluate.report import write_html, write_json, write_predictions

    request = DatasetEvaluation(
        data=data,
        adapters=tuple(adapter or ()),
        model=model,
        split=split.value,
        test_fraction=test_fraction,
        seed=seed,
        allow_other_split=allow_other_split,
        allow_other_data=allow_other_data,
        limit=limit,
        candidates_file=candidates,
        baseline=baseline,
        extra_data=tuple(extra_data or ()),
        extra_per_label=extra_per_label,
        drop_overlapping_extra=drop_overlapping_extra,
        hardware=hardware_spec(device, dtype, quantize),
        options=EvaluationOptions(
            method=scoring.value,
            max_prompt_tokens=max_prompt_tokens,
            generate_n=generate,
            seed=seed or 0,
        ),
    )
    if compare is not None:
        _compare(compare, request, resamples=resamples, as_json=as_json, result_file=result_file)
        return
    from feddx.cli.progress import progress_for

    # Bars on a terminal, timestamped lines in a log, nothing with --quiet.
    with progress_for("evaluate", console_err, transient=True) as progress:
        result = evaluate_dataset(request, on_progress=progress.update)
    if result_file:
        write_json(result, result_file)
    if predictions:
        from feddx.data.stage import DeidStage

        stage = DeidStage(assume_deidentified=assume_deidentified)  # warns when assumed
        write_predictions(result, predictions, stage=stage)
    if report:
        source = str(result.meta["data"]).partition(":")[0]
        write_html(result, report, title=f"feddx evaluation: {source}")
    if as_json:
        typer.echo(json.dumps(result.to_dict(), allow_nan=False))
        return
    console.print(_results_table(result))
    m = result.meta
    split_text = (
        f"test split --seed {m['seed']} --test-fraction {m['test_fraction']}"
        if m["split"] == "test"
        else "every case"
    )
    console.print(f"{m['data']}: {split_text} ({m['split_grouping']}; from the {m['split_from']})")
    for note in result.notes:
        if note.startswith(("other ", "adapter ")):
            console.print(f"[yellow]note:[/yellow] {note}", markup=True, highlight=False)
    t = result.temperature
    console.print(
        f"temperature {t.get('value', 1.0):.3f} ({t['method']}): "
        f"ECE {t['ece_before']:.3f} -> {t['ece_after']:.3f}"
    )
    if report:
        console.print(f"report: {report}")
