"""``feddx evaluate --data mcq:FILE``: multiple-choice accuracy (:mod:`feddx.evaluate.mcq`).

The questions carry their own options, so this path skips the diagnosis policy (split,
candidate list, baseline, temperature) of ``feddx evaluate`` and runs the protocols on every
question of the file (the first ``--limit`` of them). Skipped lines are reported with their
file, line and reason on stderr and in the result.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from feddx.cli._app import console, console_err
from feddx.errors import DataError, ModelError

MCQ_PREFIX = "mcq:"


def is_mcq(data: str | None) -> bool:
    """Whether ``--data`` names multiple-choice questions."""
    return bool(data and data.startswith(MCQ_PREFIX))


def _questions(data: str, limit: int) -> tuple[list[Any], list[str]]:
    from feddx.data.mcq import load_mcq
    from feddx.data.report import LoadReport

    path = Path(data.removeprefix(MCQ_PREFIX))
    if not path.exists():
        raise DataError(f"mcq: path not found: {path}")
    report = LoadReport("mcq")
    questions = list(load_mcq(path, report))
    skipped = [str(s) for s in report.skipped]
    for line in skipped:
        console_err.print(f"skipped {line}", markup=False, highlight=False)
    if not questions:
        raise DataError(f"{data}: no questions loaded ({len(skipped)} lines skipped)")
    return (questions[:limit] if limit else questions), skipped


def run_mcq_evaluation(
    data: str,
    *,
    model: str,
    adapters: list[Path],
    hardware: Any,
    protocols: list[str],
    limit: int,
    seed: int,
    resamples: int,
    as_json: bool,
    result_file: Path | None,
    predictions: Path | None,
) -> None:
    """Load the questions and the model (with at most one adapter), run ``protocols`` and print
    one JSON object (``--json``) or a table."""
    from feddx.evaluate.mcq import evaluate_mcq
    from feddx.model.hardware import resolve_hardware
    from feddx.model.predict import Diagnoser

    if len(adapters) > 1:
        raise ModelError("multiple-choice evaluation takes at most one --adapter")
    questions, skipped = _questions(data, limit)
    diagnoser = Diagnoser.load(model, adapters, hardware=resolve_hardware(hardware))
    if adapters:
        diagnoser.use(next(iter(diagnoser.adapters)))
    done = evaluate_mcq(diagnoser.model, diagnoser.tokenizer, questions, protocols)
    done.meta.update(
        data=data,
        model=model,
        adapter=str(adapters[0]) if adapters else None,
        n_skipped=len(skipped),
        skipped=skipped,
    )
    body = done.to_dict(resamples=resamples, seed=seed)
    if result_file:
        from feddx.io import atomic_write_json

        atomic_write_json(result_file, body, allow_nan=False)
    if predictions:
        from feddx.io import atomic_open

        with atomic_open(predictions) as f:
            for r in done.results:
                for a in r.answers:
                    f.write(json.dumps({"protocol": r.protocol, **a.to_dict()}) + "\n")
    if as_json:
        typer.echo(json.dumps(body, allow_nan=False))
        return
    console.print(_table(body))


def _table(body: dict[str, Any]) -> Table:
    summaries = list(body.get("protocols", {}).values()) or [body]
    table = Table(title=f"Multiple-choice accuracy ({body['n']} questions)")
    for column in ("protocol", "accuracy", "95% interval", "parse failures", "chance"):
        table.add_column(column, justify="left" if column == "protocol" else "right")
    for s in summaries:
        ci = s["accuracy_ci95"]
        table.add_row(
            s["protocol"],
            f"{s['accuracy']:.3f}",
            f"{ci['low']:.3f}-{ci['high']:.3f}",
            str(s.get("parse_failures", "—")),
            f"{s['chance']:.3f}",
        )
    return table
