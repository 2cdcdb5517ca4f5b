"""General commands: version, models, demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from feddx import __version__
from feddx.cli._app import app, console, quiet_libraries
from feddx.demo import DEFAULT_OUT, STAGES
from feddx.model.loading import DEFAULT_MODEL, list_cached_models


@app.command()
def version() -> None:
    """Print the feddx version."""
    console.print(f"feddx {__version__}")


@app.command()
def models() -> None:
    """List the base models in the feddx cache, with sizes."""
    cached = list_cached_models()
    if not cached:
        console.print("No models cached yet; the first load of a GGUF model creates one.")
        return
    table = Table("model", "size", "status", "path")
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
    model: str = typer.Option(
        DEFAULT_MODEL, help="Base model: alias, .gguf file, directory or hub id."
    ),
    test_fraction: float = typer.Option(0.2, min=0.05, max=0.5, help="Share of cases held out."),
    seed: int = typer.Option(0, help="Seed of the train/test split."),
    limit: int = typer.Option(0, min=0, help="Evaluate at most this many test cases (0: all)."),
    out: Annotated[
        Path, typer.Option(help="Folder for adapters, histories and plots.")
    ] = DEFAULT_OUT,
    stages: str = typer.Option(
        ",".join(STAGES), help="Comma-separated stages to run: zero-shot, centralized, federated."
    ),
    epochs: int = typer.Option(2, min=1, help="Centralized epochs (= federated rounds x 1 epoch)."),
    rounds: int = typer.Option(2, min=1, help="Federated rounds."),
) -> None:
    """Run the end-to-end pipeline on the 4-hospital UCI Heart data and the default model."""
    chosen = tuple(s.strip() for s in stages.split(",") if s.strip())
    unknown = [s for s in chosen if s not in STAGES]
    if unknown or not chosen:
        raise typer.BadParameter(
            f"unknown stage(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(STAGES)}",
            param_hint="--stages",
        )
    quiet_libraries()
    from feddx.demo import DemoOptions, run_demo

    opts = DemoOptions(
        model=model,
        test_fraction=test_fraction,
        seed=seed,
        limit=limit,
        out_dir=out,
        stages=chosen,
        epochs=epochs,
        rounds=rounds,
    )
    run_demo(opts, console)
