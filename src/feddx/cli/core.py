"""General commands: version, models, demo, report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from feddx import __version__
from feddx.cli._app import app, console, console_err, quiet_libraries
from feddx.cli._overrides import SetOption, with_overrides
from feddx.demo import DEFAULT_OUT, STAGES
from feddx.model.loading import (
    BUILTIN_MODELS,
    DEFAULT_MODEL,
    builtin_installed,
    list_cached_models,
)


@app.command()
def version() -> None:
    """Print the feddx version."""
    console.print(f"feddx {__version__}")


@app.command()
def models() -> None:
    """List the built-in base models (aliases for --model) and the dequantized copies in the
    feddx cache, with sizes."""
    builtin = Table(title="Built-in models")
    builtin.add_column("alias", no_wrap=True)
    for column in ("model", "package", "terms", "installed"):
        builtin.add_column(column)
    for b in BUILTIN_MODELS.values():
        installed = "yes" if builtin_installed(b) else "no (scripts/setup.sh)"
        builtin.add_row(b.alias, b.description, f"{b.pypi}=={b.version}", b.terms, installed)
    console.print(builtin)
    cached = list_cached_models()
    if not cached:
        console.print("No models cached yet; the first load of a GGUF model creates one.")
        return
    table = Table("model", "size", "status", "path", title="Cache")
    for m in cached:
        table.add_row(
            m.name,
            f"{m.size_bytes / 2**20:,.0f} MiB",
            "ok" if m.valid else "corrupt",
            str(m.directory),
        )
    console.print(table)


@app.command()
def demo(
    model: str | None = typer.Option(
        None, help=f"Base model: alias, .gguf file, directory or hub id [default: {DEFAULT_MODEL}]."
    ),
    dataset: str = typer.Option(
        "uci-heart",
        "--data",
        help="Cases as SOURCE[:PATH] (uci-heart, ddxplus:DIR, csv:FILE, fhir:DIR, eicu:DIR); "
        "institutions become the federation's clients.",
    ),
    config: Annotated[
        Path | None,
        typer.Option(
            help="Demo settings file (YAML/JSON/TOML of the options below, kebab-case, and a "
            "'train' table); default: the source's configs/demo-SOURCE.yaml where one ships."
        ),
    ] = None,
    test_fraction: float | None = typer.Option(
        None, min=0.05, max=0.5, help="Share of cases held out [default: 0.2]."
    ),
    seed: int | None = typer.Option(
        None, help="Seed of the split, the adapters and every data order [default: 0]."
    ),
    limit: int | None = typer.Option(
        None, min=0, help="Evaluate at most this many test cases [default: 0: all]."
    ),
    out: Annotated[
        Path, typer.Option(help="Run folder: results.json, each stage's artefacts, report.html.")
    ] = DEFAULT_OUT,
    stages: str = typer.Option(
        ",".join(STAGES), help=f"Comma-separated stages, run in this order: {', '.join(STAGES)}."
    ),
    force: bool = typer.Option(False, "--force", help="Rerun the chosen stages even if finished."),
    epochs: int | None = typer.Option(
        None, min=1, help="Centralized epochs whose progress the federation's budget matches."
    ),
    max_epochs: int | None = typer.Option(
        None, min=1, help="Most centralized epochs (its budget is chosen on validation)."
    ),
    validation_fraction: float | None = typer.Option(
        None, min=0.05, max=0.5, help="Share of the training side held out for choices."
    ),
    local_epochs: int | None = typer.Option(None, min=1, help="Local epochs per federated round."),
    personal_epochs: int | None = typer.Option(
        None, min=1, help="Fine-tuning epochs per region/institution."
    ),
    round_eval_cases: int | None = typer.Option(
        None, min=0, help="Validation cases scoring the global adapter each round (0: all)."
    ),
    json_out: bool = typer.Option(
        False, "--json", help="Print the results object as JSON at the end."
    ),
    set_: SetOption = None,
    story: str = typer.Option(
        "default",
        "--story",
        help="default, or crosslingual: 3 English clinics and 1 Portuguese clinic federated, "
        "then personalized (Symptom2Disease; --data EN.csv,PT.csv for other files).",
    ),
) -> None:
    """The whole story on 4-hospital UCI Heart data (or --data): zero-shot, logistic
    regression, centralized, federated (Flower) and personalized LoRA, a report, a service.
    Settings: the built-in ones, then --config (or the source's shipped config), then the
    options given here, then --set; a stage that does not apply to the data is skipped with
    its reason."""
    if story != "default":
        _crosslingual_story(story, model, dataset, seed, out, set_ or [])
        return
    chosen = tuple(s.strip() for s in stages.split(",") if s.strip())
    unknown = [s for s in chosen if s not in STAGES]
    if unknown or not chosen:
        raise typer.BadParameter(
            f"unknown stage(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(STAGES)}",
            param_hint="--stages",
        )
    quiet_libraries()
    import json

    from feddx.cli.progress import train_progress_factory
    from feddx.demo.options import demo_options
    from feddx.demo.stages import run_demo

    given = {
        "model": model,
        "test_fraction": test_fraction,
        "seed": seed,
        "limit": limit,
        "epochs": epochs,
        "max_epochs": max_epochs,
        "validation_fraction": validation_fraction,
        "local_epochs": local_epochs,
        "personal_epochs": personal_epochs,
        "round_eval_cases": round_eval_cases,
    }
    opts = demo_options(
        dataset,
        config,
        {k: v for k, v in given.items() if v is not None},
        out_dir=out,
        stages=chosen,
        force=force,
    )
    opts = with_overrides(opts, set_)  # --set KEY=VALUE over any DemoOptions field
    from feddx.model.loading import resolve_model

    resolve_model(opts.model)  # an unknown model: one line and exit 2 before the data stage
    shown = console_err if json_out else console
    # The training loops' progress: bars on a terminal, timestamped lines in a log.
    results = run_demo(opts, shown, train_progress=train_progress_factory("demo"))
    if json_out:
        typer.echo(json.dumps(results, indent=1, allow_nan=False))


def _crosslingual_story(
    story: str, model: str | None, dataset: str, seed: int | None, out: Path, sets: list[str]
) -> None:
    """``feddx demo --story crosslingual`` (:mod:`feddx.demo.crosslingual`)."""
    from feddx.demo.crosslingual import STORIES

    if story not in STORIES:
        raise typer.BadParameter(
            f"unknown story {story!r}; choose from {', '.join(STORIES)}", param_hint="--story"
        )
    quiet_libraries()
    from feddx.demo import crosslingual as xl

    files = [Path(f) for f in dataset.split(",")] if dataset != "uci-heart" else []
    if files and len(files) != 2:
        raise typer.BadParameter("the crosslingual story takes EN.csv,PT.csv", param_hint="--data")
    english, ptbr = files or (xl.ENGLISH_CSV, xl.PTBR_CSV)
    report = xl.run_crosslingual_story(
        xl.story_settings(model or xl.STORY_MODEL, seed or 0, sets),
        xl.STORY_OUT if out == DEFAULT_OUT else out,
        english=english,
        ptbr=ptbr,
        say=console.print,
    )
    console.print(f"report written to {report}", soft_wrap=True)  # a path, never broken


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A feddx demo run folder (holds results.json).")],
) -> None:
    """Rebuild RUN_DIR/report.html (self-contained: plots embedded, no network) from the run's
    results.json alone."""
    from feddx.demo.report import write_report

    console.print(f"report written to {write_report(run_dir)}", soft_wrap=True)
